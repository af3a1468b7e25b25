import { accessSync, constants, existsSync, mkdirSync, openSync, closeSync, writeSync, readFileSync, unlinkSync } from "node:fs";
import { dirname, join } from "node:path";
import { errorMessage } from "./error-message.js";
import { readProcStat } from "./proc-stat-parser.js";

/**
 * Prepares a daemon's state directory: creates it, checks it is writable, and claims it with a
 * pid file so two daemons never write the same files. The file holds the pid and that process's
 * start time (/proc/<pid>/stat field 22) and is created exclusively (O_EXCL), so two daemons
 * starting together cannot both claim it. A file whose process is gone, or whose pid now belongs
 * to another process (pid reuse after kill -9 or a reboot), is stale and taken over.
 * Throws with a one-line reason otherwise.
 */
export function claimStateDir(dir: string, owner: string): { release(): void } {
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (e) {
    throw new Error(`state dir ${dir} is not usable: ${mkdirFailure(dir, e)}`);
  }
  try {
    accessSync(dir, constants.W_OK | constants.R_OK | constants.X_OK);
  } catch (e) {
    throw new Error(`state dir ${dir} is not usable: ${errorMessage(e)}`);
  }
  const pidFile = join(dir, `${owner}.pid`);
  const mine = `${process.pid} ${startTimeOf(process.pid) ?? "?"}\n`;
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = openSync(pidFile, "wx", 0o600);
      writeSync(fd, mine);
      closeSync(fd);
      return {
        release() {
          try {
            if (readFileSync(pidFile, "utf8") === mine) unlinkSync(pidFile);
          } catch {
            // already gone
          }
        },
      };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw new Error(`state dir ${dir} is not usable: ${errorMessage(e)}`);
    }
    const holder = readHolder(pidFile);
    if (holder && holder.pid !== process.pid && startTimeOf(holder.pid) === holder.startTime && holder.startTime !== undefined) {
      throw new Error(`state dir ${dir} is in use by another ${owner} (pid ${holder.pid})`);
    }
    // Stale: its process is gone or the pid is someone else's now.
    try {
      unlinkSync(pidFile);
    } catch {
      // removed meanwhile by its owner: try again
    }
  }
  throw new Error(`state dir ${dir}: could not claim ${pidFile} (another ${owner} starting at the same time?)`);
}

/**
 * Why a recursive mkdir failed. Node's recursive mkdir reports ENOENT for the path when a
 * missing parent cannot be created (a read-only filesystem, no permission), which reads as "a
 * typo in the path": retry the first missing component alone to get the kernel's own reason
 * (EROFS, EACCES, ENOTDIR, ENOSPC) and name the directory it concerns.
 */
function mkdirFailure(dir: string, error: unknown): string {
  if ((error as NodeJS.ErrnoException).code !== "ENOENT") return errorMessage(error);
  let missing = dir;
  while (dirname(missing) !== missing && !existsSync(dirname(missing))) missing = dirname(missing);
  try {
    mkdirSync(missing, { mode: 0o700 });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "EROFS") return `cannot create ${missing}: ${dirname(missing)} is on a read-only filesystem (EROFS)`;
    if (code === "EACCES" || code === "EPERM") return `cannot create ${missing}: no permission to write ${dirname(missing)} (${code})`;
    return `cannot create ${missing}: ${errorMessage(e)}`;
  }
  return errorMessage(error);
}

function readHolder(pidFile: string): { pid: number; startTime: string | undefined } | undefined {
  try {
    const [pid, startTime] = readFileSync(pidFile, "utf8").trim().split(/\s+/);
    const n = Number(pid);
    return Number.isInteger(n) && n > 0 ? { pid: n, startTime: startTime === "?" ? undefined : startTime } : undefined;
  } catch {
    return undefined;
  }
}

/** The start time (/proc/<pid>/stat field 22) as written in pid files, or undefined. */
function startTimeOf(pid: number): string | undefined {
  try {
    return readProcStat(pid)?.startTimeTicks.toString();
  } catch {
    return undefined;
  }
}
