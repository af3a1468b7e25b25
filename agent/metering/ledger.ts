import { close, closeSync, existsSync, fdatasync, fstat, fsync, fsyncSync, ftruncate, ftruncateSync, mkdirSync, open, openSync, readFileSync, readdirSync, unlink, unlinkSync, write } from "node:fs";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { promisify } from "node:util";
import { LedgerCorruptError } from "./ledger-corrupt-error.js";
import { encodeLedgerFields, normalizeLedgerEntry, type LedgerEntry, type LedgerEntryInput } from "./ledger-entry.js";
import { META_FILE, readLedgerMeta, writeLedgerMeta, writeLedgerMetaSync } from "./ledger-meta.js";
import {
  CHECKPOINT_EVERY,
  CHECKSUM_BYTES,
  CHECKSUM_NAME_RE,
  SEGMENT_NAME_RE,
  checksumFileName,
  lineChecksum,
  noteLineOffset,
  readChecksums,
  readSegment,
  scanSegment,
  segmentFileName,
  type Segment,
} from "./ledger-segment.js";
import { removeStaleTempFiles, writeFileAtomicSync } from "../../lib/atomic-file.js";
import { APPEND_NOFOLLOW, PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, READ_WRITE_NOFOLLOW } from "../../lib/private-file.js";
import { errorMessage } from "../../lib/error-message.js";

export { LedgerCorruptError } from "./ledger-corrupt-error.js";

export interface LedgerOptions {
  /** A new segment starts once the current one holds this many bytes (default 64 MiB). */
  segmentBytes?: number;
  /** Acknowledged entries kept below the ack cursor (default 1,000,000). */
  retainAcknowledgedEntries?: number;
  /** Entries appended but not yet being written, beyond which append rejects (default 100,000). */
  maxPendingEntries?: number;
}

/** append() refused: too many entries already wait for the disk (the queue is bounded). */
export class LedgerOverflowError extends Error {
  override name = "LedgerOverflowError";
}

const DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024;
const DEFAULT_RETAIN = 1_000_000;
const DEFAULT_MAX_PENDING = 100_000;
/** Recent durable entries kept in memory: a watcher a little behind reads without disk I/O. */
const RECENT_ENTRIES = 4096;

const writeAsync = promisify(write);
const fdatasyncAsync = promisify(fdatasync);
const ftruncateAsync = promisify(ftruncate);
const fsyncAsync = promisify(fsync);
const fstatAsync = promisify(fstat);
const openAsync = promisify(open);
const closeAsync = promisify(close);
const unlinkAsync = promisify(unlink);

/** One append() call waiting for its batch. */
interface Waiter {
  /** Normalized copies of the inputs; seq and line are filled in when the batch is written. */
  entries: LedgerEntry[];
  /** encodeLedgerFields of each input: the line minus its seq. */
  fields: string[];
  resolve(entries: LedgerEntry[]): void;
  reject(error: unknown): void;
}

/** The segment appends go to, with its O_APPEND fd and its checksum file's. */
interface ActiveSegment {
  segment: Segment;
  fd: number;
  crcFd: number;
}

async function fsyncDir(dir: string): Promise<void> {
  const fd = await openAsync(dir, "r");
  try {
    await fsyncAsync(fd);
  } finally {
    await closeAsync(fd);
  }
}

const positiveInteger = (v: number | undefined, fallback: number, name: string, min: number): number => {
  if (v === undefined) return fallback;
  if (!Number.isSafeInteger(v) || v < min) throw new RangeError(`${name} must be an integer >= ${min}, got ${String(v)}`);
  return v;
};

/**
 * The agent's metering ledger (metering.md "The ledger file"): append-only JSONL segments in one
 * directory, every entry durable (written and fdatasync'd) before its append resolves. Appends
 * made while a write is in flight share the next write and fdatasync (group commit), which is
 * what makes thousands of durable entries per second possible on one disk. Seqs are assigned
 * when a batch is written, so a failed batch (truncated back) leaves no gap for the next one.
 */
