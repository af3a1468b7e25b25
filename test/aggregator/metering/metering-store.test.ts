import { prng } from "../../helpers/random-message.js";
import { describe, it, afterEach } from "vitest";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { openSync, readFileSync, closeSync, writeSync, writeFileSync, fstatSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";
import Database from "better-sqlite3";
import {
  METERING_STORE_FILE,
  MeteringConflictError,
  MeteringEntryError,
  MeteringGapError,
  MeteringLedgerChangedError,
  MeteringStore,
  MeteringStoreCorruptError,
  type StoredEntry,
} from "../../../aggregator/metering/metering-store.js";
import { METERING_MIGRATIONS, migrate, schemaVersion } from "../../../aggregator/metering/store-migrations.js";
import { openMeteringDatabase } from "../../../aggregator/metering/store-database.js";
import { tempDir } from "../../helpers/temp-dir.js";
import { writerLine, type WriterConfig, type WriterReport } from "../../helpers/metering-store-writer.js";
import { builtHelper } from "../../helpers/paths.js";

const WRITER_JS = builtHelper("metering-store-writer");

const cleanups: (() => void)[] = [];
afterEach(() => {
  while (cleanups.length > 0) cleanups.pop()!();
});

/** A temp state dir removed after the test, and a store on it closed before that. */
function freshDir(): string {
  const dir = tempDir("metering-store");
  cleanups.unshift(dir.remove);
  return dir.path;
}
function openStore(dir: string): MeteringStore {
  const store = MeteringStore.open(dir);
  cleanups.push(() => store.close());
  return store;
}

/** A realistic ledger line (metering.md's example shape) for (vm, seq). */
function line(seq: number, kind = "vm.compute.start", vm = "vm1"): string {
  return `{"seq":${seq},"kind":"${kind}","vm_id":"${vm}","reason":"boot","hypervisor":"cloud-hypervisor","shape":{"cpu":4,"mem_bytes":1073741824,"storage_bytes":10737418240},"emitted_at":"2026-05-20T01:02:03.5Z"}`;
}
function batch(from: number, to: number, make: (seq: number) => string = (s) => line(s)): { seq: number; line: string }[] {
  const out = [];
  for (let seq = from; seq <= to; seq++) out.push({ seq, line: make(seq) });
  return out;
}

/** Every entry of the store; asserts fleet_seq is 1..N without a gap. */
function allEntries(store: MeteringStore): StoredEntry[] {
  const rows = store.read(0, 10_000_000);
  rows.forEach((r, i) => assert.equal(r.fleetSeq, i + 1, `fleet_seq gapless at index ${i}`));
  assert.equal(store.lastFleetSeq(), rows.length);
  return rows;
}

describe("MeteringStore", () => {
  it("creates its schema on an empty state dir: every migration, WAL, synchronous=FULL, foreign keys", () => {
    const dir = freshDir();
    const store = openStore(dir);
    assert.equal(store.file, join(dir, METERING_STORE_FILE));
    assert.equal(store.lastFleetSeq(), 0);
    assert.deepEqual(store.read(0, 10), []);
    assert.equal(store.cursor("h1"), undefined);
    assert.deepEqual(store.entriesOf("h1"), []);
    store.close();
    store.close(); // idempotent

    const db = new Database(join(dir, METERING_STORE_FILE), { readonly: true });
    try {
      assert.equal(schemaVersion(db), METERING_MIGRATIONS.length);
      assert.equal(db.pragma("journal_mode", { simple: true }), "wal");
      const tables = db.prepare<[], { name: string }>("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").all().map((r) => r.name);
      assert.deepEqual(tables, ["host_cursors", "host_ledger_changes", "metering_entries", "metering_gaps"]);
    } finally {
      db.close();
    }
    // synchronous and foreign_keys are per connection: check the store's own settings.
    const own = openMeteringDatabase(join(dir, METERING_STORE_FILE));
    try {
      assert.equal(own.pragma("synchronous", { simple: true }), 2, "FULL");
      assert.equal(own.pragma("foreign_keys", { simple: true }), 1);
      assert.throws(() => own.prepare("INSERT INTO metering_entries VALUES (1, 'nohost', 'L', 1, '{}', 'k', '', '', 't', 0, 0)").run(), /FOREIGN KEY/);
    } finally {
      own.close();
    }
  });

  it("applies pending migrations in order in one transaction; a failing one leaves the old version", () => {
    const dir = freshDir();
    const file = join(dir, "m.sqlite");
    const db = new Database(file);
    cleanups.push(() => db.close());
    const one = { version: 1, description: "a", sql: "CREATE TABLE a (x INTEGER);" };
    const badTwo = { version: 2, description: "b", sql: "CREATE TABLE b (x INTEGER); INSERT INTO nope VALUES (1);" };
    assert.throws(() => migrate(db, file, [one, badTwo]), (e: Error) => e.message.includes(file) && e.message.includes("migration 2 (b)"));
    assert.equal(schemaVersion(db), 0);
    assert.equal(db.prepare("SELECT name FROM sqlite_master WHERE name IN ('a', 'b')").all().length, 0, "migration 1 rolled back with 2");

    assert.deepEqual(migrate(db, file, [one]), { from: 0, to: 1 });
    const two = { version: 2, description: "b", sql: "CREATE TABLE b (x INTEGER);" };
    assert.deepEqual(migrate(db, file, [one, two]), { from: 1, to: 2 }, "only the pending one runs (a would fail if re-created)");
    assert.deepEqual(migrate(db, file, [one, two]), { from: 2, to: 2 });
    assert.throws(() => migrate(db, file, [one, { ...two, version: 3 }]), /version 3, expected 2/);
  });

  it("merges a batch: gapless fleet_seq, line verbatim, columns parsed, cursor advanced", () => {
    const store = openStore(freshDir());
    const snap = `{"seq":3,"kind":"snap.storage.start","snapshot_id":"s1","hypervisor":"firecracker","shape":{"storage_bytes":5},"emitted_at":"2026-05-20T01:02:03.123456789Z"}`;
    const before = Date.now();
    const rows = store.merge("h1", "L1", [
      { seq: 1, line: line(1) },
      { seq: 2, line: line(2, "vm.compute.stop") },
      { seq: 3, line: snap },
    ]);
    assert.deepEqual(
      rows.map((r) => [r.fleetSeq, r.host, r.ledgerId, r.seq, r.kind, r.vmId, r.snapshotId, r.emittedAt]),
      [
        [1, "h1", "L1", 1, "vm.compute.start", "vm1", "", "2026-05-20T01:02:03.5Z"],
        [2, "h1", "L1", 2, "vm.compute.stop", "vm1", "", "2026-05-20T01:02:03.5Z"],
        [3, "h1", "L1", 3, "snap.storage.start", "", "s1", "2026-05-20T01:02:03.123456789Z"],
      ],
    );
    assert.equal(rows[2]!.line, snap);
    assert.ok(rows.every((r) => r.mergedAtMs >= before && r.mergedAtMs <= Date.now()));
    assert.deepEqual(store.read(1, 10), rows, "what read returns is what merge returned");
    const c = store.cursor("h1")!;
    assert.deepEqual({ ...c, updatedAtMs: 0 }, { host: "h1", ledgerId: "L1", seq: 3, ledgerChanges: 0, updatedAtMs: 0 });
    assert.equal(c.updatedAtMs, rows[0]!.mergedAtMs);
    assert.deepEqual(store.merge("h1", "L1", []), [], "an empty batch of the same ledger is a no-op");
  });

  it("reopen keeps entries, cursors and ledger changes", () => {
    const dir = freshDir();
    const store = MeteringStore.open(dir);
    store.merge("h1", "L1", batch(1, 5));
    store.merge("h2", "M1", batch(1, 3));
    store.acceptLedgerChange("h1", "L2", 1, "test");
    store.merge("h1", "L2", batch(1, 2));
    const entries = allEntries(store);
    const cursors = [store.cursor("h1"), store.cursor("h2")];
    const changes = store.ledgerChanges("h1");
    store.close();

    const reopened = openStore(dir);
    assert.deepEqual(allEntries(reopened), entries);
    assert.deepEqual([reopened.cursor("h1"), reopened.cursor("h2")], cursors);
    assert.deepEqual(reopened.ledgerChanges("h1"), changes);
    assert.equal(reopened.merge("h1", "L2", batch(3, 3))[0]!.fleetSeq, 11, "fleet_seq continues after reopen");
  });

  it("a redelivered entry is a no-op: same rows, fleet_seq and cursor unchanged, no notification", () => {
    const store = openStore(freshDir());
    store.merge("h1", "L1", batch(1, 10));
    const notified: number[][] = [];
    store.subscribe((rows) => notified.push(rows.map((r) => r.seq)));
    const overlapping = store.merge("h1", "L1", batch(5, 12));
    assert.deepEqual(overlapping.map((r) => [r.seq, r.fleetSeq]), [[11, 11], [12, 12]], "only the new entries are inserted");
    const rows = allEntries(store);
    const cursor = store.cursor("h1");
    assert.deepEqual(store.merge("h1", "L1", batch(1, 12)), []);
    assert.deepEqual(store.merge("h1", "L1", batch(3, 4)), [], "a redelivery ending below the cursor does not move it back");
    assert.deepEqual(allEntries(store), rows);
    assert.deepEqual(store.cursor("h1"), cursor, "cursor not rewritten (updatedAtMs included)");
    assert.deepEqual(notified, [[11, 12]]);
  });

  it("a redelivered key with another line is a conflict, and nothing of its batch is written", () => {
    const store = openStore(freshDir());
    store.merge("h1", "L1", batch(1, 3));
    const entries = batch(3, 6);
    entries[0] = { seq: 3, line: line(3, "vm.compute.stop") };
    assert.throws(() => store.merge("h1", "L1", entries), (e: Error) => e instanceof MeteringConflictError && /seq 3: already merged with another line/.test(e.message));
    assert.equal(store.lastFleetSeq(), 3);
    assert.equal(store.cursor("h1")!.seq, 3);
  });

  it("fleet_seq is gapless across hosts, interleaved merges, redeliveries and refused batches", () => {
    const store = openStore(freshDir());
    const random = prng(7);
    const hosts = ["h1", "h2", "h3", "h4"];
    const merged = new Map<string, number>();
    let inserted = 0;
    for (let i = 0; i < 400; i++) {
      const host = hosts[Math.floor(random() * hosts.length)]!;
      const last = merged.get(host) ?? 0;
      if (random() < 0.1) {
        assert.throws(() => store.merge(host, `L-${host}`, batch(last + 2, last + 4)), MeteringGapError);
        continue;
      }
      const from = Math.max(1, last + 1 - Math.floor(random() * 3));
      const to = last + Math.floor(random() * 20);
      const rows = store.merge(host, `L-${host}`, batch(from, to, (s) => line(s, "vm.storage.start", host)));
      assert.deepEqual(rows.map((r) => r.seq), batch(last + 1, Math.max(last, to)).map((e) => e.seq));
      rows.forEach((r, k) => assert.equal(r.fleetSeq, inserted + k + 1));
      inserted += rows.length;
      merged.set(host, Math.max(last, to));
    }
    const all = allEntries(store);
    assert.equal(all.length, inserted);
    for (const host of hosts) {
      const own = store.entriesOf(host, `L-${host}`);
      assert.deepEqual(own.map((r) => r.seq), batch(1, merged.get(host) ?? 0).map((e) => e.seq), `${host}: seq 1..cursor, each once`);
      assert.ok(own.every((r) => r.vmId === host && r.line === line(r.seq, "vm.storage.start", host)));
      assert.equal(store.cursor(host)?.seq ?? 0, merged.get(host) ?? 0);
    }
  });

  it("a gap throws MeteringGapError and writes nothing", () => {
    const store = openStore(freshDir());
    assert.throws(() => store.merge("h1", "L1", batch(2, 4)), (e: Error) => e instanceof MeteringGapError && /must start at seq 1, got 2/.test(e.message));
    assert.equal(store.cursor("h1"), undefined, "no cursor for a host whose first batch was refused");
    store.merge("h1", "L1", batch(1, 10));
    const cursor = store.cursor("h1");
    assert.throws(() => store.merge("h1", "L1", batch(12, 15)), (e: Error) => e instanceof MeteringGapError && /seqs 11..11 missing/.test(e.message));
    const holed = [...batch(11, 12), ...batch(14, 15)];
    assert.throws(() => store.merge("h1", "L1", holed), (e: Error) => e instanceof MeteringGapError && /not contiguous \(seq 12 then 14\)/.test(e.message));
    assert.throws(() => store.merge("h1", "L1", [...batch(11, 12), ...batch(12, 12)]), MeteringGapError, "a duplicate inside a batch");
    assert.equal(store.lastFleetSeq(), 10);
    assert.deepEqual(store.cursor("h1"), cursor);
    assert.equal(store.merge("h1", "L1", batch(11, 11))[0]!.fleetSeq, 11);
  });

  it("another ledger is refused until an admin accepts the change; then followed from the accepted seq; old and new never mixed", () => {
    const store = openStore(freshDir());
    store.merge("h1", "A", batch(1, 5));
    store.merge("h2", "X", batch(1, 2));
    // Never followed on its own, not even an empty batch or one starting at seq 1.
    for (const entries of [batch(1, 3), []]) {
      assert.throws(
        () => store.merge("h1", "B", entries),
        (e: Error) => e instanceof MeteringLedgerChangedError && /followed at ledger A \(merged up to seq 5\) but reports ledger B: nothing of it is merged until an admin accepts/.test(e.message),
      );
    }
    assert.deepEqual({ ...store.cursor("h1")!, updatedAtMs: 0 }, { host: "h1", ledgerId: "A", seq: 5, ledgerChanges: 0, updatedAtMs: 0 }, "a refused change changes nothing");
    assert.equal(store.lastFleetSeq(), 7);
    assert.throws(() => store.acceptLedgerChange("h1", "A", 1, "x"), /already followed at ledger A/);
    assert.throws(() => store.acceptLedgerChange("h9", "B", 1, "x"), /no metering cursor yet/);
    assert.throws(() => store.acceptLedgerChange("h1", "B", 0, "x"), RangeError);

    const accepted = store.acceptLedgerChange("h1", "B", 1, "disk replaced (accepted by alice)", 1234);
    assert.deepEqual(accepted, { change: { host: "h1", fromLedgerId: "A", fromSeq: 5, toLedgerId: "B", changedAtMs: 1234, reason: "disk replaced (accepted by alice)" } });
    assert.throws(() => store.merge("h1", "B", batch(3, 4)), (e: Error) => e instanceof MeteringGapError && /must start at seq 1/.test(e.message));
    const rows = store.merge("h1", "B", batch(1, 3));
    assert.deepEqual(rows.map((r) => [r.fleetSeq, r.ledgerId, r.seq]), [[8, "B", 1], [9, "B", 2], [10, "B", 3]]);
    assert.deepEqual({ ...store.cursor("h1")!, updatedAtMs: 0 }, { host: "h1", ledgerId: "B", seq: 3, ledgerChanges: 1, updatedAtMs: 0 });
    assert.deepEqual(store.ledgerChanges("h1").map((c) => [c.fromLedgerId, c.fromSeq, c.toLedgerId, c.reason]), [["A", 5, "B", "disk replaced (accepted by alice)"]]);
    assert.deepEqual(store.entriesOf("h1", "A").map((r) => r.seq), [1, 2, 3, 4, 5]);
    assert.deepEqual(store.entriesOf("h1", "B").map((r) => r.seq), [1, 2, 3]);
    assert.deepEqual(store.entriesOf("h1").map((r) => `${r.ledgerId}${r.seq}`), ["A1", "A2", "A3", "A4", "A5", "B1", "B2", "B3"]);

    assert.throws(() => store.merge("h1", "A", batch(6, 7)), MeteringConflictError, "no going back to a replaced ledger");
    assert.throws(() => store.merge("h1", "A", batch(1, 1)), MeteringConflictError, "not even as a redelivery");
    assert.throws(() => store.acceptLedgerChange("h1", "A", 6, "x"), /followed before/, "nor by acceptance");
    assert.deepEqual(store.merge("h1", "B", batch(4, 4)).map((r) => r.seq), [4]);

    // Accepted at a later seq (the new ledger already dropped its start): a gap on record too.
    const later = store.acceptLedgerChange("h1", "C", 3, "late", 99);
    assert.deepEqual(later.gap, { host: "h1", ledgerId: "C", afterSeq: 0, resumeSeq: 3, acceptedAtMs: 99, reason: "late" });
    assert.deepEqual({ ...store.cursor("h1")!, updatedAtMs: 0 }, { host: "h1", ledgerId: "C", seq: 2, ledgerChanges: 2, updatedAtMs: 0 });
    assert.deepEqual(store.acceptedGaps("h1").map((g) => [g.ledgerId, g.afterSeq, g.resumeSeq]), [["C", 0, 3]]);
    assert.throws(() => store.merge("h1", "C", batch(1, 1)), MeteringConflictError, "inside the accepted gap");
    assert.equal(store.merge("h1", "C", batch(3, 3))[0]!.ledgerId, "C");
    assert.deepEqual(store.cursor("h2")!.ledgerChanges, 0, "other hosts untouched");
    allEntries(store);
  });

  it("reads by fleet cursor with a limit", () => {
    const store = openStore(freshDir());
    store.merge("h1", "L1", batch(1, 15));
    store.merge("h2", "L2", batch(1, 10));
    const seqs = (rows: StoredEntry[]) => rows.map((r) => r.fleetSeq);
    assert.deepEqual(seqs(store.read(0, 10)), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    assert.deepEqual(seqs(store.read(1, 3)), [1, 2, 3]);
    assert.deepEqual(seqs(store.read(11, 10)), [11, 12, 13, 14, 15, 16, 17, 18, 19, 20]);
    assert.deepEqual(seqs(store.read(21, 10)), [21, 22, 23, 24, 25]);
    assert.deepEqual(store.read(16, 1)[0]!.host, "h2");
    assert.deepEqual(store.read(26, 10), []);
    assert.deepEqual(store.read(5, 0), []);
    assert.throws(() => store.read(-1, 10), RangeError);
    assert.throws(() => store.read(1, 1.5), RangeError);
  });

  it("subscribers get each committed merge's new rows; unsubscribe stops them", () => {
    const store = openStore(freshDir());
    const seen: StoredEntry[][] = [];
    const off = store.subscribe((rows) => {
      assert.equal(store.lastFleetSeq(), rows[rows.length - 1]!.fleetSeq, "called after the commit");
      seen.push(rows);
    });
    const first = store.merge("h1", "L1", batch(1, 2));
    assert.throws(() => store.merge("h1", "L1", batch(5, 5)), MeteringGapError);
    const second = store.merge("h2", "L1", batch(1, 1));
    off();
    store.merge("h1", "L1", batch(3, 3));
    assert.deepEqual(seen, [first, second]);
  });

  it("refuses malformed entries, writing nothing", () => {
    const store = openStore(freshDir());
    const cases: [string, { seq: number; line: string }[], RegExp][] = [
      ["not JSON", [{ seq: 1, line: "{nope" }], /seq 1: line is not JSON/],
      ["not an object", [{ seq: 1, line: "[1]" }], /not a JSON object/],
      ["seq mismatch", [{ seq: 1, line: line(2) }], /line has seq 2, merged as seq 1/],
      ["no kind", [{ seq: 1, line: `{"seq":1,"emitted_at":"2026-05-20T01:02:03Z"}` }], /no kind/],
      ["no emitted_at", [{ seq: 1, line: `{"seq":1,"kind":"vm.compute.start"}` }], /no emitted_at/],
      ["non-string vm_id", [{ seq: 1, line: `{"seq":1,"kind":"k","vm_id":3,"emitted_at":"t"}` }], /non-string vm_id/],
      ["line break", [{ seq: 1, line: `{"seq":1,\n"kind":"k","emitted_at":"t"}` }], /line break/],
      ["seq 0", [{ seq: 0, line: line(0) }], /positive integer/],
      ["second entry bad", [{ seq: 1, line: line(1) }, { seq: 2, line: "" }], /seq 2: line is not JSON/],
    ];
    for (const [name, entries, message] of cases) {
      assert.throws(() => store.merge("h1", "L1", entries), (e: Error) => e instanceof MeteringEntryError && message.test(e.message), name);
    }
    assert.throws(() => store.merge("", "L1", batch(1, 1)), MeteringEntryError);
    assert.throws(() => store.merge("h1", "", batch(1, 1)), MeteringEntryError);
    assert.equal(store.lastFleetSeq(), 0);
    assert.equal(store.cursor("h1"), undefined);
  });

  it("refuses a store with a newer schema version than it knows, leaving it untouched", () => {
    const dir = freshDir();
    const store = MeteringStore.open(dir);
    store.merge("h1", "L1", batch(1, 3));
    store.close();
    const file = join(dir, METERING_STORE_FILE);
    const newer = METERING_MIGRATIONS.length + 1;
    const db = new Database(file);
    db.pragma(`user_version = ${newer}`);
    db.close();

    assert.throws(
      () => MeteringStore.open(dir),
      (e: Error) => e.message.startsWith(`${file}: schema version ${newer} is newer than this fleetlet knows (${METERING_MIGRATIONS.length})`),
    );
    const check = new Database(file, { readonly: true });
    try {
      assert.equal(schemaVersion(check), newer);
      assert.equal(check.prepare<[], { n: number }>("SELECT count(*) AS n FROM metering_entries").get()!.n, 3);
    } finally {
      check.close();
    }
  });

  it("refuses a file that is not a SQLite database, naming it and leaving it as it was", () => {
    const dir = freshDir();
    const file = join(dir, METERING_STORE_FILE);
    const garbage = Buffer.alloc(8192, "this is not sqlite ");
    writeFileSync(file, garbage);
    assert.throws(() => MeteringStore.open(dir), (e: Error) => e.message.startsWith(`${file}: not a SQLite database or corrupt (SQLITE_NOTADB`));
    assert.deepEqual(readFileSync(file), garbage);
  });

  it("reports corruption found after opening with the file name", () => {
    const dir = freshDir();
    const store = MeteringStore.open(dir);
    for (let i = 0; i < 20; i++) store.merge("h1", "L1", batch(i * 100 + 1, i * 100 + 100));
    store.close(); // checkpoints the WAL into the file
    const file = join(dir, METERING_STORE_FILE);
    // Overwrite every page after the first two (header + schema) with garbage: the entries'
    // b-tree pages no longer parse, while the open (header, schema, version) still succeeds.
    const fd = openSync(file, "r+");
    try {
      const size = fstatSync(fd).size;
      const junk = Buffer.alloc(size - 8192, 0xa5);
      writeSync(fd, junk, 0, junk.length, 8192);
    } finally {
      closeSync(fd);
    }
    let reopened: MeteringStore;
    try {
      reopened = openStore(dir);
    } catch (e) {
      // Also acceptable: the damage was found while opening.
      assert.match((e as Error).message, new RegExp(`^${file.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}: not a SQLite database or corrupt`));
      return;
    }
    assert.throws(() => reopened.read(0, 5000), (e: Error) => e.message.startsWith(`${file}: not a SQLite database or corrupt (SQLITE_CORRUPT`));
  });

  it("after kill -9 at random moments, every reported merge is there exactly once, fleet_seq gapless, no half batch", async () => {
    const dir = freshDir();
    const hosts = ["h1", "h2", "h3"];
    const ledgers = new Map(hosts.map((h) => [h, `${h}-ledger-1`]));
    /** The last batch each host's writer reported committed, over all rounds. */
    const committed = new Map<string, { ledgerId: string; to: number }>();
    /** fleet_seq → (host, ledger, seq) as reported by merge(): must be the same after reopen. */
    const reportedFleetSeqs = new Map<number, string>();
    const random = prng(Date.now() & 0xffff);
    const rounds = 6;
    let killedMidMerge = 0;

    for (let round = 0; round < rounds; round++) {
      // Round 3 replaces h2's ledger: the kill may land in the merge that records the change.
      if (round === 3) ledgers.set("h2", "h2-ledger-2");
      const config: WriterConfig = { hosts: hosts.map((host) => ({ host, ledgerId: ledgers.get(host)! })), seed: Math.floor(random() * 2 ** 31) };
      const reports = await runWriterUntilKilled(dir, config, 100 + Math.floor(random() * 500));
      assert.equal(reports[0]?.t, "ready", `round ${round}: writer started`);
      let inFlight: Extract<WriterReport, { t: "intent" }> | undefined;
      for (const r of reports) {
        if (r.t === "intent") inFlight = r;
        if (r.t !== "committed") continue;
        inFlight = undefined;
        committed.set(r.host, { ledgerId: r.ledgerId, to: r.to });
        const newFrom = r.to - r.fleetSeqs.length + 1;
        r.fleetSeqs.forEach((fs, k) => reportedFleetSeqs.set(fs, `${r.host}/${r.ledgerId}/${newFrom + k}`));
      }
      if (inFlight) killedMidMerge++;
      assert.ok(reports.some((r) => r.t === "committed"), `round ${round}: the writer merged something before the kill`);

      const store = MeteringStore.open(dir);
      try {
        const all = allEntries(store);
        for (const r of all) {
          assert.equal(r.line, writerLine(r.host, r.ledgerId, r.seq), `fleet_seq ${r.fleetSeq}: the line is whole and belongs to its key`);
          const expected = reportedFleetSeqs.get(r.fleetSeq);
          if (expected !== undefined) assert.equal(`${r.host}/${r.ledgerId}/${r.seq}`, expected, `fleet_seq ${r.fleetSeq} unchanged since merge() returned it`);
        }
        assert.ok(reportedFleetSeqs.size <= all.length);
        for (const host of hosts) {
          const last = committed.get(host);
          const cursor = store.cursor(host);
          if (!last) {
            // Never reported committed: at most the in-flight batch made it.
            assert.ok(cursor === undefined || (inFlight?.host === host && cursor.seq === inFlight.to), `${host}: nothing merged but the in-flight batch`);
            continue;
          }
          assert.ok(cursor, `${host}: cursor present`);
          // The in-flight batch committed, or (a new ledger) only its acceptance did: cursor at seq 0.
          const inFlightHere = inFlight?.host === host && inFlight.ledgerId === cursor.ledgerId && (cursor.seq === inFlight.to || (cursor.seq === 0 && last.ledgerId !== cursor.ledgerId));
          if (!inFlightHere) assert.deepEqual([cursor.ledgerId, cursor.seq], [last.ledgerId, last.to], `${host}: cursor = last committed batch`);
          // Every ledger of the host: seq 1..max, each exactly once, in fleet order.
          const byLedger = new Map<string, number[]>();
          for (const r of store.entriesOf(host)) byLedger.set(r.ledgerId, [...(byLedger.get(r.ledgerId) ?? []), r.seq]);
          for (const [ledgerId, seqs] of byLedger) {
            assert.deepEqual(seqs, seqs.map((_, k) => k + 1), `${host}/${ledgerId}: seq 1..${seqs.length} exactly once`);
          }
          assert.equal(byLedger.get(cursor.ledgerId)?.length ?? 0, cursor.seq, `${host}: cursor = last stored seq of its ledger (no half batch)`);
        }
        if (round >= 3 && committed.get("h2")?.ledgerId === "h2-ledger-2") {
          assert.deepEqual(store.ledgerChanges("h2").map((c) => [c.fromLedgerId, c.toLedgerId]), [["h2-ledger-1", "h2-ledger-2"]]);
          assert.equal(store.cursor("h2")!.ledgerChanges, 1);
        }
      } finally {
        store.close();
      }
    }
    console.log(`${rounds} rounds, ${reportedFleetSeqs.size} entries reported merged, killed inside a merge in ${killedMidMerge} rounds`);
  });
});

/**
 * Runs the writer child on `dir` and SIGKILLs it `afterMs` after it reported ready; resolves
 * with every complete line it reported.
 */
async function runWriterUntilKilled(dir: string, config: WriterConfig, afterMs: number): Promise<WriterReport[]> {
  const child = spawn(process.execPath, [WRITER_JS, dir, JSON.stringify(config)], { stdio: ["ignore", "pipe", "pipe"] });
  const reports: WriterReport[] = [];
  let stderr = "";
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<string>((res) => child.once("exit", (code, signal) => res(signal ?? `exit ${code}`)));
  const lines = createInterface({ input: child.stdout });
  let timer: NodeJS.Timeout | undefined;
  lines.on("line", (l) => {
    // readline also emits a final line without its newline on close: a torn report, not one.
    let r: WriterReport;
    try {
      r = JSON.parse(l) as WriterReport;
    } catch {
      return;
    }
    reports.push(r);
    if (r.t === "ready") timer = setTimeout(() => child.kill("SIGKILL"), afterMs);
  });
  let deadline: NodeJS.Timeout | undefined;
  const stopped = await Promise.race([exited, new Promise<string>((res) => (deadline = setTimeout(() => res("timeout"), 10_000)))]);
  clearTimeout(deadline);
  clearTimeout(timer);
  if (stopped === "timeout") child.kill("SIGKILL");
  await new Promise<void>((res) => (child.stdout.readableEnded ? res() : child.stdout.once("end", res)));
  assert.equal(stopped, "SIGKILL", `writer should have been killed, got ${stopped}: ${stderr}`);
  return reports;
}

describe("MeteringStore.acceptGap", () => {
  it("records the gap and moves the cursor in one step; refuses when there is no gap or the ledger is not the host's", () => {
    const store = openStore(freshDir());
    assert.throws(() => store.acceptGap("h1", "L1", 10, "why"), /host h1 has no metering cursor yet/);
    store.merge("h1", "L1", batch(1, 3));
    assert.throws(() => store.acceptGap("h1", "L2", 10, "why"), MeteringConflictError);
    assert.throws(() => store.acceptGap("h1", "L1", 4, "why"), /no gap: ledger L1 of host h1 is merged up to seq 3/);
    const gap = store.acceptGap("h1", "L1", 10, "store lost", 1234);
    assert.deepEqual(gap, { host: "h1", ledgerId: "L1", afterSeq: 3, resumeSeq: 10, acceptedAtMs: 1234, reason: "store lost" });
    assert.equal(store.cursor("h1")!.seq, 9);
    assert.throws(() => store.merge("h1", "L1", batch(4, 5)), /seq 4: inside an accepted gap/, "entries inside the gap are never merged");
    assert.deepEqual(store.merge("h1", "L1", batch(2, 3)), [], "a redelivery below the gap is still a no-op");
    store.merge("h1", "L1", batch(10, 12));
    assert.deepEqual(allEntries(store).map((e) => [e.fleetSeq, e.seq]), [[1, 1], [2, 2], [3, 3], [4, 10], [5, 11], [6, 12]], "fleet_seq stays gapless");
    assert.deepEqual(store.acceptedGaps("h1"), [gap]);
    store.close();
  });
});

describe("MeteringStore: stored rows are checksummed (migration 3)", () => {
  it("a flipped byte in a stored line (or a column parsed from it) is refused on read, serve and redelivery, naming the table, host and seq; nothing is deleted", () => {
    const dir = freshDir();
    const store = openStore(dir);
    store.merge("h1", "L1", batch(1, 3, (s) => line(s, "vm.compute.start", `vm${s}`)));
    store.merge("h2", "L2", batch(1, 2));
    const good = allEntries(store);
    // Another process flips one byte of h1's seq 2 in the file's data (as a bad disk would).
    const raw = new Database(join(dir, METERING_STORE_FILE));
    raw.prepare("UPDATE metering_entries SET line = replace(line, '\"vm_id\":\"vm2\"', '\"vm_id\":\"vm7\"') WHERE host = 'h1' AND seq = 2").run();
    raw.close();
    const named = (e: unknown) =>
      e instanceof MeteringStoreCorruptError &&
      e.message.includes(join(dir, METERING_STORE_FILE)) &&
      /table metering_entries, host "h1", ledger L1, seq 2 \(fleet_seq 2\): the stored row does not match its checksum/.test(e.message);
    assert.throws(() => store.read(0, 100), named);
    assert.throws(() => store.read(2, 1), named);
    assert.throws(() => store.entriesOf("h1"), named);
    assert.throws(() => store.merge("h1", "L1", batch(2, 2, (s) => line(s, "vm.compute.start", `vm${s}`))), named);
    // Rows before it and other hosts' rows are still served; nothing was deleted.
    assert.deepEqual(store.read(0, 1), good.slice(0, 1));
    assert.deepEqual(store.entriesOf("h2"), good.filter((e) => e.host === "h2"));
    assert.equal(store.lastFleetSeq(), 5);
    // A flipped parsed column is caught the same way.
    const raw2 = new Database(join(dir, METERING_STORE_FILE));
    raw2.prepare("UPDATE metering_entries SET vm_id = 'vm9' WHERE host = 'h2' AND seq = 1").run();
    raw2.close();
    assert.throws(() => store.entriesOf("h2"), (e: unknown) => e instanceof MeteringStoreCorruptError && /host "h2", ledger L2, seq 1/.test(e.message));
  });

  it("a store from before checksums (schema 2) gets them for its existing rows when migrated, and they verify", () => {
    const dir = freshDir();
    const file = join(dir, METERING_STORE_FILE);
    const old = new Database(file);
    old.pragma("journal_mode = WAL");
    migrate(old, file, METERING_MIGRATIONS.slice(0, 2));
    old.prepare("INSERT INTO host_cursors (host, ledger_id, seq, ledger_changes, updated_at_ms) VALUES ('h1', 'L1', 2, 0, 5)").run();
    const insert = old.prepare("INSERT INTO metering_entries VALUES (?, 'h1', 'L1', ?, ?, 'vm.compute.start', 'vm1', '', '2026-05-20T01:02:03.5Z', 5)");
    insert.run(1, 1, line(1));
    insert.run(2, 2, line(2));
    old.close();
    const store = openStore(dir);
    assert.deepEqual(store.read(0, 10).map((e) => [e.fleetSeq, e.seq, e.line]), [[1, 1, line(1)], [2, 2, line(2)]]);
    store.merge("h1", "L1", batch(3, 3));
    assert.equal(allEntries(store).length, 3);
  });
});
