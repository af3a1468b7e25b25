/**
 * P7 (goals.md), durable appends: entries/s through one MeteringLedger with 64 concurrent
 * appenders, each waiting for its entry to be written and fdatasync'd (group commit shares one
 * write + fdatasync among the callers waiting together), against a raw Node loop on the same
 * disk writing the same bytes with one write + fdatasync per batch of the ledger's mean batch
 * size (rounds alternating), and per entry. Then the merge half (merge-rate.ts, the aggregator
 * store's).
 */
import { execFileSync } from "node:child_process";
import { MeteringLedger } from "../../agent/metering/ledger.js";
import { runBench, tempDir } from "../common/processes.js";
import { check, figure, fmt, percentile, printFigures, progress, verdict, type Figure } from "../common/report.js";
import { measureLedgerAppends, type AppendRun } from "./ledger-appends.js";
import { measureMergeRate } from "./merge-rate.js";
import { measureRawAppends, type RawRun } from "./raw-reference.js";

const APPENDERS = 64;
const TARGET_PER_S = 10_000;

runBench(async ({ smoke }) => {
  const rounds = smoke ? 2 : 6;
  const warmupMs = smoke ? 100 : 500;
  const roundMs = smoke ? 350 : 1000;
  const rawEntryMs = smoke ? 200 : 2000;
  const dir = tempDir("metering");
  const ledgerDir = `${dir}/ledger`;

  // Ledger and raw reference alternate in rounds: a shared VM disk's speed drifts by 2x within
  // seconds, so back-to-back phases would compare different disks.
  const ledger = MeteringLedger.open(ledgerDir);
  const run: AppendRun = { entries: 0, syncs: 0, seconds: 0, latenciesMs: [], sampleLines: [] };
  const raw: RawRun = { entries: 0, syncs: 0, seconds: 0 };
  let refBatch = 1;
  for (let r = 0; r < rounds; r++) {
    progress(`round ${r + 1}/${rounds}: ledger with ${APPENDERS} appenders ${roundMs} ms${r === 0 ? ` (+${warmupMs} ms warm-up)` : ""}, then the raw loop`);
    const l = await measureLedgerAppends(ledger, APPENDERS, r === 0 ? warmupMs : 0, roundMs);
    run.entries += l.entries;
    run.syncs += l.syncs;
    run.seconds += l.seconds;
    for (const ms of l.latenciesMs) run.latenciesMs.push(ms);
    run.sampleLines = l.sampleLines;
    check(run.syncs > 0 && run.entries > 0, `ledger wrote ${run.entries} entries with ${run.syncs} syncs`);
    refBatch = Math.max(1, Math.round(run.entries / run.syncs));
    const b = await measureRawAppends(dir, "raw-batch.jsonl", run.sampleLines, refBatch, roundMs);
    raw.entries += b.entries;
    raw.syncs += b.syncs;
    raw.seconds += b.seconds;
  }
  const lastSeq = ledger.lastSeq;
  await ledger.close();
  progress(`raw loop, write + fdatasync per entry, ${rawEntryMs} ms`);
  const rawEntry = await measureRawAppends(dir, "raw-entry.jsonl", run.sampleLines, 1, rawEntryMs);

  // What the run wrote must read back whole: a fast ledger that loses entries is a malfunction.
  progress(`checking the ${lastSeq} entries written (reopen, read back)`);
  const openStart = performance.now();
  const reopened = MeteringLedger.open(ledgerDir);
  const reopenMs = performance.now() - openStart;
  check(reopened.lastSeq === lastSeq && reopened.tornLinesRepaired === 0, `reopened at seq ${reopened.lastSeq} (${reopened.tornLinesRepaired} torn), wrote ${lastSeq}`);
  for (let from = 1; from <= lastSeq; from += 10_000) {
    const got = reopened.read(from, 10_000);
    check(got.length === Math.min(10_000, lastSeq - from + 1) && got.every((e, i) => e.seq === from + i), `entries from ${from} not gapless`);
  }
  await reopened.close();

  // ---- P7 second half: merge rate into the aggregator's store (merge-rate.ts) ----
  const mergeFigures: Figure[] = [];
  const mergeRows = await measureMergeRate({ smoke, dir, figures: mergeFigures });

  const perS = run.entries / run.seconds;
  const rawPerS = raw.entries / raw.seconds;
  const lineBytes = run.sampleLines.reduce((n, l) => n + Buffer.byteLength(l) + 1, 0) / run.sampleLines.length;
  printFigures(`metering (P7)${smoke ? " --smoke" : ""}`, [
    ["ledger dir filesystem", filesystemOf(dir)],
    ["appenders", `${APPENDERS} concurrent, one entry per append (~${fmt(lineBytes, 0)} B/line), ${fmt(run.seconds, 1)} s measured in ${rounds} rounds`],
    ["ledger entries/s", fmt(perS, 0)],
    ["ledger fdatasyncs/s", `${fmt(run.syncs / run.seconds, 0)}  (mean batch ${fmt(run.entries / run.syncs, 1)} entries)`],
    [
      "append latency ms",
      `p50 ${fmt(percentile(run.latenciesMs, 50))}  p99 ${fmt(percentile(run.latenciesMs, 99))}  max ${fmt(run.latenciesMs.reduce((m, v) => Math.max(m, v), 0))}  (${run.latenciesMs.length} appends)`,
    ],
    ["raw Node loop, batch of same size", `${fmt(rawPerS, 0)} entries/s, ${fmt(raw.syncs / raw.seconds, 0)} fdatasyncs/s (write + fdatasync per batch of ${refBatch}, rounds alternating)`],
    ["ratio ledger/raw", `${fmt(perS / rawPerS)}x`],
    ["raw Node loop, per entry", `${fmt(rawEntry.entries / rawEntry.seconds, 0)} entries/s (write + fdatasync per entry: no group commit)`],
    ["reopen (reads and checks every line)", `${fmt(reopenMs, 0)} ms for ${lastSeq} entries (${fmt((reopenMs * 1000) / lastSeq, 2)} us/entry)`],
    ["target P7 appends", `>= ${TARGET_PER_S.toLocaleString("en-US")}/s durable on one ledger: ${verdict(perS >= TARGET_PER_S)}`],
    ...mergeRows,
  ], [
    figure("ledger_entries_per_s", perS, "entries/s", "higher"),
    figure("append_latency_ms_p50", percentile(run.latenciesMs, 50), "ms", "lower"),
    figure("append_latency_ms_p99", percentile(run.latenciesMs, 99), "ms", "lower"),
    figure("raw_loop_entries_per_s", rawPerS, "entries/s", "higher"),
    figure("ratio_ledger_to_raw", perS / rawPerS, "x", "higher"),
    figure("reopen_us_per_entry", (reopenMs * 1000) / lastSeq, "us", "lower"),
    ...mergeFigures,
  ]);
});

/** `stat -f` type of a directory: fdatasync on tmpfs proves nothing, so the figures say where. */
function filesystemOf(dir: string): string {
  try {
    return execFileSync("stat", ["-f", "-c", "%T", dir], { encoding: "utf8" }).trim();
  } catch {
    return "unknown";
  }
}