export class MeteringLedger {
  readonly ledgerId: string;
  /** Torn last lines (no final "\n": a crash mid-write) truncated by open(). */
  readonly tornLinesRepaired: number;
  /**
   * Lines at the end of the last segment whose checksums open() wrote because the .crc file
   * did not have them: a crash between the two files' writes, so never acknowledged (an append
   * resolves only once both are synced), but accepted without a check. Also every line of a
   * ledger from before checksums, checksummed on its first open.
   */
  readonly checksumsAdded: number;
  /** Completed fdatasyncs of segment data; fewer than appends when group commit works. */
  syncs = 0;
  /** Entries made durable since open. */
  appended = 0;
  /** Told the duration of every write + fdatasync and how many entries it made durable (metrics). */
  syncObserver: ((seconds: number, entries: number) => void) | undefined;

  private readonly segments: Segment[];
  private active: ActiveSegment | undefined;
  private durableSeq: number;
  private pending: Waiter[] = [];
  private pendingEntries = 0;
  private writing = false;
  private writeScheduled = false;
  private idleWaiters: (() => void)[] = [];
  /** Set when a failed write could not be undone: the file's tail is unknown, stop appending. */
  private broken: Error | undefined;
  private closing: Promise<void> | undefined;
  private readonly listeners = new Set<(entries: LedgerEntry[]) => void>();
  /** The newest durable entries, contiguous, ending at durableSeq. */
  private recent: LedgerEntry[];
  private ackSeq: number;
  private persistedAckSeq: number;
  private ackPersisting: Promise<void> | undefined;
  private ackError: unknown;

  private constructor(
    private readonly dir: string,
    private readonly segmentBytes: number,
    private readonly retain: number,
    private readonly maxPending: number,
    init: { ledgerId: string; torn: number; checksumsAdded: number; segments: Segment[]; lastSeq: number; ack: number; recent: LedgerEntry[] },
  ) {
    this.ledgerId = init.ledgerId;
    this.tornLinesRepaired = init.torn;
    this.checksumsAdded = init.checksumsAdded;
    this.segments = init.segments;
    this.durableSeq = init.lastSeq;
    this.ackSeq = this.persistedAckSeq = init.ack;
    this.recent = init.recent;
  }

