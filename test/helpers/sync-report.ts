import { writeSync } from "node:fs";

/**
 * Writes a report line to stdout before returning, for helper processes that a test SIGKILLs and
 * whose reports must be complete up to the kill (a writer's "committed" or "ack" lines).
 * process.stdout.write is not that: stdout to a parent's pipe is a socket pair here, and Node
 * queued 193,000 lines in memory while the parent had read 247 — a SIGKILL loses them all
 * (measured on this machine class, Node 20). A kill can still tear the one line being written;
 * the readers skip a line that does not parse.
 */
export function reportSync(line: string): void {
  const bytes = Buffer.from(line.endsWith("\n") ? line : `${line}\n`);
  for (let off = 0; off < bytes.length; ) {
    try {
      off += writeSync(1, bytes, off);
    } catch (e) {
      // A non-blocking stdout that is full: wait for the reader (this is a test helper).
      if ((e as NodeJS.ErrnoException).code !== "EAGAIN") throw e;
    }
  }
}
