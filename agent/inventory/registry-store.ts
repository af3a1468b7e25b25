import { existsSync, readFileSync, readdirSync, statSync, unlinkSync } from "node:fs";
import fsp, { type FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { crc32 } from "node:zlib";
import type { JsonValue } from "@bufbuild/protobuf";
import { writeFileAtomic } from "../../lib/atomic-file.js";
import { PRIVATE_FILE_MODE, READ_WRITE_NOFOLLOW, TRUNCATE_NOFOLLOW } from "../../lib/private-file.js";
import { errorMessage } from "../../lib/error-message.js";

/** Open intervals of one instance as stored: [compute open, storage open, ever ran] as 0/1. */
export type StoredMeter = [number, number, number];

/** Lifecycle entries recorded with a change, not yet known to be in the ledger. */
export interface StoredPending {
  afterSeq: number;
  entries: JsonValue[];
}

/** The registry's whole state as it is on disk (the snapshot, or snapshot + journal replayed). */
export interface RegistryState {
  resourceVersion: string;
  instances: Map<string, JsonValue>;
  snapshots: Map<string, JsonValue>;
  /** Undefined for a file from before metering: its instances' intervals open on attach. */
  meter: Map<string, StoredMeter> | undefined;
  pending: StoredPending | undefined;
  /**
   * The metering ledger's last seq once every entry this state carries is appended (its pending
   * entries included); undefined for a file from before it was recorded. With `ledgerSeqAt`:
   * the file and byte offset of the record that said so (for a refusal to name).
   */
  ledgerSeq: number | undefined;
  ledgerSeqAt: string;
  /** The ledger_id `ledgerSeq` is a seq of. */
  ledgerId: string | undefined;
}

/**
 * What one group commit changed: the new value of every instance, meter row and snapshot it
 * touched (null = removed), the version after it, and the entries recorded with it. Every
 * record carries the entries not yet appended to the ledger; none = all earlier ones are in.
 */
export interface JournalRecord {
  v: string;
  put?: JsonValue[];
  del?: string[];
  meter?: Record<string, StoredMeter | null>;
  snapPut?: JsonValue[];
  snapDel?: string[];
  pending?: StoredPending;
  /** RegistryState.ledgerSeq after this record (absent: a record from before it existed). */
  ls?: number;
  /** The ledger_id of the ledger `ls` counts in (a replaced ledger starts again at 0). */
  lid?: string;
  /**
   * Entries added to the pending ones the state already holds (the previous record's or the
   * snapshot's), instead of `pending` with all of them again: a ledger outage must not make
   * every change rewrite every entry waiting for it. Present (maybe empty) = still pending.
   */
  pm?: JsonValue[];
}

const SNAPSHOT = "instances.json";
/** 3: the snapshot ends with its CRC-32 and every journal line starts with its own. */
const FORMAT = 3;
/** `<crc32 of the JSON, 8 hex> <JSON>`: a line without the prefix is from format 2 (no checksum). */
const CHECKED_LINE_RE = /^([0-9a-f]{8}) /;
/** The snapshot's last key: the CRC-32 of the text before it with "}" in its place. */
const SNAPSHOT_CRC_RE = /,"crc32":"([0-9a-f]{8})"\}\n$/;
const JOURNAL_RE = /^instances-(\d+)\.journal$/;
/** The journal is folded into a new snapshot once it outgrows both of these. */
const MIN_COMPACT_BYTES = 256 * 1024;
const COMPACT_FACTOR = 2;

function journalName(gen: number): string {
  return `instances-${gen}.journal`;
}

function crcHex(data: string | Buffer): string {
  return crc32(data).toString(16).padStart(8, "0");
}