  /**
   * Opens (creating on first use) the ledger in `dir`. Synchronous: it runs once at agent start.
   * Every retained line is read and checked; a torn last line is truncated (it was never
   * acknowledged); anything else wrong is a LedgerCorruptError naming the file and offset.
   */
  static open(dir: string, options: LedgerOptions = {}): MeteringLedger {
    const segmentBytes = positiveInteger(options.segmentBytes, DEFAULT_SEGMENT_BYTES, "segmentBytes", 1);
    const retain = positiveInteger(options.retainAcknowledgedEntries, DEFAULT_RETAIN, "retainAcknowledgedEntries", 0);
    const maxPending = positiveInteger(options.maxPendingEntries, DEFAULT_MAX_PENDING, "maxPendingEntries", 1);
    // 0700 and files 0600, never through a symlink at a file's name (security.md "State on disk").
    mkdirSync(dir, { recursive: true, mode: PRIVATE_DIR_MODE });
    removeStaleTempFiles(join(dir, META_FILE));
    const names = readdirSync(dir)
      .filter((n) => SEGMENT_NAME_RE.test(n))
      .sort();
    let meta = readLedgerMeta(dir);
    const metaPath = join(dir, META_FILE);
    if (!meta) {
      // A new id over old segments would let a consumer take old entries for a new ledger.
      if (names.length > 0) throw new LedgerCorruptError(metaPath, 0, `missing while ${names.length} segment(s) exist: the ledger's id is lost`);
      meta = { ledgerId: randomBytes(8).toString("hex"), acknowledgedSeq: 0 };
      // Before any segment exists, so a segment never exists without its ledger's id.
      writeLedgerMetaSync(dir, meta);
    }

    // Checksums (ledger-segment.ts): format-2 metas promise a .crc file per segment; a format-1
    // ledger (from before checksums) gets them now, computed from its lines as they are.
    const legacy = !meta.checksummed;
    // Temp files of a checksum rewrite interrupted by a crash: the target is rewritten again.
    for (const name of readdirSync(dir)) {
      if (/^\.ledger-\d{20}\.crc\.tmp-/.test(name)) unlinkSync(join(dir, name));
    }
    const segments: Segment[] = [];
    let recent: LedgerEntry[] = [];
    let torn = 0;
    let checksumsAdded = 0;
    // Repairs are made only once every file has been checked: a refusal leaves all untouched.
    const repairs: (() => void)[] = [];
    for (const [i, name] of names.entries()) {
      const path = join(dir, name);
      const firstSeq = Number(SEGMENT_NAME_RE.exec(name)![1]);
      const crcPath = join(dir, checksumFileName(firstSeq));
      const previous = segments.at(-1);
      if (firstSeq < 1 || !Number.isSafeInteger(firstSeq)) throw new LedgerCorruptError(path, 0, `segment name gives first seq ${firstSeq}`);
      if (previous && firstSeq !== previous.lastSeq + 1) {
        throw new LedgerCorruptError(path, 0, `starts at seq ${firstSeq} but the previous segment ends at ${previous.lastSeq}`);
      }
      if (previous && previous.lastSeq < previous.firstSeq) throw new LedgerCorruptError(previous.path, 0, "empty segment that is not the last");
      const isLast = i === names.length - 1;
      const crcExists = !legacy && existsSync(crcPath);
      const stored = crcExists ? readChecksums(crcPath, readFileSync(crcPath)) : undefined;
      const { segment, tornOffset, checksums, checkedLines } = scanSegment(path, crcPath, firstSeq, legacy ? undefined : (stored?.records ?? []), (entry) => {
        if (!isLast) return;
        recent.push(entry);
        if (recent.length >= 2 * RECENT_ENTRIES) recent = recent.slice(-RECENT_ENTRIES);
      });
      const lines = checksums.length;
      if (tornOffset !== undefined && !isLast) throw new LedgerCorruptError(path, tornOffset, "line without its final newline in a segment that is not the last");
      if (!legacy) {
        // Only the last segment can be mid-write at a crash: its .crc may lack the newest lines'
        // checksums or hold ones of lines never written. Anywhere else the counts must match.
        if (!crcExists && lines > 0) throw new LedgerCorruptError(crcPath, 0, `missing, but ${path} holds ${lines} line(s)`);
        const have = stored?.records.length ?? 0;
        if (!isLast && (have !== lines || (stored?.tornBytes ?? 0) > 0)) {
          throw new LedgerCorruptError(crcPath, Math.min(have, lines) * CHECKSUM_BYTES, `holds ${have} checksum(s) for the ${lines} line(s) of ${path}`);
        }
      }
      const crcRight = !legacy && crcExists && stored!.records.length === lines && stored!.tornBytes === 0;
      if (!crcRight) {
        checksumsAdded += lines - checkedLines;
        repairs.push(() => writeFileAtomicSync(crcPath, checksums.join("")));
      }
      if (tornOffset !== undefined) {
        repairs.push(() => {
          const fd = openSync(path, READ_WRITE_NOFOLLOW);
          try {
            ftruncateSync(fd, tornOffset);
            fsyncSync(fd);
          } finally {
            closeSync(fd);
          }
        });
        torn++;
      }
      segments.push(segment);
    }
    // A .crc without its segment: left by retention (segment deleted first) or by a crash
    // between creating the two (the .crc is created first, empty). Anything else is refused.
    const segmentSeqs = new Set(segments.map((x) => x.firstSeq));
    for (const name of readdirSync(dir)) {
      const m = CHECKSUM_NAME_RE.exec(name);
      if (!m || segmentSeqs.has(Number(m[1]))) continue;
      const seq = Number(m[1]);
      const path = join(dir, name);
      const below = segments[0] !== undefined && seq < segments[0].firstSeq;
      const emptyNext = seq === (segments.at(-1)?.lastSeq ?? 0) + 1 && readFileSync(path).length === 0;
      if (!below && !emptyNext) throw new LedgerCorruptError(path, 0, `checksums of seq ${seq} onwards, but there is no ${segmentFileName(seq)}`);
      repairs.push(() => unlinkSync(path));
    }
    const ack = meta.acknowledgedSeq;
    const first = segments[0];
    const last = segments.at(-1);
    // Retention only ever deletes whole acknowledged segments, and after the ack is durable.
    const lastSeq = last ? last.lastSeq : ack;
    if (first && first.firstSeq > ack + 1) {
      throw new LedgerCorruptError(first.path, 0, `first retained seq is ${first.firstSeq} but only ${ack} were acknowledged: unacknowledged entries are missing`);
    }
    if (ack > lastSeq) throw new LedgerCorruptError(metaPath, 0, `acknowledged_seq ${ack} is beyond the last entry (${lastSeq}): entries are missing`);
    for (const repair of repairs) repair();
    if (legacy) writeLedgerMetaSync(dir, meta);

    const ledger = new MeteringLedger(dir, segmentBytes, retain, maxPending, {
      ledgerId: meta.ledgerId,
      torn,
      checksumsAdded,
      segments,
      lastSeq,
      ack,
      recent: recent.slice(-RECENT_ENTRIES).map(freezeEntry),
    });
    if (last) ledger.active = { segment: last, fd: openSync(last.path, APPEND_NOFOLLOW, PRIVATE_FILE_MODE), crcFd: openSync(last.crcPath, APPEND_NOFOLLOW, PRIVATE_FILE_MODE) };
    return ledger;
  }

