import { writeFileSync } from "node:fs";
import { DriverError, identify, type DriverTarget, type StandbyDriver } from "./standby-driver.js";
import { errorMessage } from "../../../lib/error-message.js";
import { cgroupWithin, readProcessFacts, type PidPolicy } from "../../inventory/pid-ownership.js";

export interface CgroupDriverOptions {
  pid: PidPolicy;
  /** Where the cgroup hierarchy is mounted (default /sys/fs/cgroup). */
  mount?: string;
  /**
   * --standby-cgroup-root: only cgroups strictly below this one are frozen. Unset: any cgroup
   * but the root, one holding init.scope, the agent itself, or pid 1.
   */
  freezeRoot?: string;
}

/**
 * Freezes the instance's cgroup: cgroup v2 `cgroup.freeze` (1/0), or the v1 freezer's
 * `freezer.state` (FROZEN/THAWED), found from /proc/<pid>/cgroup (kernel docs: cgroup-v2.rst
 * "cgroup.freeze", cgroup-v1/freezer-subsystem.rst). The process is re-identified first, and a
 * cgroup is frozen only when nothing of the host's own runs in it (security.md "The host itself").
 */
export function createCgroupDriver(options: CgroupDriverOptions = { pid: { procRoot: "/proc" } }): StandbyDriver {
  const mount = options.mount ?? "/sys/fs/cgroup";
  const locate = (target: DriverTarget): { file: string; freeze: string; thaw: string } => {
    const facts = identify(target, options.pid, "cgroup");
    const path = facts.cgroup;
    const refuse = (why: string) => new DriverError(`cgroup driver: pid ${facts.pid}: cgroup ${path} ${why}`);
    if (path === "/" || path === "") throw refuse("is the root cgroup, which cannot be frozen; run it in a cgroup of its own");
    if (options.freezeRoot !== undefined) {
      if (path === options.freezeRoot || !cgroupWithin(path, options.freezeRoot)) throw refuse(`is not below --standby-cgroup-root ${options.freezeRoot}`);
    } else {
      if (path.split("/").includes("init.scope")) throw refuse("is init.scope");
      for (const [who, pid] of [["the agent itself", options.pid.selfPid ?? process.pid], ["pid 1", 1]] as const) {
        const other = readProcessFacts(options.pid.procRoot, pid);
        if (other && other.freezerV1 === facts.freezerV1 && cgroupWithin(other.cgroup, path)) throw refuse(`also holds ${who} (${other.cgroup})`);
      }
    }
    return facts.freezerV1 ? { file: `${mount}/freezer${path}/freezer.state`, freeze: "FROZEN", thaw: "THAWED" } : { file: `${mount}${path}/cgroup.freeze`, freeze: "1", thaw: "0" };
  };
  const write = (file: string, value: string) => {
    try {
      writeFileSync(file, value);
    } catch (e) {
      throw new DriverError(`cgroup driver: ${file}: ${(e as NodeJS.ErrnoException).code ?? errorMessage(e)}`);
    }
  };
  return {
    name: "cgroup",
    async standby(target) {
      const c = locate(target);
      write(c.file, c.freeze);
    },
    async wake(target) {
      const c = locate(target);
      write(c.file, c.thaw);
    },
  };
}
