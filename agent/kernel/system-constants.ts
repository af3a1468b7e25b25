import { execFileSync } from "node:child_process";

/**
 * Kernel constants the /proc readers depend on, read once at start from the system
 * (getconf(1) → sysconf(3)): CLK_TCK is the unit of utime/stime/starttime in /proc/<pid>/stat,
 * and /proc/<pid>/statm counts pages of the running kernel's page size (4, 16 or 64 KiB).
 */
export interface SystemConstants {
  clockTicksPerSecond: number;
  pageSizeBytes: number;
}

let cached: SystemConstants | undefined;

export function systemConstants(): SystemConstants {
  cached ??= {
    clockTicksPerSecond: getconf("CLK_TCK", 100),
    pageSizeBytes: getconf("PAGESIZE", 4096),
  };
  return cached;
}

function getconf(name: string, fallback: number): number {
  try {
    const out = execFileSync("getconf", [name], { encoding: "utf8", timeout: 2000 }).trim();
    const n = Number(out);
    return Number.isInteger(n) && n > 0 ? n : fallback;
  } catch {
    return fallback;
  }
}
