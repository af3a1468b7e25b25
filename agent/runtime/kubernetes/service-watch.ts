import { describeFailure } from "./kube-errors.js";
import { KubeListWatch, type ChangeSource, type ObjectChange } from "./kube-list-watch.js";
import { toEndpointSlice, toService, type EndpointSlice, type Service } from "./kube-objects.js";
import type { ClusterWatchOptions } from "./cluster-watch-options.js";
import { changedFields, countEndpoints, LAST_CHANGE_TRIGGER_TIME, serviceEvent, serviceView, type ServiceView } from "./service-events.js";

const key = (namespace: string, name: string) => `${namespace}/${name}`;

/**
 * Services as "service" RuntimeEvents (service-events.ts): created, updated (spec, labels,
 * load balancer, or the number of ready endpoints), deleted. Two list+watches: Services, and
 * EndpointSlices (discovery.k8s.io/v1, labelled with their service) for the endpoint counts —
 * the slices are listed first, so a service's "create" already carries its count. Slices that
 * cannot be read leave the counts out (unknown, not 0) and say so in the note.
 */
export class ServiceWatch {
  private readonly services: KubeListWatch<Service>;
  private readonly slices: KubeListWatch<EndpointSlice>;
  /** Slices by service key, then by slice key. */
  private readonly slicesByService = new Map<string, Map<string, EndpointSlice>>();
  private readonly views = new Map<string, ServiceView>();
  private slicesListed = false;
  private serviceFailure = "";
  private sliceFailure = "";

  constructor(private readonly options: ClusterWatchOptions & { namespace?: string }) {
    const ns = options.namespace ? `/namespaces/${encodeURIComponent(options.namespace)}` : "";
    const common = {
      client: options.client,
      logger: options.logger,
      pageSize: options.pageSize,
      watchTimeoutSeconds: options.watchTimeoutSeconds,
      requestTimeoutMs: options.requestTimeoutMs,
      backoff: options.backoff,
    };
    this.services = new KubeListWatch<Service>({
      ...common,
      resource: { kind: "service", path: `/api/v1${ns}/services`, parse: toService, key: (s) => key(s.metadata.namespace, s.metadata.name) },
      handler: {
        apply: async (changes, source) => this.applyServices(changes, source),
        connected: () => (this.serviceFailure = ""),
        disconnected: (err) => this.options.logger.warn({ err: describeFailure(err) }, "cannot watch kubernetes services: no service events until it can; retrying with backoff"),
        failed: (err) => (this.serviceFailure = describeFailure(err)),
      },
    });
    this.slices = new KubeListWatch<EndpointSlice>({
      ...common,
      resource: { kind: "endpointslice", path: `/apis/discovery.k8s.io/v1${ns}/endpointslices`, parse: toEndpointSlice, key: (s) => key(s.metadata.namespace, s.metadata.name) },
      handler: {
        apply: async (changes, source) => this.applySlices(changes, source),
        connected: () => (this.sliceFailure = ""),
        disconnected: (err) => this.options.logger.warn({ err: describeFailure(err) }, "cannot watch kubernetes endpoint slices: service events without endpoint counts until it can"),
        failed: (err) => (this.sliceFailure = describeFailure(err)),
      },
    });
  }

  async start(): Promise<void> {
    await this.slices.start();
    await this.services.start();
  }

  async close(): Promise<void> {
    await Promise.all([this.services.close(), this.slices.close()]);
  }

  get reporting(): boolean {
    return this.services.connected;
  }

  /** Why service events are not reported, or not fully ("" when they are). */
  get note(): string {
    if (!this.services.connected) return `service: ${this.serviceFailure || "not listed yet"}`;
    if (!this.slices.connected) return `service: endpoint counts unavailable: ${this.sliceFailure || "not listed yet"}`;
    return "";
  }

  private counts(serviceKey: string) {
    return this.slicesListed ? countEndpoints(this.slicesByService.get(serviceKey)?.values() ?? []) : undefined;
  }

  private applyServices(changes: ObjectChange<Service>[], source: ChangeSource): void {
    const synthetic = source === "relist";
    for (const change of changes) {
      const s = change.type === "deleted" ? change.previous : change.object;
      const k = key(s.metadata.namespace, s.metadata.name);
      if (change.type === "deleted") {
        const view = this.views.get(k) ?? serviceView(s, this.counts(k));
        this.views.delete(k);
        if (source !== "initial") this.options.emit(serviceEvent(change.object ?? s, view, "destroy", synthetic));
        continue;
      }
      const view = serviceView(change.object, this.counts(k));
      const previous = change.type === "modified" ? this.views.get(k) : undefined;
      this.views.set(k, view);
      if (source === "initial") continue;
      if (!previous) {
        this.options.emit(serviceEvent(change.object, view, "create", synthetic));
        continue;
      }
      const changed = changedFields(previous, view);
      if (changed.length > 0) this.options.emit(serviceEvent(change.object, view, "update", synthetic, { changed }));
    }
  }

  private applySlices(changes: ObjectChange<EndpointSlice>[], source: ChangeSource): void {
    // service key → the newest trigger time of its slices that changed
    const touched = new Map<string, string | undefined>();
    const touch = (slice: EndpointSlice) => {
      if (slice.serviceName === "") return;
      const k = key(slice.metadata.namespace, slice.serviceName);
      const at = slice.metadata.annotations[LAST_CHANGE_TRIGGER_TIME];
      const before = touched.get(k);
      touched.set(k, before === undefined || (at !== undefined && at > before) ? at : before);
      return k;
    };
    for (const change of changes) {
      if (change.type !== "added") {
        const k = touch(change.previous);
        if (k) this.slicesByService.get(k)?.delete(key(change.previous.metadata.namespace, change.previous.metadata.name));
      }
      if (change.type !== "deleted") {
        const k = touch(change.object);
        if (k) {
          let m = this.slicesByService.get(k);
          if (!m) this.slicesByService.set(k, (m = new Map()));
          m.set(key(change.object.metadata.namespace, change.object.metadata.name), change.object);
        }
      }
    }
    for (const [k, m] of this.slicesByService) if (m.size === 0) this.slicesByService.delete(k);
    if (!this.slicesListed) {
      // Counts that become known (the slices' first list) are not a change of any service.
      this.slicesListed = true;
      for (const k of this.views.keys()) {
        const service = this.services.get(k);
        if (service) this.views.set(k, serviceView(service, this.counts(k)));
      }
      return;
    }
    for (const [k, at] of touched) {
      const service = this.services.get(k);
      const previous = this.views.get(k);
      if (!service || !previous) continue;
      const view = serviceView(service, this.counts(k));
      this.views.set(k, view);
      if (source === "initial") continue;
      const changed = changedFields(previous, view);
      if (changed.length > 0) this.options.emit(serviceEvent(service, view, "update", source === "relist", { at, changed }));
    }
  }
}
