import { create } from "@bufbuild/protobuf";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { isIPv4 } from "node:net";
import { ContainerHealthSchema, ContainerSchema, ContainerState, HealthStatus, type Container, type ContainerHealth } from "../../../gen/fleetlet/agent/v1/runtime_pb.js";
import { parseRfc3339Nano } from "../log-line-assembler.js";
import type { Pod, PodContainerStatus } from "./kube-objects.js";
import { podFailingStreak } from "./pod-event-facts.js";

export const RUNTIME_NAME = "kubernetes";

/** Kubernetes' own annotation for the container `kubectl logs` picks when none is named. */
export const DEFAULT_CONTAINER_ANNOTATION = "kubectl.kubernetes.io/default-container";

/** The owning controller as reported (a Deployment's ReplicaSet resolved to the Deployment). */
export interface ControllerRef {
  kind: string;
  name: string;
}

/** "<namespace>/<pod name>": a pod's external_id. */
export function podKey(pod: Pod): string {
  return `${pod.metadata.namespace}/${pod.metadata.name}`;
}

/** The instance id the pod appears as in the inventory. */
export function podInstanceId(pod: Pod): string {
  return `k8s-${pod.metadata.uid}`;
}

/** The container `kubectl logs` would pick: the annotated default, else the first. */
export function defaultContainerOf(pod: Pod): string | undefined {
  const annotated = pod.metadata.annotations[DEFAULT_CONTAINER_ANNOTATION];
  if (annotated && pod.spec.containers.some((c) => c.name === annotated)) return annotated;
  return pod.spec.containers[0]?.name;
}

// A container that is waiting after it ran before is being restarted by the kubelet (crash loop,
// image pull after a restart...); a first start waits with restartCount 0.
function restarting(s: PodContainerStatus): boolean {
  return s.state.waiting !== undefined && (s.state.waiting.reason === "CrashLoopBackOff" || s.restartCount > 0);
}

/**
 * Pod phase and container statuses → one state: Pending → CREATED, Running → RUNNING,
 * Succeeded → COMPLETED (exit 0), Failed → EXITED with the exit code of a terminated container
 * (the first non-zero one), any container in a crash loop → RESTARTING (exit code of its last
 * run, as Docker reports a restarting container's last exit). Unknown (node lost) → UNSPECIFIED.
 */
export function podState(pod: Pod): { state: ContainerState; exitCode?: number } {
  const statuses = pod.status.containerStatuses;
  const looping = statuses.find(restarting);
  switch (pod.status.phase) {
    case "Pending":
    case "Running":
      if (looping) return { state: ContainerState.RESTARTING, exitCode: looping.lastState.terminated?.exitCode };
      return { state: pod.status.phase === "Running" ? ContainerState.RUNNING : ContainerState.CREATED };
    case "Succeeded":
      return { state: ContainerState.COMPLETED, exitCode: 0 };
    case "Failed": {
      const terminated = statuses.flatMap((s) => (s.state.terminated ? [s.state.terminated] : []));
      const failed = terminated.find((t) => t.exitCode !== 0) ?? terminated[0];
      return { state: ContainerState.EXITED, exitCode: failed?.exitCode };
    }
    default:
      return { state: ContainerState.UNSPECIFIED };
  }
}

/** A container of the pod was killed for memory (now, or in its last run before a restart). */
export function podOomKilled(pod: Pod): boolean {
  return [...pod.status.containerStatuses, ...pod.status.initContainerStatuses].some(
    (s) => s.state.terminated?.reason === "OOMKilled" || s.lastState.terminated?.reason === "OOMKilled",
  );
}

function ts(text: string | undefined): Timestamp | undefined {
  return text === undefined ? undefined : parseRfc3339Nano(text);
}

function millis(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const ms = Date.parse(text);
  return Number.isNaN(ms) ? undefined : ms;
}

/**
 * Readiness as health: has_healthcheck when any container has a readinessProbe; HEALTHY when the
 * Ready condition is True; STARTING until the pod has been ready since its probed containers
 * (re)started; UNHEALTHY when it was ready and is not anymore, or is not running. last_output is
 * the Ready condition's message. The kubelet does not publish probe counts: failing_streak is
 * the restart count of a not-ready container whose last run failed (podFailingStreak).
 */
