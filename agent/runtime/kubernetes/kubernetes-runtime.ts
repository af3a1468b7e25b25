import { LogTailBuffer } from "../log-tail-buffer.js";
import { linkedSignal } from "../../../lib/linked-signal.js";
import { EventEmitter } from "node:events";
import { create } from "@bufbuild/protobuf";
import { timestampNow, type Timestamp } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import type { KubeConfig } from "@kubernetes/client-node";
import {
  LogEndReason,
  RuntimeInfoSchema,
  type Container,
  type ContainerHealth,
  type ContainerStats,
  type LogLine,
  type RuntimeEvent,
  type RuntimeInfo,
} from "../../../gen/fleetlet/agent/v1/runtime_pb.js";
import { raceAbort } from "../../../lib/abort-race.js";
import { invalidArgument, truncate } from "../../../lib/rpc/field-error.js";
import type { ContainerLimits, ContainerRuntime, ContainerRuntimeEvents, LogBatch, LogOptions } from "../container-runtime.js";
import { silentLogger, type RuntimeLogger } from "../runtime-logger.js";
import { ControllerResolver } from "./controller-resolver.js";
import { KubeApiClient, KubeApiError, type Query } from "./kube-api-client.js";
import { describeSource, loadKubeConfig } from "./kube-config-loader.js";
import { describeFailure, toConnectError } from "./kube-errors.js";
import { toPod, type Pod } from "./kube-objects.js";
import { podFacts } from "./pod-event-facts.js";
import { podActions, podEvent } from "./pod-events.js";
import { NodeWatch } from "./node-watch.js";
import { PodListWatch, type ChangeSource, type PodChange } from "./pod-list-watch.js";
import { podLimits } from "./pod-limits.js";
import { PodLogReader } from "./pod-log-reader.js";
import { PodMetricsCache } from "./pod-metrics-cache.js";
import { podStats } from "./pod-stats.js";
import { ServiceWatch } from "./service-watch.js";
import { defaultContainerOf, podHealth, podKey, podToContainer, RUNTIME_NAME, type ControllerRef } from "./pod-to-container.js";
import { errorMessage } from "../../../lib/error-message.js";

export interface KubernetesRuntimeOptions {
  /** A kubeconfig file; else in-cluster when `inCluster`, else the library's defaults. */
  kubeconfig?: string;
  inCluster?: boolean;
  /** A context of the kubeconfig other than the current one. */
  context?: string;
  /** Only pods of this namespace (default: all namespaces). */
  namespace?: string;
  /** Only pods scheduled to this node (an in-cluster agent: the node it runs on). */
  nodeName?: string;
  logger?: RuntimeLogger;
  /** An already loaded configuration (wins over kubeconfig/inCluster). */
  kubeConfig?: KubeConfig;
  /** How old the shared metrics.k8s.io list may be (default 10 s, the metrics-server's pace). */
  metricsMaxAgeMs?: number;
  /** Pods per list page (default 500). */
  listPageSize?: number;
  /** Per watch request; the server ends the watch after it and we re-watch (default 300). */
  watchTimeoutSeconds?: number;
  /** Non-streaming requests and the headers of streaming ones (default 15 s). */
  requestTimeoutMs?: number;
  /** Reconnect backoff (default 200 ms doubling to 10 s). */
  backoff?: { initialMs: number; maxMs: number };
  /** Watch Nodes for "node" events (default true; with nodeName only that node). */
  watchNodes?: boolean;
  /** Watch Services and EndpointSlices for "service" events (default true; in `namespace`). */
  watchServices?: boolean;
}

// DNS-1123: a namespace is a label, a pod name a subdomain.
const NAMESPACE = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
const POD_NAME = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

/**
 * The Kubernetes runtime (runtime.md): every pod in scope is one Container, kept current by a
 * list+watch of pods (PodListWatch) with controllers resolved through ReplicaSets
 * (ControllerResolver); stats from one shared metrics.k8s.io list (PodMetricsCache); logs from
 * pods/log; readiness as health. Pods cannot be paused. Nodes (NodeWatch) and Services with
 * their endpoint counts (ServiceWatch) are watched alongside for "node" and "service" events;
 * the runtime's connection state is that of its pods.
 */
