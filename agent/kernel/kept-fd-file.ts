import { closeSync, openSync, readSync, readFileSync } from "node:fs";

/** One buffer for every read: reads are synchronous, so they never overlap. */
const shared = Buffer.allocUnsafe(8192);

/** The buffer readInto() fills; valid until the next read of any KeptFdFile. */
export const readBuffer: Buffer = shared;

/**
 * A small kernel file (/proc/<pid>/stat, a sysfs counter) read again and again through one kept
 * file descriptor with a positional read at offset 0, which makes procfs and sysfs produce the
 * current value. Synchronous on purpose: 1,000 instances × 4 files take ~15 ms this way and
 * ~0.5 s through fs.promises and the thread pool (architecture.md).
 *
 * A kept /proc/<pid> fd keeps referring to the process it was opened for: once that process
 * exits, reads fail with ESRCH even if the pid is reused. On any error we close the fd and
 * reopen once, so a recreated interface or a new process under the same pid is picked up (the
 * caller tells a reused pid apart by its start time).
 */
export class KeptFdFile {
  private fd: number | undefined;

  constructor(readonly path: string) {}

  read(): string {
    const n = this.readInto();
    return n < 0 ? readFileSync(this.path, "latin1") : shared.toString("latin1", 0, n);
  }

  /**
   * Reads into `readBuffer` and returns the byte count, or -1 when the content did not fit
   * (then use read()). The bytes are valid until the next read of any KeptFdFile.
   */
  readInto(): number {
    if (this.fd !== undefined) {
      try {
        return this.readFd(this.fd);
      } catch {
        this.close();
      }
    }
    this.fd = openSync(this.path, "r");
    try {
      return this.readFd(this.fd);
    } catch (e) {
      this.close();
      throw e;
    }
  }

  close(): void {
    if (this.fd === undefined) return;
    try {
      closeSync(this.fd);
    } catch {
      // Already closed or invalid: nothing to release.
    }
    this.fd = undefined;
  }

  private readFd(fd: number): number {
    const n = readSync(fd, shared, 0, shared.length, 0);
    // A full buffer may mean more content (not seen for stat/statm/counters): the caller
    // reads the file whole instead.
    return n < shared.length ? n : -1;
  }
}
