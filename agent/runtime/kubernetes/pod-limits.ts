import type { ContainerLimits } from "../container-runtime.js";
import type { Pod } from "./kube-objects.js";
import { parseCpuCores, QuantityError } from "./kube-quantity.js";
import { memoryLimit } from "./pod-stats.js";

/**
 * A pod's CPU and memory limits (resources.limits), what the inventory meters as the pod's
 * shape: the pod-level limit when set (a newer field), else the sum over its containers — but
 * one container without a limit can take all the node has, so then the pod has none. Init
 * containers run before the others and are not counted. A quantity the API server would not
 * have accepted is no limit rather than a guess.
 */
export function podLimits(pod: Pod): ContainerLimits {
  const limits: ContainerLimits = {};
  const cpu = orUnset(() => cpuLimitCores(pod));
  if (cpu !== undefined && cpu > 0) limits.cpuCores = cpu;
  const memory = orUnset(() => memoryLimit(pod));
  if (memory !== undefined && memory > 0n) limits.memoryBytes = memory;
  return limits;
}

/** The pod's CPU limit in cores; undefined = unlimited. Throws QuantityError. */
export function cpuLimitCores(pod: Pod): number | undefined {
  if (pod.spec.cpuLimit !== undefined) return parseCpuCores(pod.spec.cpuLimit);
  if (pod.spec.containers.length === 0) return undefined;
  let sum = 0;
  for (const c of pod.spec.containers) {
    if (c.cpuLimit === undefined) return undefined;
    sum += parseCpuCores(c.cpuLimit);
  }
  return sum;
}

function orUnset<T>(read: () => T | undefined): T | undefined {
  try {
    return read();
  } catch (e) {
    if (e instanceof QuantityError) return undefined;
    throw e;
  }
}
