import { create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { RuntimeEventSchema, type RuntimeEvent } from "../../../gen/fleetlet/agent/v1/runtime_pb.js";
import { parseRfc3339Nano } from "../log-line-assembler.js";
import type { Node, NodeCondition } from "./kube-objects.js";
import { RUNTIME_NAME } from "./pod-to-container.js";

/** One thing that happened to a node (the "node" actions of RuntimeEvent.action). */
export interface NodeAction {
  action: string;
  /** The condition it is about, with its status and reason. */
  condition?: NodeCondition;
  /** When, as the object says (the condition's lastTransitionTime, creationTimestamp). */
  at?: string;
}

/** Conditions that are bad when True (the kubelet's resource pressure signals). */
export const PRESSURE_CONDITIONS = ["MemoryPressure", "DiskPressure", "PIDPressure"] as const;

const condition = (node: Node | undefined, type: string) => node?.conditions.find((c) => c.type === type);
const isTrue = (c: NodeCondition | undefined) => c?.status === "True";

/**
 * The actions between two views of the same node (`prev` undefined: it is new):
 * - Ready True → False/Unknown: "not_ready"; back to True: "ready";
 * - MemoryPressure / DiskPressure / PIDPressure becoming True: "pressure"; no longer True:
 *   "pressure_cleared" (the condition is in the action);
 * - NetworkUnavailable becoming True: "network_unavailable"; no longer: "network_available";
 * - spec.unschedulable set (kubectl cordon / drain): "cordon"; cleared: "uncordon".
 * A new node is "create" plus what is already wrong with it (a Ready condition that is not
 * True, pressure, no network, cordoned): nothing it may have passed through unseen. Deletion
 * ("destroy") is the caller's. Condition actions carry the condition's lastTransitionTime; the
 * API keeps no time for a cordon, so that is when the agent saw it.
 */
export function nodeActions(prev: Node | undefined, next: Node): NodeAction[] {
  const out: NodeAction[] = [];
  if (!prev) out.push({ action: "create", at: next.metadata.creationTimestamp });
  const ready = condition(next, "Ready");
  // A node registers before its kubelet reports Ready: no condition yet is not "not_ready" news.
  if (prev ? isTrue(condition(prev, "Ready")) !== isTrue(ready) : ready !== undefined && !isTrue(ready)) {
    out.push({ action: isTrue(ready) ? "ready" : "not_ready", condition: ready, at: ready?.lastTransitionTime });
  }
  for (const type of PRESSURE_CONDITIONS) {
    const now = condition(next, type);
    if (isTrue(now) !== isTrue(condition(prev, type))) out.push({ action: isTrue(now) ? "pressure" : "pressure_cleared", condition: now ?? { type, status: "", reason: "", message: "" }, at: now?.lastTransitionTime });
  }
  const network = condition(next, "NetworkUnavailable");
  if (isTrue(network) !== isTrue(condition(prev, "NetworkUnavailable"))) {
    out.push({ action: isTrue(network) ? "network_unavailable" : "network_available", condition: network, at: network?.lastTransitionTime });
  }
  if (next.unschedulable !== (prev?.unschedulable ?? false)) out.push({ action: next.unschedulable ? "cordon" : "uncordon" });
  return out;
}

/** Actions whose condition's message says what is wrong (the event's error_detail). */
const BAD = new Set(["not_ready", "pressure", "network_unavailable"]);

/** A RuntimeEvent (resource_type "node") for one action of `node` (as it is after the change). */
export function nodeEvent(node: Node, action: NodeAction, synthetic: boolean): RuntimeEvent {
  const c = action.condition;
  return create(RuntimeEventSchema, {
    action: action.action,
    runtime: RUNTIME_NAME,
    externalId: node.metadata.name,
    name: node.metadata.name,
    resourceType: "node",
    timestamp: (action.at !== undefined ? parseRfc3339Nano(action.at) : undefined) ?? timestampNow(),
    errorDetail: c && BAD.has(action.action) ? [c.reason, c.message].filter(Boolean).join(": ") : "",
    labels: { ...node.metadata.labels },
    attributes: {
      ...(c ? { condition: c.type, status: c.status, ...(c.reason ? { reason: c.reason } : {}) } : {}),
      unschedulable: String(node.unschedulable),
      ...(node.kubeletVersion ? { kubelet_version: node.kubeletVersion } : {}),
    },
    synthetic,
  });
}
