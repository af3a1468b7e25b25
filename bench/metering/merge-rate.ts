/**
 * P7, aggregator side: how fast the metering store merges follower batches (MeteringStore.merge:
 * parse, dedupe on (host, ledger_id, seq), gapless fleet_seq, cursor, one fsync'd transaction
 * per batch), against a reference in the same run: bare better-sqlite3 INSERTs of the same rows
 * into the same schema with the same pragmas and batch size, without the parsing, the
 * redelivery check and the fleet_seq/cursor bookkeeping. The two are interleaved batch by batch,
 * so both see the same disk and the same neighbours.
 */
import { mkdirSync, rmSync, statSync } from "node:fs";
import { join } from "node:path";
import { MeteringStore, METERING_STORE_FILE } from "../../aggregator/metering/metering-store.js";
import { openMeteringDatabase } from "../../aggregator/metering/store-database.js";
import { check, figure, fmt, percentile, progress, verdict, type Figure } from "../common/report.js";

const TARGET_ENTRIES_PER_S = 50_000;
const HOSTS = 10;
/** Entries per follower transaction (a WatchMeteringEntries message or a few). */
const BATCH = 500;

interface Entry {
  seq: number;
  line: string;
  kind: string;
  vmId: string;
  snapshotId: string;
  emittedAt: string;
}

const KINDS = ["vm.storage.start", "vm.compute.start", "vm.compute.stop", "vm.compute.start", "snap.storage.start", "snap.storage.stop"] as const;

/** A ledger line as the agent writes it (metering.md's key order), varied by seq. */
function syntheticEntry(host: number, seq: number): Entry {
  const kind = KINDS[seq % KINDS.length]!;
  const snap = kind.startsWith("snap.");
  const vmId = snap ? "" : `vm-${host}-${seq % 100}`;
  const snapshotId = snap ? `snap-${host}-${seq % 50}` : "";
  const emittedAt = `2026-05-20T01:${String(Math.floor(seq / 60) % 60).padStart(2, "0")}:${String(seq % 60).padStart(2, "0")}.${String(seq % 1000).padStart(3, "0")}Z`;
  const ids = snap ? `"snapshot_id":"${snapshotId}"` : `"vm_id":"${vmId}","reason":"boot"`;
  const shape = snap ? `{"storage_bytes":10737418240}` : `{"cpu":4,"mem_bytes":1073741824,"storage_bytes":10737418240}`;
  const line = `{"seq":${seq},"kind":"${kind}",${ids},"hypervisor":"cloud-hypervisor","shape":${shape},"emitted_at":"${emittedAt}"}`;
  return { seq, line, kind, vmId, snapshotId, emittedAt };
}

/**
 * Entries made from real ledger lines (the append half's sample) when there are any: the line
 * after its leading `{"seq":N` (seq is always the first key) is kept, the seq is the batch's.
 */
