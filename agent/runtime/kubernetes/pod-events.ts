import { create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { ContainerState, HealthStatus, RuntimeEventSchema, type Container, type RuntimeEvent } from "../../../gen/fleetlet/agent/v1/runtime_pb.js";
import { RUNTIME_NAME } from "./pod-to-container.js";

/** One Docker-like action a pod change amounts to. */
export interface PodAction {
  action: string;
  exitCode?: number;
  healthStatus?: string;
}

const ENDED = new Set([ContainerState.EXITED, ContainerState.COMPLETED]);
const STARTED = new Set([ContainerState.RUNNING, ContainerState.RESTARTING]);

const HEALTH_NAMES: Partial<Record<HealthStatus, string>> = {
  [HealthStatus.HEALTHY]: "healthy",
  [HealthStatus.UNHEALTHY]: "unhealthy",
  [HealthStatus.STARTING]: "starting",
};

function healthAction(prev: Container | undefined, next: Container): PodAction[] {
  const status = next.health?.status ?? HealthStatus.UNSPECIFIED;
  const name = HEALTH_NAMES[status];
  if (!name || !next.health?.hasHealthcheck) return [];
  // A new pod starts out "starting": only a verdict is news then.
  if (!prev && status === HealthStatus.STARTING) return [];
  if (prev && prev.health?.status === status) return [];
  return [{ action: "health_status", healthStatus: name }];
}

/**
 * The actions between two views of the same pod (same uid), named like Docker's events so a
 * client handles both runtimes alike: create, start, oom, die (with the exit code), restart,
 * health_status. `prev` undefined: the pod is new. Only what the two views show is reported —
 * a pod first seen already running gets create + start, one first seen finished gets
 * create + die; nothing is reported for states the pod may have passed through unseen.
 * Deletion ("destroy") is the caller's, as it is not a difference between two views.
 * `lastExitCode`: the exit code of the pod's most recent container run that ended (lastState).
 */
export function podActions(prev: Container | undefined, next: Container, lastExitCode?: number): PodAction[] {
  const out: PodAction[] = [];
  if (!prev) {
    out.push({ action: "create" });
    if (STARTED.has(next.state)) out.push({ action: "start" });
    if (ENDED.has(next.state)) {
      if (next.oomKilled) out.push({ action: "oom" });
      out.push({ action: "die", exitCode: next.exitCode });
    }
    out.push(...healthAction(undefined, next));
    return out;
  }
  const restarted = next.restartCount > prev.restartCount;
  const ended = ENDED.has(next.state) && !ENDED.has(prev.state);
  // A kill for memory is news when the flag appears, or comes again with a new restart.
  if (next.oomKilled && (!prev.oomKilled || restarted)) out.push({ action: "oom" });
  // After a restart the pod may be running again: the exit code is that of the run that ended.
  if (ended || restarted) out.push({ action: "die", exitCode: ended ? next.exitCode : (lastExitCode ?? next.exitCode) });
  if (restarted) out.push({ action: "restart" });
  if (next.state === ContainerState.RUNNING && prev.state !== ContainerState.RUNNING) out.push({ action: "start" });
  out.push(...healthAction(prev, next));
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
    timestamp: timestampNow(),
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