  /**
   * Where entry `seq` is stored: "<segment file> at byte offset N" (for refusals to name);
   * "seq N (not stored)" when it is not retained or not written.
   */
  locate(seq: number): string {
    if (!Number.isSafeInteger(seq) || seq < this.firstRetainedSeq || seq > this.durableSeq) return `ledger seq ${seq} (not stored in ${this.dir})`;
    const segment = this.segments[this.segmentIndexOf(seq)]!;
    // From the nearest checkpoint, counting newlines: at most CHECKPOINT_EVERY lines read.
    const k = Math.floor((seq - segment.firstSeq) / CHECKPOINT_EVERY);
    let offset = segment.checkpoints[k]!;
    const buf = readFileSync(segment.path).subarray(0, segment.size);
    for (let s = segment.firstSeq + k * CHECKPOINT_EVERY; s < seq; s++) offset = buf.indexOf(10, offset) + 1;
    return `${segment.path} at byte offset ${offset}`;
  }

  /** Highest durable seq (0 when empty). */
  get lastSeq(): number {
    return this.durableSeq;
  }

  /** Lowest seq still stored; lastSeq + 1 when nothing is. */
  get firstRetainedSeq(): number {
    const first = this.segments[0];
    return first && first.lastSeq >= first.firstSeq ? first.firstSeq : this.durableSeq + 1;
  }

  /** Highest seq the consumer acknowledged (durable once flushAcknowledgement() resolves). */
  get acknowledgedSeq(): number {
    return this.ackSeq;
  }

  /**
   * Appends entries with contiguous seqs, in call order; resolves with them once their bytes
   * are written and fdatasync'd. Calls made while a write is in flight share the next write. An
   * invalid entry rejects the call (LedgerFormatError) and nothing of it is written; a failed
   * write rejects every call of its batch and the file is truncated back to before the batch.
   */
  append(entries: LedgerEntryInput[]): Promise<LedgerEntry[]> {
    if (this.closing) return Promise.reject(new Error("metering ledger is closed"));
    if (this.broken) return Promise.reject(this.broken);
    if (entries.length === 0) return Promise.resolve([]);
    if (this.pendingEntries + entries.length > this.maxPending) {
      return Promise.reject(new LedgerOverflowError(`metering ledger: ${this.pendingEntries} entries already wait for the disk (at most ${this.maxPending})`));
    }
    const prepared: LedgerEntry[] = [];
    const fields: string[] = [];
    try {
      for (const e of entries) {
        // Encoded now (validation, and a copy: the caller may reuse its objects); seq comes later.
        fields.push(encodeLedgerFields(e));
        const entry = normalizeLedgerEntry(e) as LedgerEntry;
        entry.seq = 0;
        entry.line = "";
        prepared.push(entry);
      }
    } catch (e) {
      return Promise.reject(e);
    }
    this.pendingEntries += prepared.length;
    return new Promise((resolve, reject) => {
      this.pending.push({ entries: prepared, fields, resolve, reject });
      this.scheduleWrite();
    });
  }

