import { DriverError, requirePid, type DriverTarget, type StandbyDriver } from "./standby-driver.js";
import { errorMessage } from "../../../lib/error-message.js";
import { readProcStat } from "../../../lib/proc-stat-parser.js";

/**
 * SIGSTOP / SIGCONT. A process that leads its own process group is stopped as a group (its
 * children, e.g. a hypervisor's helpers, stop with it); otherwise just the process, never a
 * group it merely belongs to (that could be the agent's own).
 */
export function createSignalDriver(procRoot = "/proc"): StandbyDriver {
  const send = (target: DriverTarget, signal: "SIGSTOP" | "SIGCONT") => {
    const pid = requirePid(target, "signal");
    const leader = processGroupOf(procRoot, pid) === pid;
    try {
      process.kill(leader ? -pid : pid, signal);
    } catch (e) {
      throw new DriverError(`signal driver: ${signal} to ${leader ? "group " : ""}${pid}: ${(e as NodeJS.ErrnoException).code ?? errorMessage(e)}`);
    }
  };
  return {
    name: "signal",
    async standby(target) {
      send(target, "SIGSTOP");
    },
    async wake(target) {
      send(target, "SIGCONT");
    },
  };
}

/** The process group of `pid`, or undefined when it cannot be read (gone). */
function processGroupOf(procRoot: string, pid: number): number | undefined {
  try {
    return readProcStat(pid, procRoot)?.processGroup;
  } catch {
    return undefined;
  }
}