export class KubernetesRuntime extends EventEmitter<ContainerRuntimeEvents> implements ContainerRuntime {
  readonly name = RUNTIME_NAME;
  private readonly logger: RuntimeLogger;
  private readonly client: KubeApiClient;
  private readonly listWatch: PodListWatch;
  private readonly nodeWatch: NodeWatch | undefined;
  private readonly serviceWatch: ServiceWatch | undefined;
  /** Resolves Deployments through ReplicaSets (exposed for tests: `lookups`). */
  readonly controllers: ControllerResolver;
  /** The shared metrics list (exposed for tests: `fetches`). */
  readonly metrics: PodMetricsCache;
  private readonly byKey = new Map<string, Container>();
  /** resources.limits per pod (same keys as byKey), for the instance's shape. */
  private readonly limitsByKey = new Map<string, ContainerLimits>();
  /** The error detail of each pod's last view: a new one alone is an "error" event. */
  private readonly errorDetailByKey = new Map<string, string>();
  private readonly logStreams = new Set<AbortController>();
  private everConnected = false;
  private connectedSince: Timestamp | undefined;
  private lastError = "";
  private reconnects = 0;
  private version = "";
  private started = false;
  private closed = false;

  constructor(private readonly options: KubernetesRuntimeOptions) {
    super();
    this.logger = options.logger ?? silentLogger;
    this.client = new KubeApiClient(options.kubeConfig ?? (() => loadKubeConfig(options)), options.requestTimeoutMs);
    this.controllers = new ControllerResolver(this.client, this.logger);
    this.metrics = new PodMetricsCache(this.client, { namespace: options.namespace, maxAgeMs: options.metricsMaxAgeMs });
    this.listWatch = new PodListWatch({
      client: this.client,
      logger: this.logger,
      namespace: options.namespace,
      nodeName: options.nodeName,
      pageSize: options.listPageSize,
      watchTimeoutSeconds: options.watchTimeoutSeconds,
      requestTimeoutMs: options.requestTimeoutMs,
      backoff: options.backoff,
      handler: {
        apply: (changes, source) => this.apply(changes, source),
        connected: () => this.onConnected(),
        disconnected: (err) => this.onDisconnected(err),
        failed: (err) => (this.lastError = describeFailure(err)),
      },
    });
    const cluster = {
      client: this.client,
      logger: this.logger,
      emit: (e: RuntimeEvent) => this.emit("event", e),
      pageSize: options.listPageSize,
      watchTimeoutSeconds: options.watchTimeoutSeconds,
      requestTimeoutMs: options.requestTimeoutMs,
      backoff: options.backoff,
    };
    if (options.watchNodes !== false) this.nodeWatch = new NodeWatch({ ...cluster, nodeName: options.nodeName });
    if (options.watchServices !== false) this.serviceWatch = new ServiceWatch({ ...cluster, namespace: options.namespace });
  }

  /** What the pod list+watch did (lists, watches, expired, bookmarks), for tests. */
  get watchCounters(): Readonly<PodListWatch["counters"]> {
    return this.listWatch.counters;
  }

  /** The resourceVersion the next watch resumes from. */
  get resourceVersion(): string {
    return this.listWatch.lastResourceVersion;
  }