  /**
   * Durable entries from `fromSeq` (raised to firstRetainedSeq), at most `limit`, in seq order.
   * Recent entries come from memory, older ones from the segment files (synchronous reads,
   * every line checked again). Entries are shared and frozen.
   */
  read(fromSeq: number, limit: number): LedgerEntry[] {
    if (!Number.isSafeInteger(fromSeq)) throw new RangeError(`fromSeq must be an integer, got ${String(fromSeq)}`);
    if (!Number.isSafeInteger(limit) || limit < 0) throw new RangeError(`limit must be an integer >= 0, got ${String(limit)}`);
    const start = Math.max(fromSeq, this.firstRetainedSeq);
    if (limit === 0 || start > this.durableSeq) return [];
    const recentFirst = this.recent[0]?.seq ?? Infinity;
    if (start >= recentFirst) return this.recent.slice(start - recentFirst, start - recentFirst + limit);
    const out: LedgerEntry[] = [];
    let i = this.segmentIndexOf(start);
    let seq = start;
    while (out.length < limit && i < this.segments.length) {
      const segment = this.segments[i++]!;
      readSegment(segment, seq, limit, out);
      seq = (out.at(-1)?.seq ?? seq - 1) + 1;
    }
    return out.map(freezeEntry);
  }

  /**
   * Called synchronously with each batch once it is durable, in seq order (frozen, shared).
   * read() then subscribe() in one synchronous block misses nothing: no batch can become
   * durable in between. A listener that throws does not stop the others;
   * its exception is rethrown outside the ledger (uncaught). Returns the unsubscribe function.
   */
  subscribe(listener: (entries: LedgerEntry[]) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /**
   * The consumer has durably merged every entry through `seq`. The cursor only moves forward;
   * it is persisted in the background (one write in flight, the latest value wins), and only
   * once it is on disk may retention delete whole segments entirely <= seq - retain. A seq
   * beyond lastSeq is a RangeError: nobody can have merged what is not written.
   */
  acknowledge(seq: number): void {
    if (this.closing) throw new Error("metering ledger is closed");
    if (!Number.isSafeInteger(seq) || seq < 0) throw new RangeError(`seq must be an integer >= 0, got ${String(seq)}`);
    if (seq > this.durableSeq) throw new RangeError(`cannot acknowledge seq ${seq}: the last durable seq is ${this.durableSeq}`);
    if (seq > this.ackSeq) this.ackSeq = seq;
    // Also retries a persist that failed, when the consumer acknowledges again.
    if (this.persistedAckSeq < this.ackSeq && !this.ackPersisting) this.ackPersisting = this.persistAcknowledgements();
  }

  /**
   * Resolves once the acknowledgement cursor is on disk and retention has run for it; rejects
   * with the error if persisting it (or deleting a segment) failed.
   */
  async flushAcknowledgement(): Promise<void> {
    await this.ackPersisting;
    if (this.ackError !== undefined) throw this.ackError;
  }

  /** Waits for every append already made to be written, then closes the files. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      await new Promise<void>((resolve) => this.whenIdle(resolve));
      await this.ackPersisting;
      const active = this.active;
      this.active = undefined;
      if (active) {
        await closeAsync(active.fd);
        await closeAsync(active.crcFd);
      }
    })();
    return this.closing;
  }

  // ---- group commit ----

  private scheduleWrite(): void {
    if (this.writing || this.writeScheduled) return;
    this.writeScheduled = true;
    // setImmediate, not a microtask: appends made by other callbacks of this loop turn join too.
    setImmediate(() => void this.writeBatch());
  }

  private whenIdle(callback: () => void): void {
    if (!this.writing && !this.writeScheduled && this.pending.length === 0) callback();
    else this.idleWaiters.push(callback);
  }

  private async writeBatch(): Promise<void> {
    this.writeScheduled = false;
    const batch = this.pending;
    this.pending = [];
    const count = batch.reduce((n, w) => n + w.entries.length, 0);
    this.pendingEntries -= count;
    if (batch.length > 0) {
      this.writing = true;
      try {
        if (this.broken) throw this.broken;
        const written = await this.writeDurably(batch);
        this.commit(batch, written);
      } catch (e) {
        const error = e === this.broken ? e : new Error(`could not write the metering ledger: ${errorMessage(e)}`, { cause: e });
        for (const w of batch) w.reject(error);
      } finally {
        this.writing = false;
      }
    }
    if (this.pending.length > 0) this.scheduleWrite();
    else for (const done of this.idleWaiters.splice(0)) done();
  }

  /**
   * One write + one fdatasync for the whole batch; on failure the segment is truncated back to
   * where it was, so no partial line is ever followed by later entries.
   */
  private async writeDurably(batch: Waiter[]): Promise<{ active: ActiveSegment; entries: LedgerEntry[]; bytes: number; offsets: number[] }> {
    const firstSeq = this.durableSeq + 1;
    const active = await this.segmentFor(firstSeq);
    const before = active.segment.size;
    const entries: LedgerEntry[] = [];
    const offsets: number[] = [];
    const lines: string[] = [];
    const checksums: string[] = [];
    const crcBefore = (active.segment.lastSeq - active.segment.firstSeq + 1) * CHECKSUM_BYTES;
    let offset = before;
    let seq = firstSeq;
    for (const w of batch) {
      for (let i = 0; i < w.entries.length; i++, seq++) {
        // Not visible to anyone until commit(): a failed batch's entries are simply dropped.
        const entry = w.entries[i]!;
        entry.seq = seq;
        entry.line = `{"seq":${seq},${w.fields[i]!}`;
        entries.push(entry);
        offsets.push(offset);
        offset += Buffer.byteLength(entry.line) + 1;
        lines.push(entry.line);
        checksums.push(lineChecksum(entry.line));
      }
    }
    lines.push("");
    const buf = Buffer.from(lines.join("\n"));
    const crcBuf = Buffer.from(checksums.join(""), "latin1");
    const started = performance.now();
    try {
      // O_APPEND: every write lands at the end; loop over short writes. The lines and their
      // checksums are synced together (two fdatasyncs in parallel): resolved only once both are
      // durable, so no acknowledged line is ever without its checksum.
      const writeAll = async (fd: number, b: Buffer) => {
        for (let done = 0; done < b.length; ) done += (await writeAsync(fd, b, done, b.length - done, null)).bytesWritten;
        await fdatasyncAsync(fd);
      };
      await Promise.all([writeAll(active.fd, buf), writeAll(active.crcFd, crcBuf)]);
    } catch (e) {
      try {
        await ftruncateAsync(active.fd, before);
        await fdatasyncAsync(active.fd);
        await ftruncateAsync(active.crcFd, crcBefore);
        await fdatasyncAsync(active.crcFd);
      } catch (undoError) {
        this.broken = new Error(
          `metering ledger ${active.segment.path}: a failed write (${errorMessage(e)}) could not be undone (${errorMessage(undoError)}); reopen the ledger`,
        );
      }
      throw e;
    }
    this.syncs++;
    this.appended += entries.length;
    this.syncObserver?.((performance.now() - started) / 1000, entries.length);
    return { active, entries, bytes: buf.length, offsets };
  }

  /** The current segment, or a new one named after `firstSeq` once the current is full. */
  private async segmentFor(firstSeq: number): Promise<ActiveSegment> {
    const current = this.active;
    if (current && current.segment.size < this.segmentBytes) return current;
    const path = join(this.dir, segmentFileName(firstSeq));
    const crcPath = join(this.dir, checksumFileName(firstSeq));
    // The checksum file first: a segment never exists without it (open() relies on that).
    const crcFd = await openAsync(crcPath, APPEND_NOFOLLOW, PRIVATE_FILE_MODE);
    let fd: number | undefined;
    try {
      if ((await fstatAsync(crcFd)).size !== 0) throw new Error(`${crcPath} exists and is not empty`);
      fd = await openAsync(path, APPEND_NOFOLLOW, PRIVATE_FILE_MODE);
      const { size } = await fstatAsync(fd);
      if (size !== 0) throw new Error(`${path} exists and is not empty`);
      // The new names must survive a crash for the fdatasync of their data to mean anything.
      await fsyncDir(this.dir);
    } catch (e) {
      if (fd !== undefined) await closeAsync(fd);
      await closeAsync(crcFd);
      throw e;
    }
    const next: ActiveSegment = { segment: { firstSeq, path, crcPath, size: 0, lastSeq: firstSeq - 1, checkpoints: [] }, fd, crcFd };
    this.segments.push(next.segment);
    this.active = next;
    // Everything in the old segment is durable already; a failed close loses nothing.
    if (current) {
      await closeAsync(current.fd).catch(() => undefined);
      await closeAsync(current.crcFd).catch(() => undefined);
    }
    return next;
  }

  /** The batch is durable: publish it (memory, readers, callers, subscribers). */
  private commit(batch: Waiter[], written: { active: ActiveSegment; entries: LedgerEntry[]; bytes: number; offsets: number[] }): void {
    const { segment } = written.active;
    const entries = written.entries;
    for (const e of entries) freezeEntry(e);
    for (const [i, e] of entries.entries()) noteLineOffset(segment, e.seq, written.offsets[i]!);
    segment.size += written.bytes;
    segment.lastSeq = entries.at(-1)!.seq;
    this.durableSeq = segment.lastSeq;
    this.recent.push(...entries);
    if (this.recent.length >= 2 * RECENT_ENTRIES) this.recent = this.recent.slice(-RECENT_ENTRIES);
    let at = 0;
    for (const w of batch) {
      w.resolve(entries.slice(at, at + w.entries.length));
      at += w.entries.length;
    }
    Object.freeze(entries);
    for (const listener of this.listeners) {
      try {
        listener(entries);
      } catch (e) {
        // A listener's bug must not undo a durable batch or starve the other listeners; it
        // still surfaces as an uncaught exception rather than vanish.
        setImmediate(() => {
          throw e;
        });
      }
    }
  }

  // ---- acknowledgement and retention ----

  private async persistAcknowledgements(): Promise<void> {
    try {
      this.ackError = undefined;
      while (this.persistedAckSeq < this.ackSeq) {
        const target = this.ackSeq;
        await writeLedgerMeta(this.dir, { ledgerId: this.ledgerId, acknowledgedSeq: target });
        this.persistedAckSeq = target;
        await this.applyRetention();
      }
    } catch (e) {
      this.ackError = e;
    } finally {
      this.ackPersisting = undefined;
    }
  }

  /**
   * Deletes whole segments, oldest first, whose every entry is <= the durable ack cursor minus
   * the entries to retain. Never the segment being appended to, never an unacknowledged entry.
   * Each deletion is made durable before the next, so a crash never leaves a gap behind.
   */
  private async applyRetention(): Promise<void> {
    const limit = this.persistedAckSeq - this.retain;
    for (;;) {
      const oldest = this.segments[0];
      if (!oldest || oldest === this.active?.segment || oldest.lastSeq < oldest.firstSeq || oldest.lastSeq > limit) return;
      // Out of the list first, so no read opens a file that is being deleted.
      this.segments.shift();
      // The segment before its checksums: a crash in between leaves only a stray .crc, which
      // open() removes; never a segment without its checksums.
      await unlinkAsync(oldest.path);
      await unlinkAsync(oldest.crcPath).catch((e: NodeJS.ErrnoException) => {
        if (e.code !== "ENOENT") throw e;
      });
      await fsyncDir(this.dir);
    }
  }

  /** Index of the segment holding `seq` (the last one starting at or below it). */
  private segmentIndexOf(seq: number): number {
    let lo = 0;
    let hi = this.segments.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.segments[mid]!.firstSeq <= seq) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }
}

/** Entries handed out are shared (cache, subscribers, callers): frozen, so nobody edits them. */
function freezeEntry(e: LedgerEntry): LedgerEntry {
  Object.freeze(e.shape);
  return Object.freeze(e);
}
