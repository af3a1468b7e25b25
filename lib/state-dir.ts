import { accessSync, chmodSync, constants, existsSync, lstatSync, mkdirSync, openSync, closeSync, readdirSync, statSync, writeSync, readFileSync, unlinkSync, type Stats } from "node:fs";
import { dirname, join, resolve, sep } from "node:path";
import { PRIVATE_DIR_MODE, PRIVATE_FILE_MODE } from "./private-file.js";
import { errorMessage } from "./error-message.js";
import { readProcStat } from "./proc-stat-parser.js";

/**
 * Prepares a daemon's state directory: creates it, checks it is writable, and claims it with a
 * pid file so two daemons never write the same files. The file holds the pid and that process's
 * start time (/proc/<pid>/stat field 22) and is created exclusively (O_EXCL), so two daemons
 * starting together cannot both claim it. A file whose process is gone, or whose pid now belongs
 * to another process (pid reuse after kill -9 or a reboot), is stale and taken over.
 * Throws with a one-line reason otherwise.
 * Before anything is read, the directory and everything in it are checked (checkStateDirSafety):
 * `onTightened` hears of each path narrowed to 0700/0600.
 */
export function claimStateDir(dir: string, owner: string, onTightened?: (path: string, from: number, to: number) => void): { release(): void } {
  checkPathComponents(dir);
  try {
    mkdirSync(dir, { recursive: true, mode: PRIVATE_DIR_MODE });
  } catch (e) {
    throw new Error(`state dir ${dir} is not usable: ${mkdirFailure(dir, e)}`);
  }
  checkStateDirSafety(dir, onTightened);
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

/** "0o755" style, as chmod takes it. */
function octal(mode: number): string {
  return `0${(mode & 0o7777).toString(8)}`;
}

/**
 * Refuses a state dir reached through a symlink owned by another user (not us, not root): such a
 * user could point it, and everything we write, anywhere (security.md "State on disk"). Each
 * component of the path as given is lstat'ed from the root down; missing ones are created 0700
 * by the caller.
 */
function checkPathComponents(dir: string): void {
  const me = process.geteuid?.();
  const parts = resolve(dir).split(sep).filter((p) => p !== "");
  let path = "";
  for (const part of parts) {
    path += `${sep}${part}`;
    let st: Stats;
    try {
      st = lstatSync(path);
    } catch {
      return; // missing from here on: created by mkdir, by us
    }
    if (st.isSymbolicLink() && me !== undefined && st.uid !== me && st.uid !== 0) {
      throw new Error(`state dir ${dir}: ${path} is a symlink owned by uid ${st.uid}, not by this user (uid ${me}) or root; refusing to follow it`);
    }
  }
}

/**
 * The state dir and everything in it must be ours and writable by nobody else: a file another
 * user can write (a ledger, a registry) is one they can forge. Refused, with a one-line error
 * naming the path and its mode: anything writable by group or others, anything owned by another
 * user, a symlink owned by another user. Readable by group or others (0755 / 0644, what earlier
 * versions created) is narrowed to 0700 / 0600 in place, since the files are ours, and reported.
 */
export function checkStateDirSafety(dir: string, onTightened?: (path: string, from: number, to: number) => void): void {
  const me = process.geteuid?.();
  const visit = (path: string, depth: number): void => {
    let st = lstatSync(path);
    if (st.isSymbolicLink()) {
      // Ours or root's (an operator moving metering/ to another disk): checked where it points.
      if (me !== undefined && st.uid !== me && st.uid !== 0) throw new Error(`state dir ${dir}: ${path} is a symlink owned by uid ${st.uid}, not by this user (uid ${me}) or root; refusing to start`);
      st = statSync(path);
    }
    if (me !== undefined && st.uid !== me) throw new Error(`state dir ${dir}: ${path} is owned by uid ${st.uid}, not by this user (uid ${me}); refusing to start (chown it)`);
    if ((st.mode & 0o022) !== 0) {
      throw new Error(`state dir ${dir}: ${path} is writable by group or others (mode ${octal(st.mode)}); refusing to start (chmod ${st.isDirectory() ? "700" : "600"} ${path})`);
    }
    const want = st.isDirectory() ? PRIVATE_DIR_MODE : PRIVATE_FILE_MODE;
    if ((st.mode & 0o077) !== 0) {
      chmodSync(path, want);
      onTightened?.(path, st.mode & 0o7777, want);
    }
    // Depth-bounded: a symlink loop of our own must not hang the start.
    if (st.isDirectory() && depth < 8) for (const name of readdirSync(path)) visit(join(path, name), depth + 1);
  };
  visit(dir, 0);
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
    mkdirSync(missing, { mode: PRIVATE_DIR_MODE });
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
