import { DriverError, identify, type DriverTarget, type StandbyDriver } from "./standby-driver.js";
import { errorMessage } from "../../../lib/error-message.js";
import type { PidPolicy } from "../../inventory/pid-ownership.js";

/**
 * SIGSTOP / SIGCONT. The process is re-identified first (its recorded start time, the ownership
 * rules). A process that registration saw lead its own process group, and still does, is stopped
 * as a group (its children, e.g. a hypervisor's helpers, stop with it); otherwise just the pid,
 * never a group it merely belongs to (that could be the agent's own). Never pid <= 1, never -1.
 *
 * Node has no pidfd API: between the start-time read and kill() the process could exit and its
 * pid be handed out again. That window is a few microseconds (two syscalls), against seconds
 * before this check existed; a pidfd (pidfd_open + pidfd_send_signal) would close it.
 */
export function createSignalDriver(policy: PidPolicy = { procRoot: "/proc" }): StandbyDriver {
  const send = (target: DriverTarget, signal: "SIGSTOP" | "SIGCONT") => {
    const facts = identify(target, policy, "signal");
    const pid = facts.pid;
    const group = target.ownProcessGroup === true && facts.processGroup === pid;
    // identify() already refused these; kill(0) / kill(-1) would reach the agent's group or everything.
    if (!(pid > 1)) throw new DriverError(`signal driver: refusing pid ${pid}`);
    try {
      process.kill(group ? -pid : pid, signal);
    } catch (e) {
      throw new DriverError(`signal driver: ${signal} to ${group ? "group " : ""}${pid}: ${(e as NodeJS.ErrnoException).code ?? errorMessage(e)}`);
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