/**
 * Where the instance registry lives on disk: a snapshot (`instances.json`, replaced atomically)
 * plus an append-only journal of the commits made since (`instances-<gen>.journal`, one JSON
 * line per group commit, fdatasync'd before the commit is acknowledged). A commit costs one
 * small append and one sync instead of rewriting every instance with two fsyncs; when the
 * journal has grown past twice the snapshot, the next commit writes a new snapshot pointing at
 * a new, empty journal (compaction).
 *
 * Crash safety: the new journal file is created before the snapshot that names it, so the
 * snapshot's directory fsync makes both durable; a snapshot never names a journal that does not
 * exist. On open, a torn last journal line (a crash mid-append: never acknowledged) is set
 * aside and cut off before the next append — not at open, so that the registry/ledger
 * cross-check (instance-registry.ts attachLedger) can still refuse a "torn" line whose entries
 * the ledger has (it was acknowledged, so the cut is corruption, not a crash) with nothing
 * deleted. Any other bad line stops the agent with the file and byte offset.
 *
 * Checksums (format 3): every journal line is `<crc32 hex> <JSON>` and the snapshot carries
 * the CRC-32 of its text, so a flipped byte (vCPUs 2 → 9) is refused, not loaded. Lines and
 * snapshots of format 2 (no checksum) still load; a format-2 line after a checksummed one in
 * the same journal cannot be written by any version and is refused.
 */
export class RegistryStore {
  private journal: FileHandle | undefined;
  private journalBytes = 0;
  private snapshotBytes = 0;
  /** After a failed append the journal's tail is unknown: the next commit writes a snapshot. */
  private compactNext = false;
  /** Torn journal lines cut off at open (a crash mid-append). */
  readonly tornRecords: number;
  /** Commits made durable since open, and how many of them wrote a whole snapshot. */
  commits = 0;
  compactions = 0;
  /** Told the duration of every durable commit and whether it was a compaction (metrics). */
  commitObserver: ((seconds: number, compaction: boolean) => void) | undefined;

  /** Where a torn last journal line starts, until the next append cuts it off. */
  private tornOffset: number | undefined;

  private constructor(
    private readonly dir: string,
    private gen: number,
    tornRecords: number,
  ) {
    this.tornRecords = tornRecords;
  }

  /** Where the next journal record goes: the journal's file and the byte offset of its end. */
  get journalEnd(): string {
    return `${join(this.dir, journalName(this.gen))} at byte offset ${this.journalBytes}`;
  }

