import { closeSync, openSync, readFileSync, readSync } from "node:fs";
import { LedgerCorruptError } from "./ledger-corrupt-error.js";
import { LedgerFormatError, parseLedgerLine, type LedgerEntry } from "./ledger-entry.js";

/**
 * One segment file of the ledger: `ledger-<first seq, 20 digits>.jsonl`, whole lines only (up
 * to `size`), seqs contiguous from the one in its name. A sparse index of byte offsets lets a
 * read start near the seq it wants instead of at the top of a 64 MiB file.
 */
export interface Segment {
  readonly firstSeq: number;
  readonly path: string;
  /** Bytes of durable, complete lines: what reads may look at. */
  size: number;
  /** firstSeq - 1 while empty. */
  lastSeq: number;
  /** checkpoints[k] = byte offset of the entry firstSeq + k * CHECKPOINT_EVERY. */
  checkpoints: number[];
}

export const CHECKPOINT_EVERY = 128;
export const SEGMENT_NAME_RE = /^ledger-(\d{20})\.jsonl$/;

export function segmentFileName(firstSeq: number): string {
  return `ledger-${String(firstSeq).padStart(20, "0")}.jsonl`;
}

/** Records the offset of `seq` when it is a checkpoint; called for every line in order. */
export function noteLineOffset(segment: Segment, seq: number, offset: number): void {
  if ((seq - segment.firstSeq) % CHECKPOINT_EVERY === 0) segment.checkpoints.push(offset);
}

// fatal: invalid UTF-8 is corruption, not U+FFFD; ignoreBOM: a BOM is kept, so it fails to parse.
const decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** The line in bytes [start, end) of `buf`, which sits at file offset `base`, as entry `seq`. */
function parseLineAt(path: string, buf: Buffer, start: number, end: number, base: number, seq: number): LedgerEntry {
  const offset = base + start;
  let text: string;
  try {
    text = decoder.decode(buf.subarray(start, end));
  } catch {
    throw new LedgerCorruptError(path, offset, "not valid UTF-8");
  }
  let entry: LedgerEntry;
  try {
    entry = parseLedgerLine(text);
  } catch (e) {
    if (e instanceof LedgerFormatError) throw new LedgerCorruptError(path, offset, `unparseable line: ${e.message}`);
    throw e;
  }
  if (entry.seq !== seq) throw new LedgerCorruptError(path, offset, `seq ${entry.seq} where ${seq} was expected`);
  return entry;
}

export interface ScannedSegment {
  segment: Segment;
  /** Offset of bytes after the last "\n" (a torn line), if any; `segment.size` stops before. */
  tornOffset: number | undefined;
}

/**
 * Reads and checks every line of a segment (at open: never trust what a crash left behind).
 * `onEntry` sees each entry in order.
 */
export function scanSegment(path: string, firstSeq: number, onEntry: (entry: LedgerEntry) => void): ScannedSegment {
  const buf = readFileSync(path);
  const segment: Segment = { firstSeq, path, size: 0, lastSeq: firstSeq - 1, checkpoints: [] };
  let start = 0;
  let seq = firstSeq;
  for (let nl = buf.indexOf(10, start); nl !== -1; nl = buf.indexOf(10, start)) {
    onEntry(parseLineAt(path, buf, start, nl, 0, seq));
    noteLineOffset(segment, seq, start);
    segment.lastSeq = seq++;
    start = nl + 1;
  }
  segment.size = start;
  return { segment, tornOffset: start < buf.length ? start : undefined };
}

/** Sized to the request so a one-entry read does not pull a megabyte. */
const chunkBytes = (limit: number) => Math.min(1 << 20, Math.max(16 << 10, (limit + CHECKPOINT_EVERY) * 256));

/**
 * Appends to `out` the entries of `segment` from `fromSeq` until `out` holds `limit` entries or
 * the segment's durable end. Synchronous positional reads on a short-lived fd.
 */
export function readSegment(segment: Segment, fromSeq: number, limit: number, out: LedgerEntry[]): void {
  if (fromSeq < segment.firstSeq || fromSeq > segment.lastSeq || out.length >= limit) return;
  const k = Math.floor((fromSeq - segment.firstSeq) / CHECKPOINT_EVERY);
  let seq = segment.firstSeq + k * CHECKPOINT_EVERY;
  let pos = segment.checkpoints[k]!;
  const fd = openSync(segment.path, "r");
  try {
    let carry = Buffer.alloc(0);
    let base = pos;
    while (pos < segment.size) {
      const chunk = Buffer.allocUnsafe(Math.min(chunkBytes(limit - out.length), segment.size - pos));
      let filled = 0;
      while (filled < chunk.length) {
        const n = readSync(fd, chunk, filled, chunk.length - filled, pos + filled);
        if (n === 0) throw new LedgerCorruptError(segment.path, pos + filled, `file ends before ${segment.size} bytes of durable entries`);
        filled += n;
      }
      pos += filled;
      const buf = carry.length > 0 ? Buffer.concat([carry, chunk]) : chunk;
      let start = 0;
      for (let nl = buf.indexOf(10, start); nl !== -1; nl = buf.indexOf(10, start)) {
        if (seq >= fromSeq) {
          out.push(parseLineAt(segment.path, buf, start, nl, base, seq));
          if (out.length >= limit || seq === segment.lastSeq) return;
        }
        seq++;
        start = nl + 1;
      }
      carry = buf.subarray(start);
      base += start;
    }
    if (seq <= segment.lastSeq) throw new LedgerCorruptError(segment.path, base, `entries up to seq ${segment.lastSeq} expected, found up to ${seq - 1}`);
  } finally {
    closeSync(fd);
  }
}
