import { join } from "node:path";
import type Database from "better-sqlite3";
import { ledgerLineFields, type LedgerLineFields } from "./ledger-line-fields.js";
import { isCorruption, namedStoreError, openMeteringDatabase } from "./store-database.js";
import { storedEntryChecksum } from "./stored-entry-checksum.js";
import { errorMessage } from "../../lib/error-message.js";

/** The store's file in the aggregator's state dir (plus SQLite's -wal and -shm next to it). */
export const METERING_STORE_FILE = "metering.sqlite";

/** One entry of the merged fleet feed. */
export interface StoredEntry {
  /** Gapless from 1 across all hosts, in merge order. */
  fleetSeq: number;
  host: string;
  ledgerId: string;
  seq: number;
  /** The agent's ledger line, byte for byte. */
  line: string;
  kind: string;
  vmId: string;
  snapshotId: string;
  /** As in the line. */
  emittedAt: string;
  mergedAtMs: number;
}

/** Where a host's follower resumes. */
export interface HostCursor {
  host: string;
  ledgerId: string;
  /** Last merged seq of ledgerId; 0 = none yet. */
  seq: number;
  /** How many times this host's ledger_id changed (a replaced ledger: reported, never mixed). */
  ledgerChanges: number;
  updatedAtMs: number;
}

/** Entries (after_seq, resume_seq) of a ledger an operator gave up (AcceptMeteringGap). */
export interface AcceptedGap {
  host: string;
  ledgerId: string;
  afterSeq: number;
  resumeSeq: number;
  acceptedAtMs: number;
  reason: string;
}

/** One recorded ledger replacement of a host. */
export interface LedgerChange {
  host: string;
  fromLedgerId: string;
  /** How far the replaced ledger had been merged. */
  fromSeq: number;
  toLedgerId: string;
  changedAtMs: number;
  /** Who accepted the change and why ("" for changes followed on their own by older versions). */
  reason: string;
}

export interface MeteringBatchEntry {
  seq: number;
  line: string;
}

/** Entries are missing between the cursor and the batch (or inside it): nothing was written. */
export class MeteringGapError extends Error {
  override readonly name = "MeteringGapError";
}

/**
 * The batch contradicts the store: a key already merged with another line, or a ledger the
 * host had already replaced. Nothing was written; retrying will not help.
 */
export class MeteringConflictError extends Error {
  override readonly name: string = "MeteringConflictError";
}

/**
 * A batch of a ledger other than the host's cursor: the agent's ledger was lost or replaced, or
 * another agent answers at the host's address. Merged only after an admin accepted the change.
 */
export class MeteringLedgerChangedError extends MeteringConflictError {
  override readonly name = "MeteringLedgerChangedError";
  constructor(
    readonly host: string,
    readonly fromLedgerId: string,
    readonly fromSeq: number,
    readonly toLedgerId: string,
  ) {
    super(
      `host ${host} is followed at ledger ${fromLedgerId} (merged up to seq ${fromSeq}) but reports ledger ${toLedgerId}: nothing of it is merged until an admin accepts the change (fleetlet metering accept-gap ${host} --ledger-id ${toLedgerId} --resume-seq 1 --reason ...)`,
    );
  }
}

/** A malformed entry (its line, its seq, an empty host or ledger id): nothing was written. */
export class MeteringEntryError extends Error {
  override readonly name = "MeteringEntryError";
}

/**
 * A stored row that does not match its checksum (a flipped byte in the file): refused, never
 * served, and nothing is deleted or rewritten — the operator restores the store or re-merges.
 */
export class MeteringStoreCorruptError extends Error {
  override readonly name = "MeteringStoreCorruptError";
}

type MergeListener = (rows: StoredEntry[]) => void;

const ENTRY_COLUMNS =
  "fleet_seq AS fleetSeq, host, ledger_id AS ledgerId, seq, line, kind, vm_id AS vmId, snapshot_id AS snapshotId, emitted_at AS emittedAt, merged_at_ms AS mergedAtMs, row_crc AS rowCrc";
/** A row as read, with its checksum (checked and dropped before anything is returned). */
type CheckedRow = StoredEntry & { rowCrc: number | null };
const CURSOR_COLUMNS = "host, ledger_id AS ledgerId, seq, ledger_changes AS ledgerChanges, updated_at_ms AS updatedAtMs";

type InsertParams = [number, string, string, number, string, string, string, string, string, number, number];

