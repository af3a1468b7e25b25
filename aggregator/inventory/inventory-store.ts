import { join } from "node:path";
import type Database from "better-sqlite3";
import { fromBinary, toBinary } from "@bufbuild/protobuf";
import { InstanceSchema, SnapshotSchema, type Instance, type Snapshot } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { namedStoreError, openStoreDatabase } from "../metering/store-database.js";
import type { Migration } from "../metering/store-migrations.js";
import { errorMessage } from "../../lib/error-message.js";

export const INVENTORY_STORE_FILE = "inventory.sqlite";

export const INVENTORY_MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    description: "the merged inventory view: a cursor per host and the host's instances",
    sql: `
      -- Where the view of a host stands: the agent incarnation and resource_version it reflects.
      CREATE TABLE inventory_hosts (
        host             TEXT    NOT NULL PRIMARY KEY,
        incarnation      TEXT    NOT NULL,
        resource_version INTEGER NOT NULL CHECK (resource_version >= 0),
        last_seen_ms     INTEGER NOT NULL
      ) STRICT, WITHOUT ROWID;
      -- Each instance as the agent sent it (fleetlet.agent.v1.Instance, binary, with its
      -- resource_version): decoded once at start.
      CREATE TABLE inventory_instances (
        host     TEXT NOT NULL REFERENCES inventory_hosts (host) ON DELETE CASCADE,
        id       TEXT NOT NULL,
        instance BLOB NOT NULL,
        PRIMARY KEY (host, id)
      ) STRICT, WITHOUT ROWID;
    `,
  },
  {
    version: 2,
    description: "the hosts' snapshots (versioned in the agents' inventory feed); every host relisted once",
    sql: `
      -- Each snapshot as the agent sent it (fleetlet.agent.v1.Snapshot, binary, with its
      -- resource_version).
      CREATE TABLE inventory_snapshots (
        host     TEXT NOT NULL REFERENCES inventory_hosts (host) ON DELETE CASCADE,
        id       TEXT NOT NULL,
        snapshot BLOB NOT NULL,
        PRIMARY KEY (host, id)
      ) STRICT, WITHOUT ROWID;
      -- A cursor stored before snapshots were followed resumes a feed whose snapshots this view
      -- never saw: forget it, so every host is relisted (with its snapshots) at the next start.
      UPDATE inventory_hosts SET incarnation = '';
    `,
  },
];

export interface StoredHostView {
  host: string;
  incarnation: string;
  resourceVersion: number;
  lastSeenMs: number;
  instances: Instance[];
  snapshots: Snapshot[];
}

/**
 * The aggregator's last-known inventory on disk (inventory.md: "an aggregator restart serves
 * the previous view, marked STALE, until hosts resync"). Every batch a host's follower applies
 * is written here in one transaction with the host's cursor, before the view in memory moves:
 * the cursor on disk never runs ahead of the instances on disk. synchronous=NORMAL: a power
 * loss may lose the newest commits (the cursor with them, so the follower re-reads them), never
 * mix them.
 */
export class InventoryStore {
  private readonly stmts;

  private constructor(
    private readonly db: Database.Database,
    readonly file: string,
  ) {
    this.stmts = {
      upsertHost: db.prepare<[string, string, number, number]>(
        "INSERT INTO inventory_hosts (host, incarnation, resource_version, last_seen_ms) VALUES (?, ?, ?, ?) " +
          "ON CONFLICT (host) DO UPDATE SET incarnation = excluded.incarnation, resource_version = excluded.resource_version, last_seen_ms = excluded.last_seen_ms",
      ),
      putInstance: db.prepare<[string, string, Uint8Array]>("INSERT OR REPLACE INTO inventory_instances (host, id, instance) VALUES (?, ?, ?)"),
      deleteInstance: db.prepare<[string, string]>("DELETE FROM inventory_instances WHERE host = ? AND id = ?"),
      deleteHost: db.prepare<[string]>("DELETE FROM inventory_hosts WHERE host = ?"),
      hosts: db.prepare<[], { host: string; incarnation: string; resourceVersion: number; lastSeenMs: number }>(
        "SELECT host, incarnation, resource_version AS resourceVersion, last_seen_ms AS lastSeenMs FROM inventory_hosts ORDER BY host",
      ),
      instances: db.prepare<[], { host: string; instance: Buffer }>("SELECT host, instance FROM inventory_instances ORDER BY host, id"),
      putSnapshot: db.prepare<[string, string, Uint8Array]>("INSERT OR REPLACE INTO inventory_snapshots (host, id, snapshot) VALUES (?, ?, ?)"),
      deleteSnapshot: db.prepare<[string, string]>("DELETE FROM inventory_snapshots WHERE host = ? AND id = ?"),
      snapshots: db.prepare<[], { host: string; snapshot: Buffer }>("SELECT host, snapshot FROM inventory_snapshots ORDER BY host, id"),
    };
  }

  static open(stateDir: string): InventoryStore {
    const file = join(stateDir, INVENTORY_STORE_FILE);
    return new InventoryStore(openStoreDatabase(file, INVENTORY_MIGRATIONS, "NORMAL"), file);
  }

  /**
   * Runs a statement; SQLite's own errors ("database disk image is malformed") name no file, so
   * they are rethrown naming this store's.
   */
  private named<T>(f: () => T): T {
    try {
      return f();
    } catch (e) {
      throw namedStoreError(this.file, e);
    }
  }

  /** Every host's stored view (for the aggregator's start). */
  load(): StoredHostView[] {
    return this.named(() => this.loadViews());
  }

  private loadViews(): StoredHostView[] {
    const views = new Map<string, StoredHostView>();
    for (const h of this.stmts.hosts.all()) views.set(h.host, { ...h, instances: [], snapshots: [] });
    for (const row of this.stmts.instances.iterate()) {
      try {
        views.get(row.host)?.instances.push(fromBinary(InstanceSchema, row.instance));
      } catch (e) {
        throw namedStoreError(this.file, new Error(`host ${row.host}: an instance row does not decode (${errorMessage(e)})`));
      }
    }
    for (const row of this.stmts.snapshots.iterate()) {
      try {
        views.get(row.host)?.snapshots.push(fromBinary(SnapshotSchema, row.snapshot));
      } catch (e) {
        throw namedStoreError(this.file, new Error(`host ${row.host}: a snapshot row does not decode (${errorMessage(e)})`));
      }
    }
    return [...views.values()];
  }

  /** One applied batch of a host (instances and snapshots) and its new cursor, atomically. */
  apply(
    host: string,
    cursor: { incarnation: string; resourceVersion: number; lastSeenMs: number },
    put: Instance[],
    del: string[],
    snapshots: { put: Snapshot[]; del: string[] } = { put: [], del: [] },
  ): void {
    this.named(() =>
      this.db.transaction(() => {
        this.stmts.upsertHost.run(host, cursor.incarnation, cursor.resourceVersion, cursor.lastSeenMs);
        for (const i of put) this.stmts.putInstance.run(host, i.id, toBinary(InstanceSchema, i));
        for (const id of del) this.stmts.deleteInstance.run(host, id);
        for (const s of snapshots.put) this.stmts.putSnapshot.run(host, s.id, toBinary(SnapshotSchema, s));
        for (const id of snapshots.del) this.stmts.deleteSnapshot.run(host, id);
      })(),
    );
  }

  removeHost(host: string): void {
    this.named(() => this.stmts.deleteHost.run(host));
  }

  close(): void {
    this.db.close();
  }
}
