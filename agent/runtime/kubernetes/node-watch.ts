import { describeFailure } from "./kube-errors.js";
import { KubeListWatch, type ChangeSource, type ObjectChange } from "./kube-list-watch.js";
import { toNode, type Node } from "./kube-objects.js";
import type { ClusterWatchOptions } from "./cluster-watch-options.js";
import { nodeActions, nodeEvent } from "./node-events.js";

/**
 * The cluster's Nodes (or only this agent's node) as "node" RuntimeEvents (node-events.ts):
 * readiness, pressure, network and cordon changes, nodes added and removed. Its own list+watch,
 * apart from the pods': a service account that may not read nodes loses node events (RuntimeInfo
 * says why in resource_notes), not its pods.
 */
export class NodeWatch {
  private readonly listWatch: KubeListWatch<Node>;
  private failure = "";

  constructor(private readonly options: ClusterWatchOptions & { nodeName?: string }) {
    this.listWatch = new KubeListWatch<Node>({
      client: options.client,
      logger: options.logger,
      pageSize: options.pageSize,
      watchTimeoutSeconds: options.watchTimeoutSeconds,
      requestTimeoutMs: options.requestTimeoutMs,
      backoff: options.backoff,
      resource: {
        kind: "node",
        path: "/api/v1/nodes",
        selector: options.nodeName ? { fieldSelector: `metadata.name=${options.nodeName}` } : undefined,
        parse: toNode,
        key: (n) => n.metadata.name,
      },
      handler: {
        apply: async (changes, source) => this.apply(changes, source),
        connected: () => (this.failure = ""),
        disconnected: (err) => this.options.logger.warn({ err: describeFailure(err) }, "cannot watch kubernetes nodes: no node events until it can; retrying with backoff"),
        failed: (err) => (this.failure = describeFailure(err)),
      },
    });
  }

  start(): Promise<void> {
    return this.listWatch.start();
  }

  close(): Promise<void> {
    return this.listWatch.close();
  }

  get reporting(): boolean {
    return this.listWatch.connected;
  }

  /** Why node events are not reported now ("" when they are). */
  get note(): string {
    return this.reporting ? "" : `node: ${this.failure || "not listed yet"}`;
  }

  get counters(): Readonly<KubeListWatch<Node>["counters"]> {
    return this.listWatch.counters;
  }

  private apply(changes: ObjectChange<Node>[], source: ChangeSource): void {
    // The first list is the current state, not news (as for pods).
    if (source === "initial") return;
    const synthetic = source === "relist";
    for (const change of changes) {
      if (change.type === "deleted") {
        const last = change.object ?? change.previous;
        if (change.object) for (const a of nodeActions(change.previous, change.object)) this.options.emit(nodeEvent(last, a, synthetic));
        this.options.emit(nodeEvent(last, { action: "destroy" }, synthetic));
        continue;
      }
      const previous = change.type === "modified" ? change.previous : undefined;
      for (const a of nodeActions(previous, change.object)) this.options.emit(nodeEvent(change.object, a, synthetic));
    }
  }
}
