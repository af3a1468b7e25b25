import { closeSync, fsyncSync, openSync, readdirSync, renameSync, rmSync, writeSync, unlinkSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { dirname, basename, join } from "node:path";
import fsp from "node:fs/promises";
import { CREATE_EXCLUSIVE, PRIVATE_FILE_MODE } from "./private-file.js";

/**
 * `.<name>.tmp-<16 random hex digits>` next to `path`: a name nobody can guess ahead (a
 * predictable one let a planted symlink redirect the write, security.md "State on disk"); the
 * prefix stays what start-up cleanup looks for. Opened with O_EXCL | O_NOFOLLOW, so even a
 * symlink at this very name makes the write fail rather than be followed.
 */
export function tempPathFor(path: string): string {
  return join(dirname(path), `.${basename(path)}.tmp-${randomBytes(8).toString("hex")}`);
}

/**
 * Replaces `path` with `data` so that after a crash (kill -9, power loss) the file holds either
 * the old or the new content, never a mix: write a temp file in the same directory, fsync it,
 * rename it over the target, fsync the directory so the rename itself is durable (rename(2),
 * fsync(2): a rename is only persistent once its directory is synced).
 * The temp file's name is random and it is created exclusively without following symlinks
 * (tempPathFor), mode 0600.
 */
export function writeFileAtomicSync(path: string, data: string | Uint8Array): void {
  const dir = dirname(path);
  const tmp = tempPathFor(path);
  const fd = openSync(tmp, CREATE_EXCLUSIVE, PRIVATE_FILE_MODE);
  try {
    const bytes = typeof data === "string" ? Buffer.from(data) : data;
    let off = 0;
    while (off < bytes.length) off += writeSync(fd, bytes, off, bytes.length - off);
    fsyncSync(fd);
  } catch (e) {
    closeSync(fd);
    try {
      unlinkSync(tmp);
    } catch {
      // best effort: the temp file is never read back
    }
    throw e;
  }
  closeSync(fd);
  renameSync(tmp, path);
  const dfd = openSync(dir, "r");
  try {
    fsyncSync(dfd);
  } finally {
    closeSync(dfd);
  }
}

/**
 * The same protocol as writeFileAtomicSync, off the event loop: the fsyncs of a large file take
 * milliseconds that a daemon's RPCs should not wait behind.
 */
export async function writeFileAtomic(path: string, data: string | Uint8Array): Promise<void> {
  const dir = dirname(path);
  const tmp = tempPathFor(path);
  const file = await fsp.open(tmp, CREATE_EXCLUSIVE, PRIVATE_FILE_MODE);
  try {
    await file.writeFile(data);
    await file.sync();
  } catch (e) {
    await file.close();
    await fsp.rm(tmp, { force: true });
    throw e;
  }
  await file.close();
  await fsp.rename(tmp, path);
  const d = await fsp.open(dir, "r");
  try {
    await d.sync();
  } finally {
    await d.close();
  }
}

/**
 * Deletes the temp files of writes of `path` cut short by a crash (their names are random, so a
 * later write never reuses one): the target still holds the last complete content.
 */
export function removeStaleTempFiles(path: string): void {
  const prefix = `.${basename(path)}.tmp-`;
  let names: string[];
  try {
    names = readdirSync(dirname(path));
  } catch {
    return; // no directory yet: nothing left behind
  }
  for (const name of names) {
    if (name.startsWith(prefix)) rmSync(join(dirname(path), name), { force: true });
  }
}