  /** Loads the state; undefined state = no registry yet. Throws on anything but a torn tail. */
  static open(dir: string): { store: RegistryStore; state: RegistryState | undefined } {
    const path = join(dir, SNAPSHOT);
    // Temp files of a snapshot write interrupted by a crash: the target still holds the last good state.
    for (const name of readdirSync(dir)) {
      if (name.startsWith(`.${SNAPSHOT}.tmp-`)) unlinkSync(join(dir, name));
    }
    if (!existsSync(path)) {
      // Only an empty journal can exist without a snapshot (a crash inside the first compaction).
      for (const name of readdirSync(dir)) {
        if (JOURNAL_RE.test(name) && statSync(join(dir, name)).size > 0) throw new Error(`${join(dir, name)}: holds changes but ${SNAPSHOT} is missing; refusing to start without it`);
      }
      removeJournals(dir, undefined);
      const store = new RegistryStore(dir, 0, 0);
      store.compactNext = true;
      return { store, state: undefined };
    }
    const text = readFileSync(path, "utf8");
    let doc: {
      format?: number;
      journal?: number;
      resourceVersion?: string;
      instances?: JsonValue[];
      snapshots?: JsonValue[];
      meter?: Record<string, StoredMeter>;
      pendingMetering?: StoredPending;
      ledgerSeq?: number;
      ledgerId?: string;
      crc32?: string;
    };
    // Checked on the bytes as written, before parsing, whatever the format says (a flipped
    // format digit must not turn the check off): the CRC is the text's with its own key cut off.
    const m = SNAPSHOT_CRC_RE.exec(text);
    if (m && crcHex(`${text.slice(0, m.index)}}`) !== m[1]) {
      throw new Error(`${path}: byte offset 0: the snapshot does not match its crc32 ${m[1]} (a changed byte in bytes 0..${m.index}); refusing to start over it`);
    }
    try {
      doc = JSON.parse(text) as typeof doc;
    } catch (e) {
      throw new Error(`${path}: not valid JSON (${errorMessage(e)}) at byte offset 0; refusing to start over it`);
    }
    if (typeof doc !== "object" || doc === null || Array.isArray(doc)) throw new Error(`${path}: byte offset 0: not a JSON object; refusing to start over it`);
    if (doc.format !== 1 && doc.format !== 2 && doc.format !== FORMAT) throw new Error(`${path}: byte offset 0: unknown format ${String(doc.format)}`);
    if ((doc.format === FORMAT || doc.crc32 !== undefined) && !(m && doc.crc32 === m[1])) {
      throw new Error(`${path}: byte offset ${Math.max(0, text.length - 20)}: no crc32 at the end of a format-${FORMAT} snapshot; refusing to start over it`);
    }
    if (doc.format !== 1 ? !(Number.isSafeInteger(doc.journal) && (doc.journal ?? 0) >= 1) : doc.journal !== undefined) throw new Error(`${path}: byte offset 0: journal is not a generation number; refusing to start over it`);
    checkRecord({ v: doc.resourceVersion ?? "0", put: doc.instances, snapPut: doc.snapshots, meter: doc.meter, pending: doc.pendingMetering, ls: doc.ledgerSeq, lid: doc.ledgerId }, `${path}: byte offset 0`);
    const state: RegistryState = {
      resourceVersion: doc.resourceVersion ?? "0",
      instances: new Map(),
      snapshots: new Map(),
      meter: doc.meter ? new Map(Object.entries(doc.meter)) : undefined,
      pending: doc.pendingMetering,
      ledgerSeq: doc.ledgerSeq,
      ledgerSeqAt: path,
      ledgerId: doc.ledgerId,
    };
    for (const [i, json] of (doc.instances ?? []).entries()) state.instances.set(idOf(json, `${path}: byte offset 0: instance ${i}`), json);
    for (const [i, json] of (doc.snapshots ?? []).entries()) state.snapshots.set(idOf(json, `${path}: byte offset 0: snapshot ${i}`), json);
    const gen = doc.journal;
    let torn: number | undefined;
    let journalBytes = 0;
    if (gen !== undefined) {
      const jpath = join(dir, journalName(gen));
      // Checked before any other journal is deleted: a snapshot that names the wrong one must
      // not cost the right one.
      if (!existsSync(jpath)) throw new Error(`${jpath}: missing, but ${SNAPSHOT} names it; refusing to start without the changes it holds`);
    }
    removeJournals(dir, gen);
    if (gen !== undefined) {
      const jpath = join(dir, journalName(gen));
      const replay = replayJournal(jpath, state);
      torn = replay.tornOffset;
      journalBytes = replay.bytes;
    }
    const store = new RegistryStore(dir, gen ?? 0, torn === undefined ? 0 : 1);
    store.tornOffset = torn;
    store.snapshotBytes = Buffer.byteLength(text);
    store.journalBytes = journalBytes;
    // A format-1 file has no journal: the first commit writes a snapshot that starts one.
    store.compactNext = gen === undefined;
    return { store, state };
  }

  /**
   * Makes one commit durable: appended to the journal, or, when the journal is due for
   * compaction (or its tail is in doubt after a failure), a whole new snapshot from `full()`.
   */
  async commit(record: JournalRecord, full: () => object): Promise<void> {
    const started = performance.now();
    const compaction = this.compactNext || this.journalBytes > Math.max(MIN_COMPACT_BYTES, COMPACT_FACTOR * this.snapshotBytes);
    if (compaction) await this.compact(full());
    else await this.append(record);
    this.commits++;
    if (compaction) this.compactions++;
    this.commitObserver?.((performance.now() - started) / 1000, compaction);
  }