/** Every statement the store runs, prepared once. */
function prepareStatements(db: Database.Database) {
  return {
    cursor: db.prepare<[string], HostCursor>(`SELECT ${CURSOR_COLUMNS} FROM host_cursors WHERE host = ?`),
    insertCursor: db.prepare<[string, string, number, number]>(
      "INSERT INTO host_cursors (host, ledger_id, seq, ledger_changes, updated_at_ms) VALUES (?, ?, ?, 0, ?)",
    ),
    updateCursor: db.prepare<[string, number, number, number, string]>(
      "UPDATE host_cursors SET ledger_id = ?, seq = ?, ledger_changes = ?, updated_at_ms = ? WHERE host = ?",
    ),
    insertChange: db.prepare<[string, string, number, string, number, string]>(
      "INSERT INTO host_ledger_changes (host, from_ledger_id, from_seq, to_ledger_id, changed_at_ms, reason) VALUES (?, ?, ?, ?, ?, ?)",
    ),
    changes: db.prepare<[string], LedgerChange>(
      "SELECT host, from_ledger_id AS fromLedgerId, from_seq AS fromSeq, to_ledger_id AS toLedgerId, changed_at_ms AS changedAtMs, reason FROM host_ledger_changes WHERE host = ? ORDER BY rowid",
    ),
    wasReplaced: db.prepare<[string, string, string, string], { found: number }>(
      `SELECT EXISTS (SELECT 1 FROM host_ledger_changes WHERE host = ? AND from_ledger_id = ?)
           OR EXISTS (SELECT 1 FROM metering_entries WHERE host = ? AND ledger_id = ?) AS found`,
    ),
    insertGap: db.prepare<[string, string, number, number, number, string]>(
      "INSERT INTO metering_gaps (host, ledger_id, after_seq, resume_seq, accepted_at_ms, reason) VALUES (?, ?, ?, ?, ?, ?)",
    ),
    gaps: db.prepare<[string], AcceptedGap>(
      "SELECT host, ledger_id AS ledgerId, after_seq AS afterSeq, resume_seq AS resumeSeq, accepted_at_ms AS acceptedAtMs, reason FROM metering_gaps WHERE host = ? ORDER BY rowid",
    ),
    maxFleetSeq: db.prepare<[], { last: number }>("SELECT coalesce(max(fleet_seq), 0) AS last FROM metering_entries"),
    // The conflict target is the (host, ledger_id, seq) key: a redelivered entry is skipped
    // (changes = 0) and then compared with what is stored.
    insertEntry: db.prepare<InsertParams>(
      `INSERT INTO metering_entries (fleet_seq, host, ledger_id, seq, line, kind, vm_id, snapshot_id, emitted_at, merged_at_ms, row_crc)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (host, ledger_id, seq) DO NOTHING`,
    ),
    storedRow: db.prepare<[string, string, number], CheckedRow>(`SELECT ${ENTRY_COLUMNS} FROM metering_entries WHERE host = ? AND ledger_id = ? AND seq = ?`),
    read: db.prepare<[number, number], CheckedRow>(`SELECT ${ENTRY_COLUMNS} FROM metering_entries WHERE fleet_seq >= ? ORDER BY fleet_seq LIMIT ?`),
    ofLedger: db.prepare<[string, string], CheckedRow>(`SELECT ${ENTRY_COLUMNS} FROM metering_entries WHERE host = ? AND ledger_id = ? ORDER BY seq`),
    ofHost: db.prepare<[string], CheckedRow>(`SELECT ${ENTRY_COLUMNS} FROM metering_entries WHERE host = ? ORDER BY fleet_seq`),
  };
}
type Statements = ReturnType<typeof prepareStatements>;

/**
 * The aggregator's metering store (metering.md, "The fleet feed"): the agents' ledger entries,
 * merged exactly once per (host, ledger_id, seq) in the same transaction that advances the
 * host's cursor, each given a gapless fleet_seq. One SQLite file; one writer (the aggregator
 * that claimed the state dir). All calls are synchronous: a merge is one short transaction
 * whose commit is fsync'd before it returns.
 */
export class MeteringStore {
  private readonly listeners = new Set<MergeListener>();
  private readonly stmt: Statements;
  private readonly mergeTransaction: Database.Transaction<
    (host: string, ledgerId: string, entries: readonly MeteringBatchEntry[], fields: readonly LedgerLineFields[], now: number) => StoredEntry[]
  >;

  private constructor(
    private readonly db: Database.Database,
    readonly file: string,
  ) {
    this.stmt = prepareStatements(db);
    this.mergeTransaction = db.transaction(
      (host: string, ledgerId: string, entries: readonly MeteringBatchEntry[], fields: readonly LedgerLineFields[], now: number): StoredEntry[] =>
        this.mergeInTransaction(host, ledgerId, entries, fields, now),
    );
  }

