import { create } from "@bufbuild/protobuf";
import { ContainerStatsSchema, type ContainerStats } from "../../../gen/fleetlet/agent/v1/runtime_pb.js";
import type { DockerStatsJson } from "./docker-api-types.js";
import { DOCKER_RUNTIME } from "./docker-container.js";
import { parseDockerTime, timestampFromNs } from "./docker-time.js";

/**
 * Stats JSON (GET /containers/{id}/stats?stream=false) → ContainerStats (runtime.md "Stats").
 * Pure. The CPU baseline is the engine's own previous read (`precpu_stats`, ~1 s before `read`)
 * when the answer has one — the runtime asks for it (one-shot=false) when it has no earlier
 * sample of this run, as `docker stats --no-stream` does — else this agent's previous sample of
 * the same container, passed in and handed back (a one-shot answer's `precpu_stats` is empty:
 * the engine skips the second read that would fill it). Anything the engine did not report is
 * unset with a reason in `unavailable` — never -1, never a 0 that would read as a measurement.
 */

/** What the next sample of the same container needs to compute CPU%. */
export interface DockerCpuSample {
  /** The container's run (its StartedAt): a restart starts new counters. */
  runId: string;
  containerNs: number;
  systemNs: number;
}

export interface DockerStatsInput {
  raw: DockerStatsJson;
  externalId: string;
  name: string;
  instanceId: string;
  /** StartedAt of the run being sampled. */
  runId: string;
  previous?: DockerCpuSample;
  /** HostConfig.Memory: 0 = no limit configured. */
  configuredMemoryBytes?: number;
  /** The engine host's memory (/info MemTotal): cgroup v1 reports it as the "limit" of an unlimited container. */
  hostMemoryBytes?: number;
}

/**
 * A limit at or above this is the kernel's "no limit" (cgroup v1 prints 9223372036854771712, a
 * page-rounded 2^63; v2 "max", which the engine turns into a huge number or the host's memory).
 */
export const UNLIMITED_MEMORY_BYTES = 2 ** 62;