function entryMaker(sampleLines: readonly string[] | undefined): (host: number, seq: number) => Entry {
  const tails = (sampleLines ?? []).flatMap((l) => {
    const m = /^\{"seq":\d+,/.exec(l);
    return m ? [l.slice(m[0].length)] : [];
  });
  if (tails.length === 0) return syntheticEntry;
  return (host, seq) => {
    const line = `{"seq":${seq},${tails[(host * 7919 + seq) % tails.length]!}`;
    const o = JSON.parse(line) as { kind: string; vm_id?: string; snapshot_id?: string; emitted_at: string };
    return { seq, line, kind: o.kind, vmId: o.vm_id ?? "", snapshotId: o.snapshot_id ?? "", emittedAt: o.emitted_at };
  };
}

function fileBytes(dir: string): number {
  let total = 0;
  for (const suffix of ["", "-wal"]) {
    try {
      total += statSync(join(dir, METERING_STORE_FILE + suffix)).size;
    } catch {
      // no WAL after a clean close
    }
  }
  return total;
}

/**
 * Runs the merge measurement in `opts.dir` (two subdirectories, removed afterwards) and returns
 * figure rows. `sampleLines`: real ledger lines to merge (else synthetic ones of the same shape).
 * `figures`: the machine-readable figures are pushed onto it (printFigures' --json output).
 */
export async function measureMergeRate(opts: { smoke: boolean; dir: string; sampleLines?: readonly string[]; figures?: Figure[] }): Promise<[string, string][]> {
  const entry = entryMaker(opts.sampleLines);
  const lineSource = opts.sampleLines && entry !== syntheticEntry ? `${opts.sampleLines.length} ledger lines as templates` : "synthetic lines";
  const total = opts.smoke ? 50_000 : 1_000_000;
  const perHost = total / HOSTS;
  const storeDir = join(opts.dir, "merge-store");
  const referenceDir = join(opts.dir, "merge-reference");
  mkdirSync(storeDir, { recursive: true });
  mkdirSync(referenceDir, { recursive: true });

  const store = MeteringStore.open(storeDir);
  const reference = openMeteringDatabase(join(referenceDir, METERING_STORE_FILE));
  const hostName = (h: number) => `host-${String(h).padStart(3, "0")}`;
  const ledgerId = (h: number) => `ledger-${h}-7f3a9c`;
  // The reference's cursors exist up front (the schema's foreign key); it never touches them again.
  const addCursor = reference.prepare<[string, string]>("INSERT INTO host_cursors (host, ledger_id, seq, ledger_changes, updated_at_ms) VALUES (?, ?, 0, 0, 0)");
  for (let h = 0; h < HOSTS; h++) addCursor.run(hostName(h), ledgerId(h));
  const insert = reference.prepare<[number, string, string, number, string, string, string, string, string, number]>(
    "INSERT INTO metering_entries (fleet_seq, host, ledger_id, seq, line, kind, vm_id, snapshot_id, emitted_at, merged_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
  );
  let referenceFleetSeq = 0;
  const referenceBatch = reference.transaction((host: string, ledger: string, entries: readonly Entry[], now: number) => {
    for (const e of entries) insert.run(++referenceFleetSeq, host, ledger, e.seq, e.line, e.kind, e.vmId, e.snapshotId, e.emittedAt, now);
  });

  progress(`metering merge: ${total} entries from ${HOSTS} hosts, ${BATCH} per transaction (${lineSource}), store and reference interleaved`);
  const storeMs: number[] = [];
  const referenceMs: number[] = [];
  const next = new Array<number>(HOSTS).fill(1);
  let merged = 0;
  try {
    // Round-robin over hosts, one batch each, as concurrent followers would commit them.
    for (let round = 0; merged < total; round++) {
      const h = round % HOSTS;
      if (next[h]! > perHost) continue;
      const last = Math.min(perHost, next[h]! + BATCH - 1);
      const entries: Entry[] = [];
      for (let seq = next[h]!; seq <= last; seq++) entries.push(entry(h, seq));
      const batch = entries.map((e) => ({ seq: e.seq, line: e.line }));
      const host = hostName(h);

      let t0 = performance.now();
      referenceBatch.immediate(host, ledgerId(h), entries, Date.now());
      referenceMs.push(performance.now() - t0);

      t0 = performance.now();
      const rows = store.merge(host, ledgerId(h), batch);
      storeMs.push(performance.now() - t0);
      check(rows.length === entries.length, `merge of ${host} ${next[h]}..${last} inserted ${rows.length} rows, expected ${entries.length}`);

      next[h] = last + 1;
      merged += entries.length;
      if (merged % 200_000 === 0) progress(`  ${merged} merged`);
      // Let the event loop breathe between batches, as the follower's stream callbacks would.
      if (round % 50 === 0) await new Promise<void>((resolve) => setImmediate(resolve));
    }
    check(store.lastFleetSeq() === total, `store holds fleet_seq up to ${store.lastFleetSeq()}, expected ${total}`);
    const referenceCount = reference.prepare<[], { n: number }>("SELECT count(*) AS n FROM metering_entries").get()!.n;
    check(referenceCount === total, `reference holds ${referenceCount} rows, expected ${total}`);
  } finally {
    store.close();
    reference.close();
  }

  const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
  const storeRate = total / (sum(storeMs) / 1000);
  const referenceRate = total / (sum(referenceMs) / 1000);
  const bytesPerEntry = fileBytes(storeDir) / total;
  rmSync(storeDir, { recursive: true, force: true });
  rmSync(referenceDir, { recursive: true, force: true });

  opts.figures?.push(
    figure("merge_entries_per_s", storeRate, "entries/s", "higher"),
    figure("merge_reference_entries_per_s", referenceRate, "entries/s", "higher"),
    figure("merge_ratio_store_to_reference", storeRate / referenceRate, "x", "higher"),
    figure("merge_batch_ms_p99", percentile(storeMs, 99), "ms", "lower"),
  );
  const rate = (r: number) => `${Math.round(r).toLocaleString("en-US")} entries/s`;
  return [
    ["merge: entries, hosts, per transaction", `${total.toLocaleString("en-US")}, ${HOSTS}, ${BATCH} (${lineSource}; WAL, synchronous=FULL: one fsync per batch)`],
    ["store merge rate", rate(storeRate)],
    ["reference: bare INSERT, same schema + pragmas", rate(referenceRate)],
    ["store / reference", fmt(storeRate / referenceRate)],
    ["store batch p50 / p99 (ms)", `${fmt(percentile(storeMs, 50))} / ${fmt(percentile(storeMs, 99))}`],
    ["reference batch p50 / p99 (ms)", `${fmt(percentile(referenceMs, 50))} / ${fmt(percentile(referenceMs, 99))}`],
    ["store file per entry (bytes)", fmt(bytesPerEntry, 0)],
    [`P7 merge >= ${TARGET_ENTRIES_PER_S.toLocaleString("en-US")} entries/s`, verdict(storeRate >= TARGET_ENTRIES_PER_S)],
  ];
}
