/**
 * A child process for the metering store's kill -9 test: opens the store, then merges batches
 * for a few hosts in a loop, as a follower would, until it is killed. Before each merge it
 * reports the batch it is about to merge ("intent") and after merge() returned ("committed"),
 * one JSON line each on stdout, written before merge goes on (reportSync), so a reported line
 * was reported before the kill. Some batches start below the cursor (a redelivery overlap).
 *
 *   node metering-store-writer.js <stateDir> <json: {hosts: [{host, ledgerId}], seed}>
 *
 * The lines are a function of (host, ledger_id, seq), so the test can check every stored row.
 */
import { prng } from "./random-message.js";
import { reportSync } from "./sync-report.js";
import { fileURLToPath } from "node:url";
import { MeteringStore } from "../../aggregator/metering/metering-store.js";

export interface WriterConfig {
  hosts: { host: string; ledgerId: string }[];
  seed: number;
}

export type WriterReport =
  | { t: "ready"; cursors: { host: string; ledgerId: string; seq: number }[] }
  | { t: "intent"; host: string; ledgerId: string; from: number; to: number }
  | { t: "committed"; host: string; ledgerId: string; from: number; to: number; fleetSeqs: number[] };

const KINDS = ["vm.storage.start", "vm.compute.start", "vm.compute.stop", "snap.storage.start", "snap.storage.stop", "vm.storage.stop"] as const;

/** The ledger line of (host, ledgerId, seq): deterministic, shaped like the agent's. */
export function writerLine(host: string, ledgerId: string, seq: number): string {
  const kind = KINDS[seq % KINDS.length]!;
  const id = kind.startsWith("snap.") ? `"snapshot_id":"snap-${host}-${seq % 7}"` : `"vm_id":"vm-${host}-${seq % 5}"`;
  const ns = String((seq * 7919) % 1_000_000_000).padStart(9, "0").replace(/0+$/, "");
  return `{"seq":${seq},"kind":"${kind}",${id},"hypervisor":"cloud-hypervisor","shape":{"cpu":${1 + (seq % 8)},"mem_bytes":${(1 + (seq % 4)) * 1073741824}},"emitted_at":"2026-05-20T01:02:03${ns ? `.${ns}` : ""}Z","ledger":"${ledgerId}"}`;
}


function report(r: WriterReport): void {
  reportSync(JSON.stringify(r));
}

function main(stateDir: string, config: WriterConfig): void {
  const store = MeteringStore.open(stateDir);
  const random = prng(config.seed);
  report({
    t: "ready",
    cursors: config.hosts.flatMap(({ host }) => {
      const c = store.cursor(host);
      return c ? [{ host, ledgerId: c.ledgerId, seq: c.seq }] : [];
    }),
  });
  for (;;) {
    const { host, ledgerId } = config.hosts[Math.floor(random() * config.hosts.length)]!;
    const c = store.cursor(host);
    const merged = c && c.ledgerId === ledgerId ? c.seq : 0;
    const overlap = random() < 0.15 ? Math.min(merged, 1 + Math.floor(random() * 5)) : 0;
    const from = merged + 1 - overlap;
    const to = merged + 1 + Math.floor(random() * 40);
    const entries = [];
    for (let seq = from; seq <= to; seq++) entries.push({ seq, line: writerLine(host, ledgerId, seq) });
    report({ t: "intent", host, ledgerId, from, to });
    // A host given a new ledger by the test: accepted first (as an admin would), then merged.
    if (c && c.ledgerId !== ledgerId) store.acceptLedgerChange(host, ledgerId, 1, "writer: ledger replaced");
    const rows = store.merge(host, ledgerId, entries);
    report({ t: "committed", host, ledgerId, from, to, fleetSeqs: rows.map((r) => r.fleetSeq) });
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  main(process.argv[2]!, JSON.parse(process.argv[3]!) as WriterConfig);
}
