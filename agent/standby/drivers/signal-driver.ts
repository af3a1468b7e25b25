import { readFileSync } from "node:fs";
import { DriverError, requirePid, type DriverTarget, type StandbyDriver } from "./standby-driver.js";

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
      throw new DriverError(`signal driver: ${signal} to ${leader ? "group " : ""}${pid}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
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

/** Field 5 (pgrp) of /proc/<pid>/stat, after the last ')'. */
function processGroupOf(procRoot: string, pid: number): number | undefined {
  try {
    const line = readFileSync(`${procRoot}/${pid}/stat`, "latin1");
    return Number(line.slice(line.lastIndexOf(")") + 1).trim().split(/\s+/)[2]);
  } catch {
    return undefined;
  }
}