export function podHealth(pod: Pod): ContainerHealth {
  const probed = pod.spec.containers.filter((c) => c.hasReadinessProbe).map((c) => c.name);
  if (probed.length === 0) return create(ContainerHealthSchema, { hasHealthcheck: false, status: HealthStatus.NONE });
  const ready = pod.status.conditions.find((c) => c.type === "Ready");
  const health = create(ContainerHealthSchema, { hasHealthcheck: true, lastOutput: ready?.message ?? "" });
  const probeAt = ts(ready?.lastProbeTime);
  if (probeAt) health.lastProbeAt = probeAt;
  if (ready?.status === "True") {
    health.status = HealthStatus.HEALTHY;
  } else if (pod.status.phase === "Pending" || ready === undefined) {
    health.status = HealthStatus.STARTING;
  } else if (pod.status.phase === "Running" && ready.status === "False") {
    // The Ready condition turned False at lastTransitionTime. If every probed container started
    // after that, the pod has not been ready since they started: still starting (also after a
    // restart, as Docker resets a restarted container to "starting"). A probed container that
    // was already running then, or is not running now, is failing its probe.
    const becameUnready = millis(ready.lastTransitionTime);
    const starting = probed.every((name) => {
      const started = millis(pod.status.containerStatuses.find((s) => s.name === name)?.state.running?.startedAt);
      return started !== undefined && (becameUnready === undefined || started >= becameUnready);
    });
    health.status = starting ? HealthStatus.STARTING : HealthStatus.UNHEALTHY;
  } else {
    health.status = HealthStatus.UNHEALTHY;
  }
  if (health.status !== HealthStatus.HEALTHY) health.failingStreak = podFailingStreak(pod);
  return health;
}

/** The pod's address: status.podIP, or its IPv4 one when the pod is dual-stack with IPv6 first. */
function podAddress(pod: Pod): string {
  if (isIPv4(pod.status.podIP)) return pod.status.podIP;
  return pod.status.podIPs.find((ip) => isIPv4(ip)) ?? pod.status.podIP;
}

/** A pod as a Container of the RuntimeService (runtime.md "Container fields"). */
export function podToContainer(pod: Pod, controller: ControllerRef | undefined): Container {
  const { state, exitCode } = podState(pod);
  const main = defaultContainerOf(pod);
  const c = create(ContainerSchema, {
    id: podInstanceId(pod),
    runtime: RUNTIME_NAME,
    externalId: podKey(pod),
    name: pod.metadata.name,
    image: pod.spec.containers.find((s) => s.name === main)?.image ?? "",
    state,
    oomKilled: podOomKilled(pod),
    restartCount: pod.status.containerStatuses.reduce((n, s) => n + s.restartCount, 0),
    labels: { ...pod.metadata.labels },
    namespace: pod.metadata.namespace,
    controllerKind: controller?.kind ?? "",
    controllerName: controller?.name ?? "",
    health: podHealth(pod),
    ip: podAddress(pod),
    podContainers: pod.spec.containers.map((s) => s.name),
    node: pod.spec.nodeName,
  });
  if (exitCode !== undefined) c.exitCode = exitCode;
  const createdAt = ts(pod.metadata.creationTimestamp);
  if (createdAt) c.createdAt = createdAt;
  const startedAt = ts(pod.status.startTime);
  if (startedAt) c.startedAt = startedAt;
  if (state === ContainerState.COMPLETED || state === ContainerState.EXITED) {
    // The pod finished when its last container did.
    const finished = pod.status.containerStatuses
      .map((s) => s.state.terminated?.finishedAt)
      .filter((f): f is string => f !== undefined && millis(f) !== undefined)
      .sort((a, b) => millis(a)! - millis(b)!)
      .pop();
    const finishedAt = ts(finished);
    if (finishedAt) c.finishedAt = finishedAt;
  }
  return c;
}

/** The exit code of the pod's most recently ended container run before a restart (lastState). */
export function lastExitCode(pod: Pod): number | undefined {
  let best: { at: number; code: number } | undefined;
  for (const s of pod.status.containerStatuses) {
    const t = s.lastState.terminated;
    if (!t) continue;
    const at = millis(t.finishedAt) ?? 0;
    if (!best || at >= best.at) best = { at, code: t.exitCode };
  }
  return best?.code;
}
