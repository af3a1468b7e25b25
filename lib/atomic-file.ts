import { closeSync, fsyncSync, openSync, renameSync, writeSync, unlinkSync } from "node:fs";
import { dirname, basename, join } from "node:path";
import fsp from "node:fs/promises";

/**
 * Replaces `path` with `data` so that after a crash (kill -9, power loss) the file holds either
 * the old or the new content, never a mix: write a temp file in the same directory, fsync it,
 * rename it over the target, fsync the directory so the rename itself is durable (rename(2),
 * fsync(2): a rename is only persistent once its directory is synced).
 */
export function writeFileAtomicSync(path: string, data: string | Uint8Array): void {
  const dir = dirname(path);
  const tmp = join(dir, `.${basename(path)}.tmp-${process.pid}`);
  const fd = openSync(tmp, "w", 0o600);
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
  const tmp = join(dir, `.${basename(path)}.tmp-${process.pid}`);
  const file = await fsp.open(tmp, "w", 0o600);
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
