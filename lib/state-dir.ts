import { accessSync, constants, mkdirSync, readFileSync, writeFileSync, unlinkSync } from "node:fs";
import { join } from "node:path";

/**
 * Prepares a daemon's state directory: creates it, checks it is writable, and claims it with a
 * pid file so two daemons never write the same files. A pid file left by a process that no
 * longer exists (kill -9) is taken over. Throws with a one-line reason otherwise.
 */
export function claimStateDir(dir: string, owner: string): { release(): void } {
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    accessSync(dir, constants.W_OK | constants.R_OK | constants.X_OK);
  } catch (e) {
    throw new Error(`state dir ${dir} is not usable: ${(e as Error).message}`);
  }
  const pidFile = join(dir, `${owner}.pid`);
  let existing: number | undefined;
  try {
    existing = Number(readFileSync(pidFile, "utf8").trim());
  } catch {
    existing = undefined;
  }
  if (existing && existing !== process.pid && processExists(existing)) {
    throw new Error(`state dir ${dir} is in use by another ${owner} (pid ${existing})`);
  }
  writeFileSync(pidFile, `${process.pid}\n`);
  return {
    release() {
      try {
        if (Number(readFileSync(pidFile, "utf8").trim()) === process.pid) unlinkSync(pidFile);
      } catch {
        // already gone
      }
    },
  };
}

function processExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}
