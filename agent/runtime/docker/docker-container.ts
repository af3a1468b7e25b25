import { create } from "@bufbuild/protobuf";
import {
  ContainerHealthSchema,
  ContainerSchema,
  ContainerState,
  HealthStatus,
  type Container,
  type ContainerHealth,
} from "../../../gen/fleetlet/agent/v1/runtime_pb.js";
import type { ContainerLimits } from "../container-runtime.js";
import type { DockerInspect } from "./docker-api-types.js";
import { timestampFromDockerTime } from "./docker-time.js";

/** Container inspect JSON (GET /containers/{id}/json) → the proto Container (runtime.md fields). */

export const DOCKER_RUNTIME = "docker";

const COMPOSE_PROJECT_LABEL = "com.docker.compose.project";
const COMPOSE_SERVICE_LABEL = "com.docker.compose.service";

/** The inventory instance id of a Docker container: "docker-" + the first 12 hex of its id. */
export function dockerInstanceId(fullId: string): string {
  return `docker-${fullId.slice(0, 12)}`;
}

/** Docker's name without its leading "/". */
export function dockerName(name: string | undefined): string {
  return (name ?? "").replace(/^\//, "");
}

const STATES: Record<string, ContainerState> = {
  created: ContainerState.CREATED,
  running: ContainerState.RUNNING,
  paused: ContainerState.PAUSED,
  restarting: ContainerState.RESTARTING,
  removing: ContainerState.REMOVING,
  exited: ContainerState.EXITED,
  dead: ContainerState.DEAD,
};

/** State.Status → ContainerState; the booleans for engines that leave Status out. */
export function dockerState(state: DockerInspect["State"]): ContainerState {
  const byStatus = STATES[state?.Status ?? ""];
  if (byStatus !== undefined) return byStatus;
  if (!state) return ContainerState.UNSPECIFIED;
  if (state.Dead) return ContainerState.DEAD;
  if (state.Paused) return ContainerState.PAUSED;
  if (state.Restarting) return ContainerState.RESTARTING;
  if (state.Running) return ContainerState.RUNNING;
  return ContainerState.UNSPECIFIED;
}

export function inspectToContainer(inspect: DockerInspect): Container {
  const state = dockerState(inspect.State);
  const labels = { ...(inspect.Config?.Labels ?? {}) };
  const exited = state === ContainerState.EXITED || state === ContainerState.DEAD;
  // The process exists while running and while paused (frozen) or restarting with a pid.
  const pid = inspect.State?.Pid;
  return create(ContainerSchema, {
    id: dockerInstanceId(inspect.Id),
    runtime: DOCKER_RUNTIME,
    externalId: inspect.Id,
    name: dockerName(inspect.Name),
    image: inspect.Config?.Image || inspect.Image || "",
    state,
    // State.ExitCode is 0 for a container that never ran: only meaningful once it has exited.
    exitCode: exited ? (inspect.State?.ExitCode ?? undefined) : undefined,
    oomKilled: inspect.State?.OOMKilled === true,
    createdAt: timestampFromDockerTime(inspect.Created),
    startedAt: timestampFromDockerTime(inspect.State?.StartedAt),
    finishedAt: timestampFromDockerTime(inspect.State?.FinishedAt),
    restartCount: inspect.RestartCount ?? 0,
    labels,
    composeProject: labels[COMPOSE_PROJECT_LABEL] ?? "",
    composeService: labels[COMPOSE_SERVICE_LABEL] ?? "",
    pid: pid !== undefined && pid > 0 ? pid : undefined,
    health: inspectToHealth(inspect),
    tty: inspect.Config?.Tty === true,
    ip: containerIp(inspect),
  });
}

/**
 * The legacy top-level IPAddress (default bridge), else the first network's address by network
 * name (sorted, so the answer does not depend on JSON key order). "" with --network none.
 */
function containerIp(inspect: DockerInspect): string {
  const settings = inspect.NetworkSettings;
  if (settings?.IPAddress) return settings.IPAddress;
  const networks = settings?.Networks ?? {};
  for (const name of Object.keys(networks).sort()) {
    const ip = networks[name]?.IPAddress;
    if (ip) return ip;
  }
  return "";
}

const HEALTH: Record<string, HealthStatus> = {
  starting: HealthStatus.STARTING,
  healthy: HealthStatus.HEALTHY,
  unhealthy: HealthStatus.UNHEALTHY,
};

/**
 * Config.Healthcheck (the image's merged with the run options) says whether there is one:
 * none, an empty Test, or ["NONE"] (`--no-healthcheck`, or an image's HEALTHCHECK NONE) mean no
 * healthcheck — status NONE, never "unhealthy" for a container nobody probes. State.Health has
 * the probe results; a container with a healthcheck that has not been probed yet (created,
 * not started) has no State.Health: STARTING while running, else UNSPECIFIED.
 */
export function inspectToHealth(inspect: DockerInspect): ContainerHealth {
  const test = inspect.Config?.Healthcheck?.Test ?? [];
  const hasHealthcheck = test.length > 0 && test[0] !== "NONE";
  if (!hasHealthcheck) {
    return create(ContainerHealthSchema, { hasHealthcheck: false, status: HealthStatus.NONE });
  }
  const health = inspect.State?.Health;
  if (!health) {
    const running = dockerState(inspect.State) === ContainerState.RUNNING;
    return create(ContainerHealthSchema, {
      hasHealthcheck: true,
      status: running ? HealthStatus.STARTING : HealthStatus.UNSPECIFIED,
    });
  }
  const log = health.Log ?? [];
  const last = log.length > 0 ? log[log.length - 1] : undefined;
  return create(ContainerHealthSchema, {
    hasHealthcheck: true,
    status: HEALTH[health.Status ?? ""] ?? HealthStatus.UNSPECIFIED,
    failingStreak: health.FailingStreak ?? 0,
    lastOutput: last?.Output ?? "",
    lastExitCode: last?.ExitCode,
    lastProbeAt: timestampFromDockerTime(last?.End) ?? timestampFromDockerTime(last?.Start),
  });
}

/**
 * HostConfig → the limits the container runs under: CPUs from NanoCpus (`--cpus`), else CFS
 * quota / period (`--cpu-quota`, period 0 = the kernel's 100 ms); memory from Memory (`-m`).
 * 0 or a negative quota is "no limit". (`--cpuset-cpus` pins CPUs without limiting how much of
 * them is used; it is not a limit here.)
 */
export function dockerLimits(hostConfig: DockerInspect["HostConfig"]): ContainerLimits {
  const limits: ContainerLimits = {};
  const nano = hostConfig?.NanoCpus ?? 0;
  const quota = hostConfig?.CpuQuota ?? 0;
  if (nano > 0) limits.cpuCores = nano / 1e9;
  else if (quota > 0) limits.cpuCores = quota / ((hostConfig?.CpuPeriod ?? 0) > 0 ? hostConfig!.CpuPeriod! : DEFAULT_CFS_PERIOD_US);
  const memory = hostConfig?.Memory ?? 0;
  if (memory > 0) limits.memoryBytes = BigInt(memory);
  return limits;
}

const DEFAULT_CFS_PERIOD_US = 100_000;

/** The Docker health status word of an event ("healthy") for a HealthStatus, "" otherwise. */
export function healthStatusWord(status: HealthStatus): string {
  switch (status) {
    case HealthStatus.STARTING:
      return "starting";
    case HealthStatus.HEALTHY:
      return "healthy";
    case HealthStatus.UNHEALTHY:
      return "unhealthy";
    default:
      return "";
  }
}