  /** Opens `<stateDir>/metering.sqlite`, creating or migrating it. */
  static open(stateDir: string): MeteringStore {
    const file = join(stateDir, METERING_STORE_FILE);
    return new MeteringStore(openMeteringDatabase(file), file);
  }

  cursor(host: string): HostCursor | undefined {
    return this.guard(() => this.stmt.cursor.get(host));
  }

  /** The gaps accepted for a host, oldest first. */
  acceptedGaps(host: string): AcceptedGap[] {
    return this.guard(() => this.stmt.gaps.all(host));
  }

  /**
   * Records that the entries of `ledgerId` after the host's cursor and before `resumeSeq` will
   * never be merged, and moves the cursor to resumeSeq - 1, in one transaction: the feed stays
   * gapless in fleet_seq, and the gap is on record with its reason. MeteringConflictError when
   * the host is not followed at that ledger or there is no gap (resumeSeq <= cursor + 1).
   */
  acceptGap(host: string, ledgerId: string, resumeSeq: number, reason: string, now = Date.now()): AcceptedGap {
    return this.guard(() =>
      this.db.transaction((): AcceptedGap => {
        const cursor = this.stmt.cursor.get(host);
        if (!cursor) throw new MeteringConflictError(`host ${host} has no metering cursor yet: there is nothing to skip`);
        if (cursor.ledgerId !== ledgerId) throw new MeteringConflictError(`host ${host} is followed at ledger ${cursor.ledgerId}, not ${ledgerId} (another ledger is accepted only once the host's agent reports it: pending_ledger_id in its metering status)`);
        if (!(resumeSeq > cursor.seq + 1)) throw new MeteringConflictError(`no gap: ledger ${ledgerId} of host ${host} is merged up to seq ${cursor.seq}, so ${resumeSeq} is not beyond the next entry`);
        this.stmt.insertGap.run(host, ledgerId, cursor.seq, resumeSeq, now, reason);
        this.stmt.updateCursor.run(ledgerId, resumeSeq - 1, cursor.ledgerChanges, now, host);
        return { host, ledgerId, afterSeq: cursor.seq, resumeSeq, acceptedAtMs: now, reason };
      }).immediate(),
    );
  }

  /**
   * An admin accepts that `host` now has the ledger `ledgerId` (its agent's metering directory was
   * lost or replaced): in one transaction the change is recorded with `reason`, entries of the new
   * ledger before `resumeSeq` are recorded as a gap when resumeSeq > 1, and the cursor moves to
   * (ledgerId, resumeSeq - 1). What the old ledger had past the cursor is given up. Without this
   * a merge of another ledger is refused (MeteringLedgerChangedError): never followed on its own.
   * MeteringConflictError when the host has no cursor (its first ledger needs no acceptance),
   * ledgerId is the current one, or it is a ledger the host already left (no going back).
   */
  acceptLedgerChange(host: string, ledgerId: string, resumeSeq: number, reason: string, now = Date.now()): { change: LedgerChange; gap?: AcceptedGap } {
    if (!Number.isSafeInteger(resumeSeq) || resumeSeq < 1) throw new RangeError(`acceptLedgerChange: resumeSeq must be a positive integer, got ${resumeSeq}`);
    return this.guard(() =>
      this.db.transaction(() => {
        const cursor = this.stmt.cursor.get(host);
        if (!cursor) throw new MeteringConflictError(`host ${host} has no metering cursor yet: its first ledger is followed without acceptance`);
        if (cursor.ledgerId === ledgerId) throw new MeteringConflictError(`host ${host} is already followed at ledger ${ledgerId}: no change to accept`);
        if (this.stmt.wasReplaced.get(host, ledgerId, host, ledgerId)!.found) {
          throw new MeteringConflictError(`host ${host}: ledger ${ledgerId} was followed before (current ${cursor.ledgerId}); refusing to go back to it`);
        }
        this.stmt.insertChange.run(host, cursor.ledgerId, cursor.seq, ledgerId, now, reason);
        const gap = resumeSeq > 1 ? { host, ledgerId, afterSeq: 0, resumeSeq, acceptedAtMs: now, reason } : undefined;
        if (gap) this.stmt.insertGap.run(host, ledgerId, 0, resumeSeq, now, reason);
        this.stmt.updateCursor.run(ledgerId, resumeSeq - 1, cursor.ledgerChanges + 1, now, host);
        const change: LedgerChange = { host, fromLedgerId: cursor.ledgerId, fromSeq: cursor.seq, toLedgerId: ledgerId, changedAtMs: now, reason };
        return gap ? { change, gap } : { change };
      }).immediate(),
    );
  }

