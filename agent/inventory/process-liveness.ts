import { InstanceKind, InstanceState } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import type { Logger } from "../../lib/rpc/logger.js";
import { readProcStat, type ProcStat } from "../../lib/proc-stat-parser.js";
import type { InstanceRegistry } from "./instance-registry.js";
import { errorMessage } from "../../lib/error-message.js";

export const LIVENESS_INTERVAL_MS = 2000;

/**
 * metering.md "RUNNING, process found gone (pid exited or reused)": every couple of seconds,
 * each RUNNING or STANDBY instance with a pid is checked against /proc — gone, or the pid now
 * belongs to a process with another start time — and moved to STOPPED with cause "crash" (a
 * `stop-crash` entry; a STANDBY one's compute had already stopped). A STANDBY instance must be
 * checked too: its pid, reused, would otherwise be woken with SIGCONT (security.md). Containers are left to their runtime (it reports their exit with its code). One
 * stat read per instance; nothing when nothing runs.
 */
export function watchProcessLiveness(registry: InstanceRegistry, logger: Logger, procRoot = "/proc", intervalMs = LIVENESS_INTERVAL_MS): () => void {
  let running = false;
  const check = async () => {
    if (running) return;
    running = true;
    try {
      for (const i of registry.list()) {
        if ((i.state !== InstanceState.RUNNING && i.state !== InstanceState.STANDBY) || i.pid === undefined || i.kind === InstanceKind.CONTAINER) continue;
        if (isAlive(procRoot, i.pid, i.pidStartTime)) continue;
        logger.warn({ instance_id: i.id, instance_pid: i.pid, state: InstanceState[i.state] }, "process of an instance is gone (exited, or its pid reused): STOPPED (stop-crash)");
        try {
          await registry.setState(i.id, InstanceState.STOPPED, "crash");
        } catch (e) {
          logger.error({ instance_id: i.id, err: errorMessage(e) }, "could not record the crash");
        }
      }
    } finally {
      running = false;
    }
  };
  const timer = setInterval(() => void check(), intervalMs);
  timer.unref();
  return () => clearInterval(timer);
}

/** The pid exists and, when its start time is known, is still the same process. */
export function isAlive(procRoot: string, pid: number, startTime: bigint | undefined): boolean {
  let stat: ProcStat | undefined;
  try {
    stat = readProcStat(pid, procRoot);
  } catch {
    return true; // unreadable content is not proof of death
  }
  return stat !== undefined && (startTime === undefined || stat.startTimeTicks === startTime);
}
