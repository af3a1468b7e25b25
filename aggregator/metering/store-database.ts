import Database from "better-sqlite3";
import { ensurePrivateFile, tightenIfPresent } from "../../lib/private-file.js";
import { METERING_MIGRATIONS, migrate, type Migration } from "./store-migrations.js";
import { STORED_ENTRY_CHECKSUM_SQL, storedEntryChecksum } from "./stored-entry-checksum.js";

/**
 * Opens (creating if needed) the metering store's SQLite file with the settings its
 * guarantees rest on, and brings its schema up to date:
 * - WAL: readers (feed watchers, exports) never block the follower's merges, and a commit is
 *   one append to the WAL rather than a rewrite of pages;
 * - synchronous=FULL: the WAL is fsync'd at every commit, so a merge that returned survives a
 *   power loss — entries are money, and the agent may drop what the aggregator acknowledged;
 * - foreign_keys=ON: every entry belongs to a host cursor.
 * Any failure is an error naming the file; a file that is not a SQLite database or is corrupt
 * says so and is left untouched.
 */
export function openMeteringDatabase(file: string): Database.Database {
  return openStoreDatabase(file, METERING_MIGRATIONS, "FULL", (db) => {
    // Migration 3 fills the checksums of rows merged before it (store-migrations.ts).
    db.function(STORED_ENTRY_CHECKSUM_SQL, { deterministic: true, varargs: true }, (...cols: unknown[]) =>
      storedEntryChecksum(...(cols as Parameters<typeof storedEntryChecksum>)),
    );
  });
}

/** What a store's -wal file is cut back to after a checkpoint (PRAGMA journal_size_limit). */
export const WAL_SIZE_LIMIT_BYTES = 4 * 1024 * 1024;

/**
 * The same for any of the aggregator's SQLite stores: WAL, foreign keys, a busy timeout, its
 * own migrations; `synchronous` FULL where a commit must survive power loss (money), NORMAL
 * where the content can be rebuilt from the agents (the inventory view: a crash may lose the
 * last commits, never corrupt the file).
 */
export function openStoreDatabase(
  file: string,
  migrations: readonly Migration[],
  synchronous: "FULL" | "NORMAL",
  /** Called on the connection before migrating (SQL functions a migration uses). */
  prepare?: (db: Database.Database) => void,
): Database.Database {
  let db: Database.Database | undefined;
  try {
    // 0600 before SQLite opens it: SQLite would create it 0644 whatever the umask, and gives the
    // -wal and -shm it creates the database file's mode (security.md "State on disk"). Ones
    // left 0644 by an earlier version are narrowed too.
    ensurePrivateFile(file);
    tightenIfPresent(`${file}-wal`);
    tightenIfPresent(`${file}-shm`);
    db = new Database(file);
    const mode = db.pragma("journal_mode = WAL", { simple: true });
    if (mode !== "wal") throw new Error(`journal_mode is ${String(mode)}, WAL could not be enabled (filesystem without shared memory?)`);
    db.pragma(`synchronous = ${synchronous}`);
    db.pragma("foreign_keys = ON");
    // A reader in another process (a checker, an export) may briefly hold a lock the writer
    // needs (WAL reset, checkpoint): wait rather than fail the merge.
    db.pragma("busy_timeout = 5000");
    // The WAL file keeps its high-water mark unless told otherwise: one relist of a big host
    // left the inventory store's WAL at 47 MB over a 19 MB database, taking the disk the
    // metering store needs. After each checkpoint that resets it, SQLite truncates it to this.
    db.pragma(`journal_size_limit = ${WAL_SIZE_LIMIT_BYTES}`);
    prepare?.(db);
    migrate(db, file, migrations);
    return db;
  } catch (e) {
    db?.close();
    throw namedStoreError(file, e);
  }
}

/** SQLite's result codes for a file that is not a database, or whose pages do not add up. */
export function isCorruption(e: unknown): boolean {
  const code = e instanceof Error ? (e as Error & { code?: unknown }).code : undefined;
  return typeof code === "string" && (code === "SQLITE_NOTADB" || code.startsWith("SQLITE_CORRUPT"));
}

/**
 * The error to show for a failure on `file`: corruption is called so (the operator has to move
 * the file away or restore it: we never start over money), anything else gets the file name
 * prefixed unless it already names it.
 */
export function namedStoreError(file: string, e: unknown): Error {
  const err = e instanceof Error ? e : new Error(String(e));
  if (isCorruption(err)) {
    return new Error(
      `${file}: not a SQLite database or corrupt (${(err as Error & { code: string }).code}: ${err.message}); ` +
        "refusing to use it — move it away or restore a backup",
      { cause: err },
    );
  }
  if (err.message.includes(file)) return err;
  return new Error(`${file}: ${err.message}`, { cause: err });
}