  async start(): Promise<void> {
    if (this.started) throw new Error("kubernetes runtime already started");
    this.started = true;
    await this.listWatch.start();
    const others = Promise.all([this.nodeWatch?.start(), this.serviceWatch?.start()]);
    // API server reachable: their first lists are quick, and a started runtime reports nodes
    // and services from the start. Unreachable: the pods' attempt has said so already; they
    // keep trying in the background instead of adding their own timeouts to the agent's start.
    if (this.listWatch.connected) await others;
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const c of this.logStreams) c.abort();
    if (this.started) await Promise.all([this.listWatch.close(), this.nodeWatch?.close(), this.serviceWatch?.close()]);
  }

  info(): RuntimeInfo {
    const connected = this.listWatch.connected;
    const info = create(RuntimeInfoSchema, {
      name: this.name,
      endpoint: this.client.server || describeSource(this.options),
      connected,
      version: this.version,
      lastError: this.lastError,
      reconnects: this.reconnects,
      containers: this.byKey.size,
      resourceTypes: [connected && "container", this.nodeWatch?.reporting && "node", this.serviceWatch?.reporting && "service"].filter((t): t is string => typeof t === "string"),
      resourceNotes: [
        this.nodeWatch ? this.nodeWatch.note : "node: not watched (watchNodes off)",
        this.serviceWatch ? this.serviceWatch.note : "service: not watched (watchServices off)",
      ].filter((n) => n !== ""),
    });
    if (connected && this.connectedSince) info.connectedSince = this.connectedSince;
    return info;
  }

  containers(): Container[] {
    this.requireConnected();
    return [...this.byKey.values()];
  }

  limits(externalId: string): ContainerLimits | undefined {
    return this.limitsByKey.get(externalId);
  }

  async stats(externalId: string, signal?: AbortSignal): Promise<ContainerStats> {
    this.requireConnected();
    const pod = this.requirePod(externalId);
    try {
      const lookup = await raceAbort(this.metrics.get(pod.metadata.namespace, pod.metadata.name), signal, abortError);
      return podStats(pod, lookup);
    } catch (e) {
      throw toConnectError(e, `metrics of pod ${externalId}`);
    }
  }

  async health(externalId: string): Promise<ContainerHealth> {
    this.requireConnected();
    const pod = this.requirePod(externalId);
    return this.byKey.get(podKey(pod))?.health ?? podHealth(pod);
  }

  async fetchLogs(externalId: string, options: LogOptions, signal?: AbortSignal): Promise<{ lines: LogLine[]; tty: boolean; errors: string[] }> {
    this.requireConnected();
    const pod = this.requirePod(externalId);
    const reader = new PodLogReader(options.timestamps);
    // Bounded: tail 0 on a long log keeps only the newest MAX_FETCH_LOG_BYTES.
    const kept = new LogTailBuffer();
    const res = await this.client.open({ ...this.logRequest(pod, options, false), signal }).catch((e: unknown) => {
      throw toConnectError(e, `logs of pod ${externalId}`);
    });
    const errors: string[] = [];
    try {
      for await (const chunk of res as AsyncIterable<Buffer>) kept.push(reader.push(chunk));
    } catch (e) {
      // Once lines were read, a stream that breaks off answers them and says so.
      if (signal?.aborted || kept.lines().length === 0) throw toConnectError(e, `logs of pod ${externalId}`);
      errors.push(`the log could not be read to its end: ${errorMessage(e)}`);
    } finally {
      res.destroy();
    }
    kept.push(reader.end());
    const note = kept.note();
    if (note) errors.push(note);
    return { lines: kept.lines(), tty: false, errors };
  }

  async *streamLogs(externalId: string, options: LogOptions & { follow: boolean }, signal: AbortSignal): AsyncIterable<LogBatch> {
    this.requireConnected();
    const pod = this.requirePod(externalId);
    const request = this.logRequest(pod, options, options.follow);
    const closing = new AbortController();
    this.logStreams.add(closing);
    const link = linkedSignal([signal, closing.signal]);
    const linked = link.signal;
    const reader = new PodLogReader(options.timestamps);
    const opened = Date.now();
    try {
      let res;
      try {
        res = await this.client.open({ ...request, signal: linked });
      } catch (e) {
        if (signal.aborted) return;
        throw toConnectError(e, `logs of pod ${externalId}`);
      }
      let broken: Error | undefined;
      try {
        for await (const chunk of res as AsyncIterable<Buffer>) {
          const lines = reader.push(chunk);
          if (lines.length > 0) yield { lines, errors: [] };
        }
      } catch (e) {
        broken = e as Error;
      } finally {
        res.destroy();
      }
      if (signal.aborted) return;
      const rest = reader.end();
      let end: LogBatch["end"];
      if (closing.signal.aborted) end = { reason: LogEndReason.RUNTIME_ERROR, detail: "the agent's kubernetes runtime was closed" };
      else if (broken) end = { reason: LogEndReason.RUNTIME_ERROR, detail: `the log stream broke off: ${broken.message}` };
      else if (!options.follow) end = { reason: LogEndReason.END_OF_LOG, detail: "" };
      else end = await this.followEnd(pod, request.query.container ?? "", opened);
      yield { lines: rest, errors: [], end };
    } finally {
      link.dispose();
      this.logStreams.delete(closing);
    }
  }

  async pause(_externalId: string): Promise<void> {
    throw new ConnectError("kubernetes pods cannot be paused", Code.Unimplemented);
  }

  async unpause(_externalId: string): Promise<void> {
    throw new ConnectError("kubernetes pods cannot be paused", Code.Unimplemented);
  }

  // --- internals ---

  private requireConnected(): void {
    if (this.closed) throw new ConnectError("kubernetes: the runtime is closed", Code.Unavailable);
    if (!this.listWatch.connected) {
      throw new ConnectError(`kubernetes: not connected to the API server${this.lastError ? `: ${this.lastError}` : ""}`, Code.Unavailable);
    }
  }

  /** The pod an external_id names, as the watch knows it: INVALID_ARGUMENT or NOT_FOUND. */
  private requirePod(externalId: string): Pod {
    const slash = externalId.indexOf("/");
    const ns = externalId.slice(0, slash);
    const name = externalId.slice(slash + 1);
    if (slash < 0 || !NAMESPACE.test(ns) || name.length > 253 || !POD_NAME.test(name)) {
      throw invalidArgument("external_id", `must be "<namespace>/<pod name>" for kubernetes, got ${JSON.stringify(truncate(externalId))}`);
    }
    const pod = this.listWatch.get(externalId);
    if (!pod) throw this.notFound(externalId);
    return pod;
  }

  private notFound(externalId: string): ConnectError {
    const scope = [this.options.namespace && `namespace ${this.options.namespace}`, this.options.nodeName && `node ${this.options.nodeName}`].filter(Boolean).join(", ");
    return new ConnectError(`kubernetes: pod ${externalId} not found${scope ? ` (watching ${scope})` : ""}`, Code.NotFound);
  }

  private logRequest(pod: Pod, options: LogOptions, follow: boolean): { path: string; query: Query & { container: string | undefined } } {
    // Without a container the API server refuses a pod of several: pick the one kubectl would.
    if (options.container && pod.spec.containers.length > 0 && !pod.spec.containers.some((c) => c.name === options.container)) {
      throw invalidArgument("container", `pod ${podKey(pod)} has no container ${JSON.stringify(truncate(options.container))} (it has ${pod.spec.containers.map((c) => c.name).join(", ")})`);
    }
    const container = options.container || defaultContainerOf(pod);
    return {
      path: `/api/v1/namespaces/${encodeURIComponent(pod.metadata.namespace)}/pods/${encodeURIComponent(pod.metadata.name)}/log`,
      query: {
        container,
        tailLines: options.tail > 0 ? options.tail : undefined,
        timestamps: options.timestamps ? "true" : undefined,
        follow: follow ? "true" : undefined,
      },
    };
  }

  /**
   * Why a followed log ended (the kubelet ends it when the container stops): the pod is gone,
   * the container ended (now, or a run that ended since the stream opened and was restarted),
   * or — still running — the API server cut it.
   */
  private async followEnd(pod: Pod, container: string, opened: number): Promise<NonNullable<LogBatch["end"]>> {
    let now: Pod;
    try {
      now = toPod(await this.client.getJson({ path: `/api/v1/namespaces/${encodeURIComponent(pod.metadata.namespace)}/pods/${encodeURIComponent(pod.metadata.name)}` }));
    } catch (e) {
      if (e instanceof KubeApiError && e.httpStatus === 404) return { reason: LogEndReason.CONTAINER_REMOVED, detail: `pod ${podKey(pod)} was deleted` };
      return { reason: LogEndReason.RUNTIME_ERROR, detail: `the log stream ended and the pod could not be read: ${describeFailure(e)}` };
    }
    if (now.metadata.uid !== pod.metadata.uid) return { reason: LogEndReason.CONTAINER_REMOVED, detail: `pod ${podKey(pod)} was deleted (and created again)` };
    const status = now.status.containerStatuses.find((s) => s.name === container);
    const ended = status?.state.terminated;
    if (ended) return { reason: LogEndReason.CONTAINER_EXITED, detail: `container ${container} exited with code ${ended.exitCode}${ended.reason ? ` (${ended.reason})` : ""}` };
    const last = status?.lastState.terminated;
    if (last?.finishedAt && Date.parse(last.finishedAt) >= opened - 1000) {
      return { reason: LogEndReason.CONTAINER_EXITED, detail: `container ${container} exited with code ${last.exitCode} and was restarted` };
    }
    return { reason: LogEndReason.RUNTIME_ERROR, detail: `the API server ended the log stream while container ${container} is ${status?.state.running ? "running" : "not terminated"}` };
  }

  private onConnected(): void {
    if (this.everConnected) this.reconnects++;
    this.everConnected = true;
    this.connectedSince = timestampNow();
    this.lastError = "";
    this.logger.info({ endpoint: this.client.server, reconnects: this.reconnects }, "connected to the kubernetes API server");
    this.emit("connected");
    // The version is for RuntimeInfo only: fetched on the side, again after each reconnect
    // (the server may have been upgraded meanwhile).
    this.client.getJson({ path: "/version", timeoutMs: 5_000 }).then(
      (v) => {
        const git = (v as { gitVersion?: unknown } | null)?.gitVersion;
        if (typeof git === "string") this.version = git;
      },
      (e: unknown) => this.logger.debug({ err: describeFailure(e) }, "cannot read the API server version"),
    );
  }

  private onDisconnected(err: Error): void {
    this.lastError = describeFailure(err);
    this.logger.warn({ endpoint: this.client.server || describeSource(this.options), err: this.lastError }, "kubernetes API server unreachable; retrying with backoff");
    this.emit("disconnected", err);
  }

  /** Pod changes → containers and events, in order. */
  private async apply(changes: PodChange[], source: ChangeSource): Promise<void> {
    const synthetic = source === "relist";
    for (const change of changes) {
      const key = podKey(change.type === "deleted" ? change.previous : change.object);
      if (change.type === "deleted") {
        const previous = this.byKey.get(key);
        this.byKey.delete(key);
        this.limitsByKey.delete(key);
        const prevErrorDetail = this.errorDetailByKey.get(key);
        this.errorDetailByKey.delete(key);
        if (source === "initial" || !previous) continue;
        let last = previous;
        if (change.object) {
          // The DELETED event's object is the pod's final state: report what changed up to it.
          const controller: ControllerRef | undefined = previous.controllerKind ? { kind: previous.controllerKind, name: previous.controllerName } : undefined;
          last = podToContainer(change.object, controller);
          for (const action of podActions(previous, last, podFacts(change.object), prevErrorDetail)) this.emit("event", podEvent(last, action, synthetic));
        }
        // A deleted object says when deletion was asked for, not when it was done: agent time.
        this.emit("event", podEvent(last, { action: "destroy" }, synthetic));
        continue;
      }
      const controller = await this.controllers.resolve(change.object);
      const next = podToContainer(change.object, controller);
      const previous = change.type === "modified" ? this.byKey.get(key) : undefined;
      this.byKey.set(key, next);
      this.limitsByKey.set(key, podLimits(change.object));
      const facts = podFacts(change.object);
      const prevErrorDetail = this.errorDetailByKey.get(key);
      this.errorDetailByKey.set(key, facts.errorDetail);
      if (source === "initial") continue;
      for (const action of podActions(previous, next, facts, prevErrorDetail)) this.emit("event", podEvent(next, action, synthetic));
    }
    if (changes.length > 0 || source === "initial") this.emit("containers");
  }
}

/** What a request of this runtime rejects with when its caller aborts (toConnectError: CANCELED). */
function abortError(): Error {
  const e = new Error("aborted");
  e.name = "AbortError";
  return e;
}

/** The Kubernetes runtime of this agent (see KubernetesRuntime); `start()` connects. */
export function createKubernetesRuntime(options: KubernetesRuntimeOptions): KubernetesRuntime {
  return new KubernetesRuntime(options);
}
