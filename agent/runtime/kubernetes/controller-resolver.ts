import type { KubeApiClient } from "./kube-api-client.js";
import { KubeApiError } from "./kube-api-client.js";
import { controllerOf, toObjectMeta, type Pod } from "./kube-objects.js";
import type { ControllerRef } from "./pod-to-container.js";
import type { RuntimeLogger } from "../runtime-logger.js";
import { errorMessage } from "../../../lib/error-message.js";

// Enough for the ReplicaSets of the pods of one node or a large namespace; the oldest entry goes
// first (a Deployment's old ReplicaSets stop being asked about once their pods are gone).
const MAX_ENTRIES = 4096;

/**
 * The controller a pod is reported under: its controller owner reference, except that a
 * ReplicaSet owned by a Deployment is the Deployment (what people manage). Resolving that needs
 * the ReplicaSet's own ownerReferences: one GET per ReplicaSet, cached by its uid, shared by
 * concurrent lookups. A ReplicaSet that cannot be read (gone, not allowed, API down) is reported
 * as itself and asked about again next time; the failure is logged once per ReplicaSet.
 */
export class ControllerResolver {
  private readonly cache = new Map<string, ControllerRef>();
  private readonly inFlight = new Map<string, Promise<ControllerRef>>();
  private readonly warned = new Set<string>();
  /** GETs made (tests assert the cache works). */
  lookups = 0;

  constructor(
    private readonly client: KubeApiClient,
    private readonly logger: RuntimeLogger,
    private readonly timeoutMs = 5_000,
  ) {}

  async resolve(pod: Pod): Promise<ControllerRef | undefined> {
    const owner = controllerOf(pod.metadata);
    if (!owner) return undefined;
    if (owner.kind !== "ReplicaSet" || !owner.apiVersion.startsWith("apps/")) return { kind: owner.kind, name: owner.name };
    const key = `${pod.metadata.namespace}/${owner.name}/${owner.uid}`;
    const hit = this.cache.get(key);
    if (hit) return hit;
    let pending = this.inFlight.get(key);
    if (!pending) {
      pending = this.lookUp(pod.metadata.namespace, owner.name, key).finally(() => this.inFlight.delete(key));
      this.inFlight.set(key, pending);
    }
    return pending;
  }

  private async lookUp(namespace: string, name: string, key: string): Promise<ControllerRef> {
    const self: ControllerRef = { kind: "ReplicaSet", name };
    this.lookups++;
    try {
      const rs = await this.client.getJson({
        path: `/apis/apps/v1/namespaces/${encodeURIComponent(namespace)}/replicasets/${encodeURIComponent(name)}`,
        timeoutMs: this.timeoutMs,
      });
      const owner = controllerOf(toObjectMeta((rs as { metadata?: unknown } | null)?.metadata, "replicaset"));
      const ref = owner?.kind === "Deployment" ? { kind: "Deployment", name: owner.name } : self;
      this.remember(key, ref);
      return ref;
    } catch (e) {
      if (!this.warned.has(key)) {
        this.warned.add(key);
        const level = e instanceof KubeApiError && e.httpStatus === 404 ? "debug" : "warn";
        this.logger[level]({ replicaset: `${namespace}/${name}`, err: errorMessage(e) }, "cannot read the ReplicaSet owning a pod; reporting the ReplicaSet as its controller");
      }
      return self;
    }
  }

  private remember(key: string, ref: ControllerRef): void {
    if (this.cache.size >= MAX_ENTRIES) {
      const oldest = this.cache.keys().next();
      if (!oldest.done) this.cache.delete(oldest.value);
    }
    this.cache.set(key, ref);
    this.warned.delete(key);
  }
}
