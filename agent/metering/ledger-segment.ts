import { closeSync, openSync, readFileSync, readSync } from "node:fs";
import { crc32 } from "node:zlib";
import { LedgerCorruptError } from "./ledger-corrupt-error.js";
import { LedgerFormatError, parseLedgerLine, type LedgerEntry } from "./ledger-entry.js";

/**
 * One segment file of the ledger: `ledger-<first seq, 20 digits>.jsonl`, whole lines only (up
 * to `size`), seqs contiguous from the one in its name. A sparse index of byte offsets lets a
 * read start near the seq it wants instead of at the top of a 64 MiB file.
 *
 * Next to it, `ledger-<first seq>.crc`: the CRC-32 of each line (the bytes before its "\n"),
 * one `<8 hex>\n` record per line in seq order (record k at byte 9k) — checksums without
 * changing the line format metering.md fixes. Written and fdatasync'd with the lines, so every
 * acknowledged line has its checksum on disk; checked at open and on every read from disk.
 */
export interface Segment {
  readonly firstSeq: number;
  readonly path: string;
  /** Its checksum file. */
  readonly crcPath: string;
  /** Bytes of durable, complete lines: what reads may look at. */
  size: number;
  /** firstSeq - 1 while empty. */
  lastSeq: number;
  /** checkpoints[k] = byte offset of the entry firstSeq + k * CHECKPOINT_EVERY. */
  checkpoints: number[];
}

export const CHECKPOINT_EVERY = 128;
export const SEGMENT_NAME_RE = /^ledger-(\d{20})\.jsonl$/;
export const CHECKSUM_NAME_RE = /^ledger-(\d{20})\.crc$/;
/** Bytes per checksum record: 8 hex digits and "\n". */
export const CHECKSUM_BYTES = 9;
const CHECKSUM_RECORD_RE = /^[0-9a-f]{8}\n$/;

export function segmentFileName(firstSeq: number): string {
  return `ledger-${String(firstSeq).padStart(20, "0")}.jsonl`;
}

export function checksumFileName(firstSeq: number): string {
  return `ledger-${String(firstSeq).padStart(20, "0")}.crc`;
}

/** The checksum record of one line (its bytes without the "\n"). */
export function lineChecksum(line: string | Uint8Array): string {
  return `${crc32(line).toString(16).padStart(8, "0")}\n`;
}

/** Compares a line with its checksum record; a mismatch is corruption of that line. */
function verifyLine(segment: { path: string; crcPath: string }, buf: Buffer, start: number, end: number, offset: number, record: string, index: number): void {
  if (lineChecksum(buf.subarray(start, end)) !== record) {
    throw new LedgerCorruptError(segment.path, offset, `line does not match its checksum (${segment.crcPath} at byte offset ${index * CHECKSUM_BYTES}: ${record.trim()})`);
  }
}

/**
 * The checksum records of a .crc file: whole records only (a torn last one is left out and
 * reported); a record that is not 8 hex digits and "\n" is corruption of that file.
 */
export function readChecksums(crcPath: string, buf: Buffer): { records: string[]; tornBytes: number } {
  const whole = Math.floor(buf.length / CHECKSUM_BYTES);
  const records: string[] = [];
  for (let k = 0; k < whole; k++) {
    const r = buf.toString("latin1", k * CHECKSUM_BYTES, (k + 1) * CHECKSUM_BYTES);
    if (!CHECKSUM_RECORD_RE.test(r)) throw new LedgerCorruptError(crcPath, k * CHECKSUM_BYTES, "not a checksum record (8 hex digits and a newline)");
    records.push(r);
  }
  return { records, tornBytes: buf.length - whole * CHECKSUM_BYTES };
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
  /** The checksum record of every whole line, in order (from the .crc file or computed). */
  checksums: string[];
  /** Lines the .crc file had a checksum for (the rest had none: see ledger.ts open). */
  checkedLines: number;
}

/**
 * Reads and checks every line of a segment (at open: never trust what a crash left behind):
 * parsed, in seq order, and equal to its checksum in `stored` (the .crc file's records;
 * undefined = a segment from before checksums). `onEntry` sees each entry in order.
 */
export function scanSegment(path: string, crcPath: string, firstSeq: number, stored: string[] | undefined, onEntry: (entry: LedgerEntry) => void): ScannedSegment {
  const buf = readFileSync(path);
  const segment: Segment = { firstSeq, path, crcPath, size: 0, lastSeq: firstSeq - 1, checkpoints: [] };
  const checksums: string[] = [];
  let start = 0;
  let seq = firstSeq;
  for (let nl = buf.indexOf(10, start); nl !== -1; nl = buf.indexOf(10, start)) {
    onEntry(parseLineAt(path, buf, start, nl, 0, seq));
    const k = seq - firstSeq;
    const record = stored?.[k];
    if (record !== undefined) verifyLine(segment, buf, start, nl, start, record, k);
    checksums.push(record ?? lineChecksum(buf.subarray(start, nl)));
    noteLineOffset(segment, seq, start);
    segment.lastSeq = seq++;
    start = nl + 1;
  }
  segment.size = start;
  return { segment, tornOffset: start < buf.length ? start : undefined, checksums, checkedLines: Math.min(checksums.length, stored?.length ?? 0) };
}

/** The checksum records of seqs [fromSeq, fromSeq + count) of `segment`, read from its .crc file. */
function readChecksumRange(segment: Segment, fromSeq: number, count: number): string[] {
  const k0 = fromSeq - segment.firstSeq;
  const buf = Buffer.alloc(count * CHECKSUM_BYTES);
  const fd = openSync(segment.crcPath, "r");
  try {
    let filled = 0;
    while (filled < buf.length) {
      const n = readSync(fd, buf, filled, buf.length - filled, k0 * CHECKSUM_BYTES + filled);
      if (n === 0) throw new LedgerCorruptError(segment.crcPath, k0 * CHECKSUM_BYTES + filled, `ends before the checksums of seqs up to ${fromSeq + count - 1}`);
      filled += n;
    }
  } finally {
    closeSync(fd);
  }
  const records: string[] = [];
  for (let k = 0; k < count; k++) {
    const r = buf.toString("latin1", k * CHECKSUM_BYTES, (k + 1) * CHECKSUM_BYTES);
    if (!CHECKSUM_RECORD_RE.test(r)) throw new LedgerCorruptError(segment.crcPath, (k0 + k) * CHECKSUM_BYTES, "not a checksum record (8 hex digits and a newline)");
    records.push(r);
  }
  return records;
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
  // Checksums of every line this read may return, read up front (9 bytes per line).
  const wanted = Math.min(limit - out.length, segment.lastSeq - fromSeq + 1);
  const checksums = readChecksumRange(segment, fromSeq, wanted);
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
          const entry = parseLineAt(segment.path, buf, start, nl, base, seq);
          verifyLine(segment, buf, start, nl, base + start, checksums[seq - fromSeq]!, seq - segment.firstSeq);
          out.push(entry);
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
