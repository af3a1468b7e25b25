import type Database from "better-sqlite3";
import { errorMessage } from "../../lib/error-message.js";

/**
 * The metering store's schema, as an ordered list of migrations. The schema version lives in
 * SQLite's `PRAGMA user_version` (in the file header, so it commits or rolls back with the
 * migration that set it). Append new migrations; never edit a released one — a store written
 * by an older fleetlet is brought forward by replaying the ones it has not seen.
 */
export interface Migration {
  version: number;
  description: string;
  sql: string;
}

export const METERING_MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    description: "entries keyed by (host, ledger_id, seq) with a gapless fleet_seq; host cursors; ledger changes",
    sql: `
      -- One row per host: where its follower resumes. Entries reference it, so a host that has
      -- entries can never lose its cursor.
      CREATE TABLE host_cursors (
        host           TEXT    NOT NULL PRIMARY KEY,
        ledger_id      TEXT    NOT NULL,
        seq            INTEGER NOT NULL CHECK (seq >= 0),
        ledger_changes INTEGER NOT NULL DEFAULT 0 CHECK (ledger_changes >= 0),
        updated_at_ms  INTEGER NOT NULL
      ) STRICT, WITHOUT ROWID;

      -- The merged feed. fleet_seq is the rowid, assigned as max + 1 inside the merge
      -- transaction (no AUTOINCREMENT: its sequence table would leave gaps after a rollback).
      -- line is the agent's ledger line byte for byte; kind .. emitted_at are parsed from it
      -- for filtering.
      CREATE TABLE metering_entries (
        fleet_seq    INTEGER NOT NULL PRIMARY KEY,
        host         TEXT    NOT NULL REFERENCES host_cursors (host),
        ledger_id    TEXT    NOT NULL,
        seq          INTEGER NOT NULL CHECK (seq >= 1),
        line         TEXT    NOT NULL,
        kind         TEXT    NOT NULL,
        vm_id        TEXT    NOT NULL,
        snapshot_id  TEXT    NOT NULL,
        emitted_at   TEXT    NOT NULL,
        merged_at_ms INTEGER NOT NULL
      ) STRICT;
      -- Exactly once: a redelivered (host, ledger_id, seq) is found here and skipped. Also the
      -- index for entriesOf(host, ledger) in seq order.
      CREATE UNIQUE INDEX metering_entries_by_ledger ON metering_entries (host, ledger_id, seq);
      -- Deliberately no index on vm_id / snapshot_id / kind yet: their insertion points are
      -- scattered, so each batch dirtied hundreds of index pages and the merge rate fell from
      -- ~150k to ~60k entries/s at 1M entries (bench/metering). Add one in a later migration
      -- when a read needs it; the columns are there.

      -- Every time a host's ledger_id changed: which ledger was replaced, how far it had been
      -- merged (entries after from_seq, if the agent had any, were never merged), and the new one.
      CREATE TABLE host_ledger_changes (
        host           TEXT    NOT NULL REFERENCES host_cursors (host),
        from_ledger_id TEXT    NOT NULL,
        from_seq       INTEGER NOT NULL,
        to_ledger_id   TEXT    NOT NULL,
        changed_at_ms  INTEGER NOT NULL
      ) STRICT;
      CREATE INDEX host_ledger_changes_by_host ON host_ledger_changes (host, from_ledger_id);
    `,
  },
  {
    version: 2,
    description: "gaps an operator accepted: entries a host's agent no longer has and the store never merged",
    sql: `
      CREATE TABLE metering_gaps (
        host           TEXT    NOT NULL REFERENCES host_cursors (host),
        ledger_id      TEXT    NOT NULL,
        after_seq      INTEGER NOT NULL CHECK (after_seq >= 0),
        resume_seq     INTEGER NOT NULL CHECK (resume_seq > after_seq + 1),
        accepted_at_ms INTEGER NOT NULL,
        reason         TEXT    NOT NULL
      ) STRICT;
      CREATE INDEX metering_gaps_by_host ON metering_gaps (host);
    `,
  },
  {
    version: 3,
    description: "a checksum of every stored entry row, verified whenever a row is read",
    // fleetlet_entry_crc is stored-entry-checksum.ts, registered on the connection before
    // migrating (store-database.ts): rows merged by earlier versions get theirs here. NULL
    // afterwards only by corruption, which reads refuse like a mismatch.
    sql: `
      ALTER TABLE metering_entries ADD COLUMN row_crc INTEGER;
      UPDATE metering_entries
         SET row_crc = fleetlet_entry_crc(fleet_seq, host, ledger_id, seq, line, kind, vm_id, snapshot_id, emitted_at, merged_at_ms);
    `,
  },
  {
    version: 4,
    description: "who accepted a host's ledger change, and why (changes need an admin's acceptance)",
    // Changes recorded before this version were followed on their own: their reason stays empty.
    sql: `
      ALTER TABLE host_ledger_changes ADD COLUMN reason TEXT NOT NULL DEFAULT '';
    `,
  },
];

/** The store was written by a newer fleetlet: its schema is unknown here, so it is not touched. */
export class NewerSchemaError extends Error {
  override readonly name = "NewerSchemaError";
}

export function schemaVersion(db: Database.Database): number {
  return db.pragma("user_version", { simple: true }) as number;
}

/**
 * Brings `db` (the file `file`) to the newest version in `migrations`: the pending ones are
 * applied in order in one IMMEDIATE transaction with the new user_version, so a crash or a
 * failing migration leaves the store at its old version, never half-migrated. A version newer
 * than the newest known one is refused with NewerSchemaError. Returns the versions.
 */
export function migrate(db: Database.Database, file: string, migrations: readonly Migration[] = METERING_MIGRATIONS): { from: number; to: number } {
  migrations.forEach((m, i) => {
    if (m.version !== i + 1) throw new Error(`metering store migrations: entry ${i} has version ${m.version}, expected ${i + 1}`);
  });
  const known = migrations.length;
  const refuseNewer = (found: number): void => {
    if (found > known) {
      throw new NewerSchemaError(
        `${file}: schema version ${found} is newer than this fleetlet knows (${known}); ` +
          "it was written by a newer fleetlet — run that version or restore a backup; the file was not modified",
      );
    }
  };
  const before = schemaVersion(db);
  refuseNewer(before);
  if (before === known) return { from: before, to: known };
  const from = db
    .transaction((): number => {
      // Read again under the write lock: another process may have migrated meanwhile.
      const current = schemaVersion(db);
      refuseNewer(current);
      for (const m of migrations) {
        if (m.version <= current) continue;
        try {
          db.exec(m.sql);
        } catch (e) {
          throw new Error(`${file}: schema migration ${m.version} (${m.description}) failed: ${errorMessage(e)}`, { cause: e });
        }
      }
      db.pragma(`user_version = ${known}`);
      return current;
    })
    .immediate();
  return { from, to: known };
}