  private async append(record: JournalRecord): Promise<void> {
    const json = JSON.stringify(record);
    const line = Buffer.from(`${crcHex(json)} ${json}\n`);
    // Opened on the first append (open() stays synchronous); positional writes, not O_APPEND,
    // so a failed write can be cut off exactly.
    this.journal ??= await fsp.open(join(this.dir, journalName(this.gen)), READ_WRITE_NOFOLLOW);
    if (this.tornOffset !== undefined) {
      // The torn line open() set aside: cut off now, so no shorter record leaves its end behind.
      await this.journal.truncate(this.tornOffset);
      this.tornOffset = undefined;
    }
    try {
      await this.journal!.write(line, 0, line.length, this.journalBytes);
      await this.journal!.datasync();
      // An unlinked journal (the state dir removed under us) takes writes that no restart will
      // read: that is a failed commit, not an acknowledged one.
      if ((await this.journal!.stat()).nlink === 0) throw new Error(`${join(this.dir, journalName(this.gen))} was removed`);
      this.journalBytes += line.length;
    } catch (e) {
      // The bytes may be partly on disk: cut them off if we can; the next commit starts over
      // from a snapshot either way, so nothing is ever appended after a broken tail.
      this.compactNext = true;
      try {
        await this.journal!.truncate(this.journalBytes);
      } catch {
        // the snapshot the next commit writes names a new journal; this one is deleted then
      }
      throw e;
    }
  }

  private async compact(doc: object): Promise<void> {
    const gen = this.gen + 1;
    const jpath = join(this.dir, journalName(gen));
    // Created (empty) before the snapshot that names it: the snapshot's directory sync covers it.
    const journal = await fsp.open(jpath, TRUNCATE_NOFOLLOW, PRIVATE_FILE_MODE);
    const body = JSON.stringify({ format: FORMAT, journal: gen, ...doc });
    const text = `${body.slice(0, -1)},"crc32":"${crcHex(body)}"}\n`;
    try {
      await writeFileAtomic(join(this.dir, SNAPSHOT), text);
    } catch (e) {
      await journal.close();
      await fsp.rm(jpath, { force: true });
      // A compaction needs room for a whole new snapshot next to the old one (and its journal)
      // until the rename: say how much, so a full disk is not a mystery.
      const bytes = Buffer.byteLength(text);
      if ((e as NodeJS.ErrnoException).code === "ENOSPC") {
        throw new Error(`${join(this.dir, SNAPSHOT)}: writing a new snapshot (${bytes} bytes) failed: ${errorMessage(e)}; compaction needs that much free space next to the current one until it replaces it`, { cause: e });
      }
      throw e;
    }
    const old = this.journal;
    const oldGen = this.gen;
    this.journal = journal;
    this.gen = gen;
    this.journalBytes = 0;
    this.snapshotBytes = Buffer.byteLength(text);
    this.compactNext = false;
    await old?.close().catch(() => undefined);
    // No longer named by the snapshot: its changes are in the snapshot now.
    await fsp.rm(join(this.dir, journalName(oldGen)), { force: true });
  }

  async close(): Promise<void> {
    const j = this.journal;
    this.journal = undefined;
    await j?.close().catch(() => undefined);
  }
}

function idOf(json: JsonValue, where: string): string {
  const id = (json as { id?: unknown } | null)?.id;
  if (typeof id !== "string") throw new Error(`${where}: no id`);
  return id;
}

/** Deletes journals the snapshot does not name (left by a crash during compaction). */
function removeJournals(dir: string, keep: number | undefined): void {
  for (const name of readdirSync(dir)) {
    const m = JOURNAL_RE.exec(name);
    if (m && Number(m[1]) !== keep) unlinkSync(join(dir, name));
  }
}

/**
 * Applies every journal line to `state`. A torn last line (no final newline) is not applied
 * and not cut here: its offset is returned (see the class comment).
 */