  /** The host's ledger replacements, oldest first. */
  ledgerChanges(host: string): LedgerChange[] {
    return this.guard(() => this.stmt.changes.all(host));
  }

  /**
   * Merges one follower batch: entries of `ledgerId` for `host`, in seq order, contiguous,
   * starting at most at cursor.seq + 1 (a start at or below the cursor is a redelivery: those
   * entries are skipped). In one transaction: the new entries get fleet_seq max + 1, + 1 each,
   * and the host's cursor moves to the batch's last seq (never backwards). A ledgerId other than
   * the cursor's is refused with MeteringLedgerChangedError until an admin accepted the change
   * (acceptLedgerChange): a lost or replaced agent ledger is never followed on its own.
   * Throws MeteringGapError (entries missing), MeteringConflictError (a stored entry with
   * another line, another ledger) or MeteringEntryError (malformed input), all with nothing
   * written. Returns the rows newly inserted, then tells the subscribers.
   */
  merge(host: string, ledgerId: string, entries: readonly MeteringBatchEntry[]): StoredEntry[] {
    if (typeof host !== "string" || host === "") throw new MeteringEntryError("merge: host is empty");
    if (typeof ledgerId !== "string" || ledgerId === "") throw new MeteringEntryError(`merge: ledger id of host ${host} is empty`);
    const fields = entries.map((e, i) => {
      const where = `host ${host} ledger ${ledgerId} seq ${e.seq}`;
      if (!Number.isSafeInteger(e.seq) || e.seq < 1) throw new MeteringEntryError(`${where}: seq must be a positive integer`);
      if (i > 0 && e.seq !== entries[i - 1]!.seq + 1) {
        throw new MeteringGapError(`host ${host} ledger ${ledgerId}: batch not contiguous (seq ${entries[i - 1]!.seq} then ${e.seq}); nothing merged`);
      }
      try {
        return ledgerLineFields(e.line, e.seq);
      } catch (err) {
        throw new MeteringEntryError(`${where}: ${errorMessage(err)}`);
      }
    });
    const rows = this.guard(() => this.mergeTransaction.immediate(host, ledgerId, entries, fields, Date.now()));
    if (rows.length > 0) this.notify(rows);
    return rows;
  }

  /** Up to `limit` entries from fleet_seq `fromFleetSeq` (inclusive; 0 or 1 = from the start). */
  read(fromFleetSeq: number, limit: number): StoredEntry[] {
    if (!Number.isSafeInteger(fromFleetSeq) || fromFleetSeq < 0) throw new RangeError(`read: fromFleetSeq must be a non-negative integer, got ${fromFleetSeq}`);
    if (!Number.isSafeInteger(limit) || limit < 0) throw new RangeError(`read: limit must be a non-negative integer, got ${limit}`);
    if (limit === 0) return [];
    return this.guard(() => this.stmt.read.all(fromFleetSeq, limit).map((r) => this.checked(r)));
  }

  /** The highest fleet_seq merged; 0 when the store is empty. */
  lastFleetSeq(): number {
    return this.guard(() => this.stmt.maxFleetSeq.get()!.last);
  }

  /**
   * A host's entries for the checker: of one ledger in seq order, or (no ledgerId) of all its
   * ledgers in merge order — each ledger in seq order, ledgers in the order they were followed.
   */
  entriesOf(host: string, ledgerId?: string): StoredEntry[] {
    return this.guard(() => (ledgerId === undefined ? this.stmt.ofHost.all(host) : this.stmt.ofLedger.all(host, ledgerId)).map((r) => this.checked(r)));
  }

  /**
   * `listener` is called after each committed merge that inserted rows, with those rows (in
   * fleet_seq order), before merge() returns. It must not throw: if one does, the others still
   * run and the error is rethrown asynchronously (uncaught) — the merge has committed either way.
   * Returns the unsubscribe function.
   */
  subscribe(listener: MergeListener): () => void {
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  }

  /** Closes the file (idempotent); later calls throw. */
  close(): void {
    this.listeners.clear();
    if (this.db.open) this.db.close();
  }

