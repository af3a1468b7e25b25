import { readFileSync, writeFileSync } from "node:fs";
import { DriverError, requirePid, type DriverTarget, type StandbyDriver } from "./standby-driver.js";
import { errorMessage } from "../../../lib/error-message.js";

/**
 * Freezes the instance's cgroup: cgroup v2 `cgroup.freeze` (1/0), or the v1 freezer's
 * `freezer.state` (FROZEN/THAWED), found from /proc/<pid>/cgroup (kernel docs: cgroup-v2.rst
 * "cgroup.freeze", cgroup-v1/freezer-subsystem.rst). The root cgroup cannot be frozen: an
 * instance must run in a cgroup of its own.
 */
export function createCgroupDriver(procRoot = "/proc", cgroupRoot = "/sys/fs/cgroup"): StandbyDriver {
  const locate = (target: DriverTarget): { file: string; freeze: string; thaw: string } => {
    const pid = requirePid(target, "cgroup");
    let text: string;
    try {
      text = readFileSync(`${procRoot}/${pid}/cgroup`, "utf8");
    } catch (e) {
      throw new DriverError(`cgroup driver: pid ${pid}: ${(e as NodeJS.ErrnoException).code ?? errorMessage(e)}`);
    }
    for (const line of text.split("\n")) {
      const [, controllers, path] = line.split(":");
      if (controllers === "freezer" && path) {
        if (path === "/") throw new DriverError(`cgroup driver: pid ${pid} is in the root freezer cgroup, which cannot be frozen; run it in a cgroup of its own`);
        return { file: `${cgroupRoot}/freezer${path}/freezer.state`, freeze: "FROZEN", thaw: "THAWED" };
      }
    }
    const v2 = text.split("\n").find((l) => l.startsWith("0::"));
    const path = v2?.slice(3);
    if (!path || path === "/") throw new DriverError(`cgroup driver: pid ${pid} is not in a cgroup of its own (${path ?? "no cgroup v2 entry"})`);
    return { file: `${cgroupRoot}${path}/cgroup.freeze`, freeze: "1", thaw: "0" };
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
