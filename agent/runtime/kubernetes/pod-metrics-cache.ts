import { KubeApiError, type KubeApiClient } from "./kube-api-client.js";
import { KubeObjectError, toPodMetricsList, type PodMetrics } from "./kube-objects.js";
import { monotonicMs } from "../../../lib/monotonic-clock.js";

/** What the cache knows about one pod's usage. */
export interface PodMetricsLookup {
  metrics?: PodMetrics;
  /** Why there are no metrics for any pod (metrics.k8s.io not served, not allowed...). */
  unavailable?: string;
}

interface Snapshot {
  /** Monotonic ms: the snapshot's age must not jump with the wall clock. */
  at: number;
  byPod: Map<string, PodMetrics>;
  unavailable?: string;
}

export const DEFAULT_METRICS_MAX_AGE_MS = 10_000;

/**
 * metrics.k8s.io pod usage from one list of every pod (the whole cluster, or the runtime's
 * namespace), fetched at most once per `maxAgeMs` however many pods are asked about: the
 * metrics-server itself only refreshes every ~15 s, so a GET per pod per call would multiply the
 * load for nothing. Concurrent callers share one request. A metrics API that is not served or
 * not allowed is remembered for the same period (it is a fact about the cluster, not a pod).
 * Network failures are thrown (the API server is down: the caller's call is UNAVAILABLE).
 */
export class PodMetricsCache {
  private snapshot: Snapshot | undefined;
  private inFlight: Promise<Snapshot> | undefined;
  /** Lists fetched (tests assert one for many pods). */
  fetches = 0;

  constructor(
    private readonly client: KubeApiClient,
    private readonly options: { namespace?: string; maxAgeMs?: number; timeoutMs?: number; now?: () => number } = {},
  ) {}

  async get(namespace: string, name: string): Promise<PodMetricsLookup> {
    const snap = await this.current();
    if (snap.unavailable) return { unavailable: snap.unavailable };
    return { metrics: snap.byPod.get(`${namespace}/${name}`) };
  }

  private now(): number {
    return this.options.now?.() ?? monotonicMs();
  }

  private async current(): Promise<Snapshot> {
    const maxAge = this.options.maxAgeMs ?? DEFAULT_METRICS_MAX_AGE_MS;
    if (this.snapshot && this.now() - this.snapshot.at < maxAge) return this.snapshot;
    if (!this.inFlight) {
      this.inFlight = this.fetch().finally(() => (this.inFlight = undefined));
    }
    return this.inFlight;
  }

  private async fetch(): Promise<Snapshot> {
    const ns = this.options.namespace;
    const path = ns ? `/apis/metrics.k8s.io/v1beta1/namespaces/${encodeURIComponent(ns)}/pods` : "/apis/metrics.k8s.io/v1beta1/pods";
    this.fetches++;
    let snap: Snapshot;
    try {
      const list = toPodMetricsList(await this.client.getJson({ path, timeoutMs: this.options.timeoutMs ?? 10_000 }));
      snap = { at: this.now(), byPod: new Map(list.map((m) => [`${m.namespace}/${m.name}`, m])) };
    } catch (e) {
      if (e instanceof KubeObjectError) snap = { at: this.now(), byPod: new Map(), unavailable: `metrics.k8s.io answered something else than a PodMetricsList: ${e.message}` };
      else if (e instanceof KubeApiError) snap = { at: this.now(), byPod: new Map(), unavailable: metricsUnavailableReason(e) };
      else throw e;
    }
    this.snapshot = snap;
    return snap;
  }
}

function metricsUnavailableReason(e: KubeApiError): string {
  const detail = e.statusMessage || e.reason || `HTTP ${e.httpStatus}`;
  switch (e.httpStatus) {
    case 404:
      return `metrics.k8s.io is not served by this cluster (is metrics-server installed?): ${detail}`;
    case 503:
      return `metrics.k8s.io is registered but not answering (metrics-server down?): ${detail}`;
    case 401:
    case 403:
      return `metrics.k8s.io refused this agent: ${detail}`;
    default:
      return `metrics.k8s.io failed: ${detail}`;
  }
}
