import { create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { ContainerStatsSchema, type ContainerStats } from "../../../gen/fleetlet/agent/v1/runtime_pb.js";
import { parseRfc3339Nano } from "../log-line-assembler.js";
import type { Pod } from "./kube-objects.js";
import { parseBytes, parseCpuCores, QuantityError } from "./kube-quantity.js";
import type { PodMetricsLookup } from "./pod-metrics-cache.js";
import { podInstanceId, podKey, RUNTIME_NAME } from "./pod-to-container.js";

// Fields metrics.k8s.io never has, with the reason a client sees.
const NEVER: string[] = [
  "cpu_usage_nsec: metrics.k8s.io reports a CPU rate, not a cumulative counter",
  "memory_usage_bytes: metrics.k8s.io reports the working set only",
  "net_rx_bytes: not in metrics.k8s.io",
  "net_tx_bytes: not in metrics.k8s.io",
  "block_read_bytes: not in metrics.k8s.io",
  "block_write_bytes: not in metrics.k8s.io",
  "pids: not in metrics.k8s.io",
];

/**
 * A pod's ContainerStats from its metrics.k8s.io sample and its spec: cpu_percent = cores × 100
 * (the metrics are already a rate over the metrics-server's window, so there is no previous
 * sample to difference), memory_working_set_bytes = the summed usage memory (what the kubelet
 * reports is the working set), memory_limit_bytes = the pod-level limit, or the containers'
 * limits summed — unlimited when any container has none. The rest is unset with its reason.
 */
export function podStats(pod: Pod, lookup: PodMetricsLookup): ContainerStats {
  const stats = create(ContainerStatsSchema, {
    runtime: RUNTIME_NAME,
    externalId: podKey(pod),
    name: pod.metadata.name,
    instanceId: podInstanceId(pod),
    timestamp: timestampNow(),
  });
  const unavailable = [...NEVER];
  const usage = lookup.metrics;
  if (lookup.unavailable || !usage) {
    const why = lookup.unavailable ?? "metrics.k8s.io has no sample for this pod (it lists running pods, about every 15 s)";
    unavailable.push(`cpu_percent: ${why}`, `memory_working_set_bytes: ${why}`);
  } else {
    const at = usage.timestamp ? parseRfc3339Nano(usage.timestamp) : undefined;
    if (at) stats.timestamp = at;
    try {
      stats.cpuPercent = usage.containers.reduce((sum, c) => sum + (c.cpu === undefined ? 0 : parseCpuCores(c.cpu)), 0) * 100;
    } catch (e) {
      if (!(e instanceof QuantityError)) throw e;
      unavailable.push(`cpu_percent: ${e.message}`);
    }
    try {
      stats.memoryWorkingSetBytes = usage.containers.reduce((sum, c) => sum + (c.memory === undefined ? 0n : parseBytes(c.memory)), 0n);
    } catch (e) {
      if (!(e instanceof QuantityError)) throw e;
      unavailable.push(`memory_working_set_bytes: ${e.message}`);
    }
  }
  try {
    const limit = memoryLimit(pod);
    if (limit === undefined) stats.memoryUnlimited = true;
    else stats.memoryLimitBytes = limit;
  } catch (e) {
    if (!(e instanceof QuantityError)) throw e;
    unavailable.push(`memory_limit_bytes: ${e.message}`);
  }
  stats.unavailable = unavailable;
  return stats;
}

/** The pod's memory limit in bytes; undefined = unlimited. Throws QuantityError. */
export function memoryLimit(pod: Pod): bigint | undefined {
  if (pod.spec.memoryLimit !== undefined) return parseBytes(pod.spec.memoryLimit);
  if (pod.spec.containers.length === 0) return undefined;
  let sum = 0n;
  for (const c of pod.spec.containers) {
    // One container without a limit can take all the node has: the pod is unlimited.
    if (c.memoryLimit === undefined) return undefined;
    sum += parseBytes(c.memoryLimit);
  }
  return sum;
}