  private mergeInTransaction(
    host: string,
    ledgerId: string,
    entries: readonly MeteringBatchEntry[],
    fields: readonly LedgerLineFields[],
    now: number,
  ): StoredEntry[] {
    const cursor = this.stmt.cursor.get(host);
    if (cursor !== undefined && cursor.ledgerId !== ledgerId) {
      if (this.stmt.wasReplaced.get(host, ledgerId, host, ledgerId)!.found) {
        throw new MeteringConflictError(`host ${host}: ledger ${ledgerId} was already replaced (current ${cursor.ledgerId}); refusing to go back to it; nothing merged`);
      }
      throw new MeteringLedgerChangedError(host, cursor.ledgerId, cursor.seq, ledgerId);
    }
    const expectedFirst = cursor !== undefined ? cursor.seq + 1 : 1;
    if (entries.length > 0 && entries[0]!.seq > expectedFirst) {
      const what = cursor === undefined ? "a new host's ledger" : `cursor at ${cursor.seq}, the batch`;
      throw new MeteringGapError(
        `host ${host} ledger ${ledgerId}: ${what} must start at seq ${expectedFirst}, got ${entries[0]!.seq} (seqs ${expectedFirst}..${entries[0]!.seq - 1} missing); nothing merged`,
      );
    }
    const lastSeq = entries.length > 0 ? entries[entries.length - 1]!.seq : 0;

    // The parent row first (foreign key), already at its final seq: it commits with the entries.
    if (cursor === undefined) this.stmt.insertCursor.run(host, ledgerId, lastSeq, now);

    const rows: StoredEntry[] = [];
    let next = this.stmt.maxFleetSeq.get()!.last + 1;
    for (let i = 0; i < entries.length; i++) {
      const { seq, line } = entries[i]!;
      const f = fields[i]!;
      const crc = storedEntryChecksum(next, host, ledgerId, seq, line, f.kind, f.vmId, f.snapshotId, f.emittedAt, now);
      if (this.stmt.insertEntry.run(next, host, ledgerId, seq, line, f.kind, f.vmId, f.snapshotId, f.emittedAt, now, crc).changes === 1) {
        // At or below the cursor and not stored: inside a gap an operator accepted (given up
        // for good); the transaction is rolled back.
        if (cursor !== undefined && seq <= cursor.seq) {
          throw new MeteringConflictError(`host ${host} ledger ${ledgerId} seq ${seq}: inside an accepted gap (the cursor is at ${cursor.seq}); nothing merged`);
        }
        rows.push({ fleetSeq: next, host, ledgerId, seq, line, kind: f.kind, vmId: f.vmId, snapshotId: f.snapshotId, emittedAt: f.emittedAt, mergedAtMs: now });
        next++;
        continue;
      }
      const stored = this.checked(this.stmt.storedRow.get(host, ledgerId, seq)!).line;
      if (stored !== line) {
        throw new MeteringConflictError(
          `host ${host} ledger ${ledgerId} seq ${seq}: already merged with another line (stored ${stored}, redelivered ${line}); nothing merged`,
        );
      }
    }

    if (cursor !== undefined && lastSeq > cursor.seq) this.stmt.updateCursor.run(ledgerId, lastSeq, cursor.ledgerChanges, now, host);
    return rows;
  }

  private notify(rows: StoredEntry[]): void {
    for (const listener of [...this.listeners]) {
      try {
        listener(rows);
      } catch (e) {
        queueMicrotask(() => {
          throw e;
        });
      }
    }
  }

  /**
   * A row as read, checked against its checksum: a mismatch (or none) is refused naming the
   * file, the table, the host, the ledger and the seq — never served, never deleted.
   */
  private checked(row: CheckedRow): StoredEntry {
    const { rowCrc, ...entry } = row;
    const expected = storedEntryChecksum(entry.fleetSeq, entry.host, entry.ledgerId, entry.seq, entry.line, entry.kind, entry.vmId, entry.snapshotId, entry.emittedAt, entry.mergedAtMs);
    if (rowCrc !== expected) {
      throw new MeteringStoreCorruptError(
        `${this.file}: table metering_entries, host ${JSON.stringify(entry.host)}, ledger ${entry.ledgerId}, seq ${entry.seq} (fleet_seq ${entry.fleetSeq}): ` +
          `the stored row does not match its checksum (${rowCrc === null ? "none stored" : `stored ${rowCrc}, computed ${expected}`}); ` +
          "refusing to serve it — restore the store from a backup (docs/operations.md)",
      );
    }
    return entry;
  }

  /** Runs a database call; corruption found on the way is reported naming the file. */
  private guard<T>(call: () => T): T {
    try {
      return call();
    } catch (e) {
      throw isCorruption(e) ? namedStoreError(this.file, e) : e;
    }
  }
}