function replayJournal(path: string, state: RegistryState): { tornOffset: number | undefined; bytes: number } {
  const buf = readFileSync(path);
  let start = 0;
  let checked = false;
  for (;;) {
    const nl = buf.indexOf(0x0a, start);
    if (nl < 0) break;
    const where = `${path}: byte offset ${start}`;
    let text = buf.toString("utf8", start, nl);
    const m = CHECKED_LINE_RE.exec(text);
    if (m) {
      // The CRC covers the bytes as written, so a flipped byte anywhere in the JSON is caught.
      const json = buf.subarray(start + m[0].length, nl);
      if (crcHex(json) !== m[1]) throw new Error(`${where}: journal record does not match its crc32 ${m[1]} (a changed byte in bytes ${start}..${nl}); refusing to start over it`);
      text = json.toString("utf8");
      checked = true;
    } else if (checked) {
      throw new Error(`${where}: journal record without a crc32 after checksummed ones; refusing to start over it`);
    }
    let record: JournalRecord;
    try {
      record = JSON.parse(text) as JournalRecord;
      if (typeof record.v !== "string") throw new Error("no version");
    } catch (e) {
      throw new Error(`${where}: unparseable journal record (${errorMessage(e)}); refusing to start over it`);
    }
    applyRecord(state, record, where);
    state.ledgerSeqAt = where;
    start = nl + 1;
  }
  // Bytes after the last newline: a crash mid-append, the record was never acknowledged.
  return { tornOffset: start < buf.length ? start : undefined, bytes: start };
}

export function applyRecord(state: RegistryState, record: JournalRecord, where: string): void {
  checkRecord(record, where);
  state.resourceVersion = record.v;
  for (const json of record.put ?? []) state.instances.set(idOf(json, where), json);
  for (const id of record.del ?? []) state.instances.delete(id);
  if (record.meter) {
    state.meter ??= new Map();
    for (const [id, m] of Object.entries(record.meter)) {
      if (m) state.meter.set(id, m);
      else state.meter.delete(id);
    }
  }
  for (const json of record.snapPut ?? []) state.snapshots.set(idOf(json, where), json);
  for (const id of record.snapDel ?? []) state.snapshots.delete(id);
  if (record.pm !== undefined) {
    if (!state.pending) throw new Error(`${where}: pm (more pending entries) without pending ones before it; refusing to start over it`);
    // In place: a long outage replays many such records.
    state.pending.entries.push(...record.pm);
  } else {
    state.pending = record.pending;
  }
  state.ledgerSeq = record.ls;
  state.ledgerId = record.lid;
}

/** A record's shape, checked before anything of it is applied: a bad one names where it is. */
function checkRecord(r: JournalRecord, where: string): void {
  const fail = (what: string) => {
    throw new Error(`${where}: ${what}; refusing to start over it`);
  };
  if (typeof r !== "object" || r === null || Array.isArray(r)) fail("not a JSON object");
  if (typeof r.v !== "string" || !/^\d{1,19}$/.test(r.v)) fail("v is not a version");
  const strings = (x: unknown) => Array.isArray(x) && x.every((s) => typeof s === "string");
  const objects = (x: unknown) => Array.isArray(x) && x.every((o) => typeof o === "object" && o !== null && !Array.isArray(o));
  if (r.put !== undefined && !objects(r.put)) fail("put is not a list of instances");
  if (r.del !== undefined && !strings(r.del)) fail("del is not a list of ids");
  if (r.snapPut !== undefined && !objects(r.snapPut)) fail("snapPut is not a list of snapshots");
  if (r.snapDel !== undefined && !strings(r.snapDel)) fail("snapDel is not a list of ids");
  if (r.meter !== undefined) {
    if (typeof r.meter !== "object" || r.meter === null || Array.isArray(r.meter)) fail("meter is not an object");
    for (const m of Object.values(r.meter)) {
      if (m !== null && !(Array.isArray(m) && m.length === 3 && m.every((b) => b === 0 || b === 1))) fail("meter has a row that is not [0|1, 0|1, 0|1] or null");
    }
  }
  if (r.pending !== undefined) {
    const p = r.pending as Partial<StoredPending> | null;
    if (typeof p !== "object" || p === null || !Number.isSafeInteger(p.afterSeq) || (p.afterSeq ?? -1) < 0 || !objects(p.entries)) fail("pending is not {afterSeq, entries}");
  }
  if (r.ls !== undefined && !(Number.isSafeInteger(r.ls) && r.ls >= 0)) fail("ls is not a ledger seq");
  if (r.lid !== undefined && typeof r.lid !== "string") fail("lid is not a ledger id");
  if (r.pm !== undefined && (r.pending !== undefined || !objects(r.pm))) fail("pm is not a list of entries (or comes with pending)");
}
