import { create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { ContainerState, HealthStatus, RuntimeEventSchema, type Container, type RuntimeEvent } from "../../../gen/fleetlet/agent/v1/runtime_pb.js";
import { parseRfc3339Nano } from "../log-line-assembler.js";
import type { PodFacts } from "./pod-event-facts.js";
import { RUNTIME_NAME } from "./pod-to-container.js";

/** One Docker-like action a pod change amounts to. */
export interface PodAction {
  action: string;
  exitCode?: number;
  healthStatus?: string;
  /** Why (pod-event-facts.ts errorDetail / lastRunDetail); "" or unset when nothing failed. */
  errorDetail?: string;
  /** When it happened, as the object says (RFC 3339); unset = when the agent saw it. */
  at?: string;
}

const ENDED = new Set([ContainerState.EXITED, ContainerState.COMPLETED]);
const STARTED = new Set([ContainerState.RUNNING, ContainerState.RESTARTING]);

const HEALTH_NAMES: Partial<Record<HealthStatus, string>> = {
  [HealthStatus.HEALTHY]: "healthy",
  [HealthStatus.UNHEALTHY]: "unhealthy",
  [HealthStatus.STARTING]: "starting",
};

function healthAction(prev: Container | undefined, next: Container, facts: Partial<PodFacts>): PodAction[] {
  const status = next.health?.status ?? HealthStatus.UNSPECIFIED;
  const name = HEALTH_NAMES[status];
  if (!name || !next.health?.hasHealthcheck) return [];
  // A new pod starts out "starting": only a verdict is news then.
  if (!prev && status === HealthStatus.STARTING) return [];
  if (prev && prev.health?.status === status) return [];
  return [{ action: "health_status", healthStatus: name, at: facts.readyChangedAt }];
}

/**
 * The actions between two views of the same pod (same uid), named like Docker's events so a
 * client handles both runtimes alike: create, start, oom, die (with the exit code), restart,
 * health_status — plus "error" when the pod starts failing in a way no Docker action names
 * (a container waiting in ImagePullBackOff / ErrImagePull / CreateContainerConfigError, a pod
 * evicted): the error detail changed while nothing else did. `prev` undefined: the pod is new.
 * Only what the two views show is reported — a pod first seen already running gets create +
 * start, one first seen finished gets create + die; nothing is reported for states the pod may
 * have passed through unseen. Deletion ("destroy") is the caller's, as it is not a difference
 * between two views. `facts` (pod-event-facts.ts, of `next`'s pod) give each action the
 * object's time and error detail; `prevErrorDetail` is the previous view's.
 */
export function podActions(prev: Container | undefined, next: Container, facts: Partial<PodFacts> = {}, prevErrorDetail = ""): PodAction[] {
  const out: PodAction[] = [];
  const errorDetail = facts.errorDetail ?? "";
  if (!prev) {
    out.push({ action: "create", at: facts.createdAt, errorDetail });
    if (STARTED.has(next.state)) out.push({ action: "start", at: facts.startedAt });
    if (ENDED.has(next.state)) {
      if (next.oomKilled) out.push({ action: "oom", at: facts.oomAt, errorDetail });
      out.push({ action: "die", exitCode: next.exitCode, at: facts.finishedAt, errorDetail });
    }
    out.push(...healthAction(undefined, next, facts));
    return out;
  }
  const restarted = next.restartCount > prev.restartCount;
  const ended = ENDED.has(next.state) && !ENDED.has(prev.state);
  // What ended: the pod (its final state) or, on a restart, the run the kubelet replaced.
  const endDetail = ended ? errorDetail : (facts.lastRunDetail ?? "");
  // A kill for memory is news when the flag appears, or comes again with a new restart.
  if (next.oomKilled && (!prev.oomKilled || restarted)) out.push({ action: "oom", at: facts.oomAt, errorDetail: endDetail });
  // After a restart the pod may be running again: the exit code is that of the run that ended.
  if (ended || restarted) {
    out.push({ action: "die", exitCode: ended ? next.exitCode : (facts.lastExitCode ?? next.exitCode), at: ended ? facts.finishedAt : facts.lastFinishedAt, errorDetail: endDetail });
  }
  if (restarted) out.push({ action: "restart", at: facts.restartedAt, errorDetail });
  if (next.state === ContainerState.RUNNING && prev.state !== ContainerState.RUNNING) out.push({ action: "start", at: facts.startedAt });
  out.push(...healthAction(prev, next, facts));
  // The API has no time for a waiting reason: an "error" is dated when the agent saw it.
  if (out.length === 0 && errorDetail !== "" && errorDetail !== prevErrorDetail) out.push({ action: "error", errorDetail });
  return out;
}

/** A RuntimeEvent for one action of `container` (the pod as it is after the change). */
export function podEvent(container: Container, action: PodAction, synthetic: boolean, attributes: Record<string, string> = {}): RuntimeEvent {
  const e = create(RuntimeEventSchema, {
    action: action.action,
    runtime: RUNTIME_NAME,
    externalId: container.externalId,
    name: container.name,
    healthStatus: action.healthStatus ?? "",
    resourceType: "container",
    timestamp: (action.at !== undefined ? parseRfc3339Nano(action.at) : undefined) ?? timestampNow(),
    errorDetail: action.errorDetail ?? "",
    labels: { ...container.labels },
    attributes: {
      namespace: container.namespace,
      ...(container.node ? { node: container.node } : {}),
      ...(container.image ? { image: container.image } : {}),
      ...(container.controllerKind ? { controller_kind: container.controllerKind, controller_name: container.controllerName } : {}),
      restart_count: String(container.restartCount),
      ...attributes,
    },
    synthetic,
    instanceId: container.id,
  });
  if (action.exitCode !== undefined) e.exitCode = action.exitCode;
  return e;
}