export function dockerStatsToContainerStats(input: DockerStatsInput): { stats: ContainerStats; sample?: DockerCpuSample } {
  const { raw } = input;
  const unavailable: string[] = [];
  const stats = create(ContainerStatsSchema, {
    runtime: DOCKER_RUNTIME,
    externalId: input.externalId,
    name: input.name,
    instanceId: input.instanceId,
  });
  const readNs = parseDockerTime(raw.read);
  if (readNs === undefined) {
    // The engine answers a container that is not running with zero time and empty sections.
    for (const f of ["cpu_percent", "cpu_usage_nsec", "memory_usage_bytes", "memory_working_set_bytes", "memory_limit_bytes", "net_rx_bytes", "net_tx_bytes", "block_read_bytes", "block_write_bytes", "pids"]) {
      unavailable.push(`${f}: container is not running`);
    }
    stats.unavailable = unavailable;
    return { stats };
  }
  stats.timestamp = timestampFromNs(readNs);

  // CPU
  const cpu = raw.cpu_stats;
  const containerNs = cpu?.cpu_usage?.total_usage;
  const systemNs = cpu?.system_cpu_usage;
  const onlineCpus = cpu?.online_cpus || cpu?.cpu_usage?.percpu_usage?.length || undefined;
  let sample: DockerCpuSample | undefined;
  if (containerNs === undefined) {
    unavailable.push("cpu_usage_nsec: not reported by the engine", "cpu_percent: cpu usage not reported by the engine");
  } else {
    stats.cpuUsageNsec = toUint64(containerNs);
    if (systemNs === undefined) {
      unavailable.push("cpu_percent: system_cpu_usage not reported by the engine");
    } else {
      sample = { runId: input.runId, containerNs, systemNs };
      // The engine's baseline is the same run by construction (one call) and the more recent.
      const baseline = engineBaseline(raw, input.runId) ?? input.previous;
      const reason = cpuPercentUnavailable(baseline, sample, onlineCpus);
      if (reason) unavailable.push(`cpu_percent: ${reason}`);
      else {
        const prev = baseline!;
        stats.cpuPercent = ((containerNs - prev.containerNs) / (systemNs - prev.systemNs)) * onlineCpus! * 100;
      }
    }
  }

  // Memory
  const memory = raw.memory_stats;
  const usage = memory?.usage;
  if (usage === undefined) {
    unavailable.push("memory_usage_bytes: not reported by the engine", "memory_working_set_bytes: memory usage not reported by the engine");
  } else {
    stats.memoryUsageBytes = toUint64(usage);
    // cgroup v1 has both; its total_inactive_file is the hierarchical one, like usage.
    const inactive = memory?.stats?.total_inactive_file ?? memory?.stats?.inactive_file;
    if (inactive === undefined) unavailable.push("memory_working_set_bytes: inactive_file not reported by the engine");
    else stats.memoryWorkingSetBytes = toUint64(Math.max(0, usage - inactive));
  }
  const limit = memory?.limit;
  if (limit === undefined || limit <= 0) {
    unavailable.push("memory_limit_bytes: not reported by the engine");
  } else if (
    limit >= UNLIMITED_MEMORY_BYTES ||
    (input.configuredMemoryBytes === 0 && input.hostMemoryBytes !== undefined && limit >= input.hostMemoryBytes)
  ) {
    stats.memoryUnlimited = true;
  } else {
    stats.memoryLimitBytes = toUint64(limit);
  }

  // Network: summed over the container's interfaces; --network none has none.
  const networks = Object.values(raw.networks ?? {});
  if (networks.length === 0) {
    unavailable.push("net_rx_bytes: container has no network interface", "net_tx_bytes: container has no network interface");
  } else {
    stats.netRxBytes = toUint64(networks.reduce((sum, n) => sum + (n.rx_bytes ?? 0), 0));
    stats.netTxBytes = toUint64(networks.reduce((sum, n) => sum + (n.tx_bytes ?? 0), 0));
  }

  // Block I/O: cgroup v1 says "Read"/"Write", v2 "read"/"write". An empty list is a container
  // that did no block I/O (0); a null list is not reported.
  const blkio = raw.blkio_stats?.io_service_bytes_recursive;
  if (!Array.isArray(blkio)) {
    unavailable.push("block_read_bytes: not reported by the engine", "block_write_bytes: not reported by the engine");
  } else {
    let read = 0;
    let write = 0;
    for (const entry of blkio) {
      const op = entry.op?.toLowerCase();
      if (op === "read") read += entry.value ?? 0;
      else if (op === "write") write += entry.value ?? 0;
    }
    stats.blockReadBytes = toUint64(read);
    stats.blockWriteBytes = toUint64(write);
  }

  const pids = raw.pids_stats?.current;
  if (pids === undefined) unavailable.push("pids: not reported by the engine");
  else stats.pids = toUint64(pids);

  stats.unavailable = unavailable;
  return { stats, sample };
}

/**
 * The engine's previous read of this container (`precpu_stats`), when the answer carries one: a
 * one-shot answer has zero counters and no system_cpu_usage there, which is no baseline.
 */
function engineBaseline(raw: DockerStatsJson, runId: string): DockerCpuSample | undefined {
  const pre = raw.precpu_stats;
  const containerNs = pre?.cpu_usage?.total_usage;
  const systemNs = pre?.system_cpu_usage;
  if (containerNs === undefined || systemNs === undefined || systemNs <= 0) return undefined;
  return { runId, containerNs, systemNs };
}

/** Why CPU% cannot be computed from these two samples, or undefined when it can. */
function cpuPercentUnavailable(previous: DockerCpuSample | undefined, current: DockerCpuSample, onlineCpus: number | undefined): string | undefined {
  if (!previous) return "first sample of this container and no previous read from the engine (CPU% needs two)";
  if (previous.runId !== current.runId) return "container restarted since the previous sample";
  if (current.containerNs < previous.containerNs || current.systemNs < previous.systemNs) return "counter went down since the previous sample (restart)";
  if (current.systemNs === previous.systemNs) return "no time passed since the previous sample";
  if (!onlineCpus) return "online_cpus not reported by the engine";
  return undefined;
}

function toUint64(value: number): bigint {
  return BigInt(Math.max(0, Math.round(value)));
}
