import { readFileSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { HostInfoSchema, type HostInfo } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { fleetletVersion } from "../../lib/fleetlet-version.js";

export interface HostInfoSource {
  procRoot: string;
  /** --host-label k=v. */
  labels: Record<string, string>;
  incarnation: string;
  /** Whether auto-standby can see this host's traffic, and why not (the standby controller). */
  standby: () => { supported: boolean; reason?: string };
}

/**
 * What the aggregator's policies need of this host (InventoryService.GetHostInfo): CPUs online
 * (the machine's, not a cgroup quota: what instances are allocated against), MemTotal, kernel,
 * the agent's version, its labels and whether standby can work here. Read at every call: the
 * call is rare (once per aggregator relist) and the answer must be current.
 */
export function readHostInfo(source: HostInfoSource): HostInfo {
  const standby = source.standby();
  return create(HostInfoSchema, {
    hostname: os.hostname(),
    cpuCount: onlineCpus(source.procRoot),
    memoryBytes: memTotal(source.procRoot),
    kernel: os.release(),
    agentVersion: fleetletVersion(),
    labels: source.labels,
    incarnation: source.incarnation,
    standbySupported: standby.supported,
    standbyUnsupportedReason: standby.supported ? "" : (standby.reason ?? ""),
  });
}

/** "0-3,6" from /sys/devices/system/cpu/online; os.cpus() when it cannot be read. */
function onlineCpus(procRoot: string): number {
  try {
    const sys = join(procRoot, "..", "sys", "devices", "system", "cpu", "online");
    const text = readFileSync(sys, "latin1").trim();
    let n = 0;
    for (const part of text.split(",")) {
      const [a, b] = part.split("-").map(Number);
      if (a === undefined || Number.isNaN(a)) continue;
      n += b === undefined ? 1 : b - a + 1;
    }
    if (n > 0) return n;
  } catch {
    // fall through
  }
  return os.cpus().length;
}

/** MemTotal of /proc/meminfo in bytes; 0 when unreadable (facts then say so: no memory known). */
function memTotal(procRoot: string): bigint {
  try {
    const m = /^MemTotal:\s+(\d+) kB$/m.exec(readFileSync(join(procRoot, "meminfo"), "latin1"));
    return m ? BigInt(m[1]!) * 1024n : 0n;
  } catch {
    return 0n;
  }
}
