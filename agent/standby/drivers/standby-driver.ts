/** What a driver gets to act on: the registry's view of the instance. */
export interface DriverTarget {
  id: string;
  pid: number | undefined;
  ip: string;
  kind: number;
  /** "docker/<container id>" for containers (the docker driver acts through the runtime). */
  runtimeRef?: string;
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
