import type { RuntimeEvent } from "../../../gen/fleetlet/agent/v1/runtime_pb.js";
import type { RuntimeLogger } from "../runtime-logger.js";
import type { KubeApiClient } from "./kube-api-client.js";

/** What the node and service watches share with the runtime's pod watch. */
export interface ClusterWatchOptions {
  client: KubeApiClient;
  logger: RuntimeLogger;
  /** Delivers one event (the runtime emits it as its own). */
  emit: (event: RuntimeEvent) => void;
  pageSize?: number;
  watchTimeoutSeconds?: number;
  requestTimeoutMs?: number;
  backoff?: { initialMs: number; maxMs: number };
}
