import type { Meter } from "@opentelemetry/api";
import type { InstanceRegistry } from "../inventory/instance-registry.js";
import type { MeteringLedger } from "./ledger.js";

const SYNC_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];

/**
 * The agent's metering instruments (issue 5 "Ops"): entries appended and fsyncs of the ledger,
 * how long each group commit's write + fdatasync took, how far the aggregator has acknowledged
 * (what retention must keep), and the registry commits that come before every append (journal
 * appends vs. snapshot rewrites, with their duration). Counters are read from the objects at
 * scrape time; only the durations need a hook.
 */
export function registerMeteringInstruments(meter: Meter, ledger: MeteringLedger, registry: InstanceRegistry): void {
  const appended = meter.createObservableCounter("fleetlet_metering_entries_appended", { unit: "{entry}", description: "Ledger entries made durable since the agent started" });
  const syncs = meter.createObservableCounter("fleetlet_metering_ledger_syncs", { description: "Write + fdatasync group commits of the ledger" });
  const lastSeq = meter.createObservableGauge("fleetlet_metering_ledger_last_seq", { description: "Highest durable seq of the ledger" });
  const unacked = meter.createObservableGauge("fleetlet_metering_unacknowledged_entries", { unit: "{entry}", description: "Durable entries the aggregator has not acknowledged yet (kept whatever the retention)" });
  const commits = meter.createObservableCounter("fleetlet_registry_commits", { description: "Durable registry commits, by kind (journal append or snapshot rewrite)" });
  // A ledger that cannot be written (its disk full): changes are applied, not yet metered.
  const pendingEntries = meter.createObservableGauge("fleetlet_metering_pending_entries", { unit: "{entry}", description: "Entries committed in the registry but not yet in the ledger (> 0: appends are failing and retried)" });
  const appendFailures = meter.createObservableCounter("fleetlet_metering_append_failures", { description: "Failed ledger appends of committed changes (each retried with backoff)" });
  const syncDuration = meter.createHistogram("fleetlet_metering_ledger_sync_duration_seconds", {
    unit: "s",
    description: "Write + fdatasync of one ledger group commit",
    advice: { explicitBucketBoundaries: SYNC_BUCKETS },
  });
  const commitDuration = meter.createHistogram("fleetlet_registry_commit_duration_seconds", {
    unit: "s",
    description: "One durable registry commit (before its entries are appended to the ledger)",
    advice: { explicitBucketBoundaries: SYNC_BUCKETS },
  });
  ledger.syncObserver = (seconds) => syncDuration.record(seconds);
  registry.store.commitObserver = (seconds, compaction) => commitDuration.record(seconds, { kind: compaction ? "snapshot" : "journal" });
  meter.addBatchObservableCallback(
    (r) => {
      r.observe(appended, ledger.appended);
      r.observe(syncs, ledger.syncs);
      r.observe(lastSeq, ledger.lastSeq);
      r.observe(unacked, Math.max(0, ledger.lastSeq - ledger.acknowledgedSeq));
      r.observe(commits, registry.store.commits - registry.store.compactions, { kind: "journal" });
      r.observe(commits, registry.store.compactions, { kind: "snapshot" });
      r.observe(pendingEntries, registry.pendingMeteringEntries);
      r.observe(appendFailures, registry.ledgerAppendFailures);
    },
    [appended, syncs, lastSeq, unacked, commits, pendingEntries, appendFailures],
  );
}

/** Whether the agent meters at all (0: `--metering off`, no ledger): dashboards tell "off" from "idle". */
export function registerMeteringEnabledGauge(meter: Meter, enabled: boolean): void {
  meter
    .createObservableGauge("fleetlet_metering_enabled", { description: "1 when the agent writes the metering ledger, 0 with --metering off" })
    .addCallback((r) => r.observe(enabled ? 1 : 0));
}
