import { PidGone, PidRefusal, PidReused, reidentify, type PidPolicy, type ProcessFacts } from "../../inventory/pid-ownership.js";

/** What a driver gets to act on: the registry's view of the instance. */
export interface DriverTarget {
  id: string;
  pid: number | undefined;
  ip: string;
  kind: number;
  /** "docker/<container id>" for containers (the docker driver acts through the runtime). */
  runtimeRef?: string;
  /** Where the instance came from (InstanceSource): the docker driver acts on RUNTIME ones only. */
  source?: number;
  /** The start time recorded for the pid: the process's identity, re-checked before acting. */
  pidStartTime?: bigint;
  /**
   * Registration saw the pid lead its own process group (with this start time): only then may a
   * signal go to the group. Never inferred at the moment of acting.
   */
  ownProcessGroup?: boolean;
}

/** How an instance is put on standby and woken (standby.md "Drivers"). */
export interface StandbyDriver {
  readonly name: string;
  standby(target: DriverTarget): Promise<void>;
  wake(target: DriverTarget): Promise<void>;
}

export class DriverError extends Error {
  override name = "DriverError";
}

export function requirePid(target: DriverTarget, driver: string): number {
  if (target.pid === undefined) throw new DriverError(`${driver} driver: instance ${target.id} has no pid`);
  return target.pid;
}

/**
 * The instance's process, re-identified immediately before acting (security.md "The host
 * itself"): its pid must still carry the recorded start time and pass the ownership rules, or
 * the driver refuses. A reused pid's message starts with "pid reused" (the standby status's
 * last_error shows it).
 */
export function identify(target: DriverTarget, policy: PidPolicy, driver: string): ProcessFacts {
  const pid = requirePid(target, driver);
  try {
    return reidentify(pid, target.pidStartTime, policy);
  } catch (e) {
    if (e instanceof PidReused || e instanceof PidGone || e instanceof PidRefusal) throw new DriverError(`${driver} driver: instance ${target.id}: ${e.message}`);
    throw new DriverError(`${driver} driver: instance ${target.id}: pid ${pid}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}
