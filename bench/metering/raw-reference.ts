/**
 * The reference P7 is judged against in the same run: a bare Node loop on the same disk, writing
 * the same bytes with one write + one fdatasync per batch (the ledger's I/O and nothing else: no
 * encoding, no promises per caller, no bookkeeping), one batch at a time like the ledger. With
 * batch size 1 it is "fdatasync per entry", what a ledger without group commit could reach.
 */
import { close, fdatasync, open, write } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";

const openAsync = promisify(open);
const writeAsync = promisify(write);
const fdatasyncAsync = promisify(fdatasync);
const closeAsync = promisify(close);

export interface RawRun {
  entries: number;
  syncs: number;
  seconds: number;
}

export async function measureRawAppends(dir: string, name: string, lines: readonly string[], batchSize: number, durationMs: number): Promise<RawRun> {
  // Batches cycle through the sample so the bytes match the ledger's lines.
  const batches: Buffer[] = [];
  for (let i = 0; i < Math.max(1, Math.floor(lines.length / batchSize)); i++) {
    const batch = Array.from({ length: batchSize }, (_, j) => lines[(i * batchSize + j) % lines.length]!);
    batches.push(Buffer.from(`${batch.join("\n")}\n`));
  }
  const fd = await openAsync(join(dir, name), "a", 0o644);
  let syncs = 0;
  const start = performance.now();
  const end = start + durationMs;
  try {
    while (performance.now() < end) {
      const buf = batches[syncs % batches.length]!;
      for (let done = 0; done < buf.length; ) done += (await writeAsync(fd, buf, done, buf.length - done, null)).bytesWritten;
      await fdatasyncAsync(fd);
      syncs++;
    }
  } finally {
    await closeAsync(fd);
  }
  return { entries: syncs * batchSize, syncs, seconds: (performance.now() - start) / 1000 };
}
