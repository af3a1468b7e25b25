import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { encodeLedgerLine, type LedgerEntryInput } from "../../agent/metering/ledger-entry.js";
import {
  IntervalPairer,
  emittedAtNs,
  formatIntervalDuration,
  formatShape,
  intervalJson,
  intervalsSummary,
  intervalsTable,
  pairIntervals,
  parseMeteringLine,
  type FeedEntry,
} from "../../cli/metering-intervals.js";
import { formatTable } from "../../cli/table.js";
import { create } from "@bufbuild/protobuf";
import { InstanceSchema, InstanceState, type Instance } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { lifecycleEntries, type MeterState } from "../../agent/metering/lifecycle-entries.js";

// `fleetlet metering intervals`' pairing, on real ledger lines (the agent's own encoder).

const T0 = Date.parse("2026-05-20T01:00:00Z");
const ns = (ms: number) => BigInt(ms) * 1_000_000n;
const SHAPE = { cpu: 4, memBytes: 1 << 30, storageBytes: 10 * 2 ** 30 };

/** A feed builder: entries get fleet_seq 1, 2, ... and per (host, ledger) seq 1, 2, ... */
function feed() {
  const entries: FeedEntry[] = [];
  const seqs = new Map<string, number>();
  const add = (host: string, ledgerId: string, atMs: number, e: Omit<LedgerEntryInput, "emittedAtNs" | "shape"> & { shape?: LedgerEntryInput["shape"] }) => {
    const k = `${host}/${ledgerId}`;
    const seq = (seqs.get(k) ?? 0) + 1;
    seqs.set(k, seq);
    entries.push({ fleetSeq: entries.length + 1, host, ledgerId, line: encodeLedgerLine(seq, { shape: {}, ...e, emittedAtNs: ns(T0 + atMs) }) });
    return api;
  };
  const api = { entries, add, h1: (atMs: number, e: Parameters<typeof add>[3]) => add("h1", "L1", atMs, e) };
  return api;
}

const compact = (r: ReturnType<typeof pairIntervals>) =>
  r.intervals.map((i) => `${i.host} ${i.family} ${i.id} ${i.status} ${i.start?.reason ?? (i.start ? "-" : "?")}/${i.stop?.reason ?? (i.stop ? "-" : "")} ${i.durationMs ?? "none"}`);

describe("pairing starts with stops", () => {
  it("closes compute and storage intervals of a VM by vm_id, in the order they started", () => {
    const f = feed()
      .h1(0, { kind: "vm.storage.start", vmId: "vm1", reason: "boot", hypervisor: "cloud-hypervisor", shape: SHAPE })
      .h1(0, { kind: "vm.compute.start", vmId: "vm1", reason: "boot", hypervisor: "cloud-hypervisor", shape: SHAPE })
      .h1(90_000, { kind: "vm.compute.stop", vmId: "vm1", reason: "stop-user", hypervisor: "cloud-hypervisor", shape: SHAPE })
      .h1(3_600_000, { kind: "vm.storage.stop", vmId: "vm1", reason: "vm-rm", hypervisor: "cloud-hypervisor", shape: SHAPE });
    const r = pairIntervals(f.entries, T0 + 10 * 3_600_000);
    assert.deepEqual(r.problems, []);
    assert.deepEqual(compact(r), ["h1 vm.storage vm1 closed boot/vm-rm 3600000", "h1 vm.compute vm1 closed boot/stop-user 90000"]);
    assert.deepEqual(r.intervals[1], {
      host: "h1",
      ledgerId: "L1",
      family: "vm.compute",
      id: "vm1",
      status: "closed",
      start: { fleetSeq: 2, seq: 2, reason: "boot", emittedAt: "2026-05-20T01:00:00Z" },
      stop: { fleetSeq: 3, seq: 3, reason: "stop-user", emittedAt: "2026-05-20T01:01:30Z" },
      shape: { cpu: 4, mem_bytes: 1073741824, storage_bytes: 10737418240 },
      hypervisor: "cloud-hypervisor",
      durationMs: 90_000,
    });
  });

  it("open intervals: measured up to asOf, never negative", () => {
    const f = feed()
      .h1(0, { kind: "vm.storage.start", vmId: "vm1", reason: "boot", shape: SHAPE })
      .h1(1000, { kind: "vm.compute.start", vmId: "vm1", reason: "boot", shape: SHAPE });
    assert.deepEqual(compact(pairIntervals(f.entries, T0 + 61_000)), ["h1 vm.storage vm1 open boot/ 61000", "h1 vm.compute vm1 open boot/ 60000"]);
    // An --as-of before the start (or a clock behind the agent's): 0 so far, not negative.
    assert.deepEqual(compact(pairIntervals(f.entries, T0 + 500)), ["h1 vm.storage vm1 open boot/ 500", "h1 vm.compute vm1 open boot/ 0"]);
  });

  it("restart, standby and crash sequences: each start pairs with the next stop", () => {
    const f = feed()
      .h1(0, { kind: "vm.storage.start", vmId: "vm1", reason: "boot", shape: SHAPE })
      .h1(0, { kind: "vm.compute.start", vmId: "vm1", reason: "boot", shape: SHAPE })
      .h1(10_000, { kind: "vm.compute.stop", vmId: "vm1", reason: "standby", shape: SHAPE })
      .h1(70_000, { kind: "vm.compute.start", vmId: "vm1", reason: "hibernate-wake", shape: SHAPE })
      .h1(75_000, { kind: "vm.compute.stop", vmId: "vm1", reason: "stop-user", shape: SHAPE })
      .h1(80_000, { kind: "vm.compute.start", vmId: "vm1", reason: "restart", shape: SHAPE })
      .h1(80_250, { kind: "vm.compute.stop", vmId: "vm1", reason: "stop-crash", shape: SHAPE })
      .h1(90_000, { kind: "vm.compute.start", vmId: "vm1", reason: "restart", shape: SHAPE });
    assert.deepEqual(compact(pairIntervals(f.entries, T0 + 100_000)), [
      "h1 vm.storage vm1 open boot/ 100000",
      "h1 vm.compute vm1 closed boot/standby 10000",
      "h1 vm.compute vm1 closed hibernate-wake/stop-user 5000",
      "h1 vm.compute vm1 closed restart/stop-crash 250",
      "h1 vm.compute vm1 open restart/ 10000",
    ]);
  });

  it("restore closes with the old shape and reopens with the new one; every entry keeps source_snapshot_id", () => {
    const big = { cpu: 8, memBytes: 2 ** 31, storageBytes: 20 * 2 ** 30 };
    const f = feed()
      .h1(0, { kind: "vm.storage.start", vmId: "vm1", reason: "boot", shape: SHAPE })
      .h1(0, { kind: "vm.compute.start", vmId: "vm1", reason: "boot", shape: SHAPE })
      .h1(5000, { kind: "vm.compute.stop", vmId: "vm1", sourceSnapshotId: "s1", reason: "restore", shape: SHAPE })
      .h1(5000, { kind: "vm.storage.stop", vmId: "vm1", sourceSnapshotId: "s1", reason: "restore", shape: SHAPE })
      .h1(5000, { kind: "vm.storage.start", vmId: "vm1", sourceSnapshotId: "s1", reason: "restore", shape: big })
      .h1(5000, { kind: "vm.compute.start", vmId: "vm1", sourceSnapshotId: "s1", reason: "restore", shape: big });
    const r = pairIntervals(f.entries, T0 + 6000);
    assert.deepEqual(compact(r), [
      "h1 vm.storage vm1 closed boot/restore 5000",
      "h1 vm.compute vm1 closed boot/restore 5000",
      "h1 vm.storage vm1 open restore/ 1000",
      "h1 vm.compute vm1 open restore/ 1000",
    ]);
    assert.equal(formatShape(r.intervals[0]!.shape), "4cpu 1Gi 10Gi");
    assert.equal(formatShape(r.intervals[3]!.shape), "8cpu 2Gi 20Gi");
    assert.equal(r.intervals[3]!.start?.sourceSnapshotId, "s1");
    assert.equal(r.intervals[1]!.stop?.sourceSnapshotId, "s1");
  });

  it("a resize splits the open intervals: each piece carries its own shape, the pieces add up", () => {
    const big = { cpu: 8, memBytes: 1 << 30, storageBytes: 10 * 2 ** 30 };
    const f = feed()
      .h1(0, { kind: "vm.storage.start", vmId: "vm1", reason: "boot", shape: SHAPE })
      .h1(0, { kind: "vm.compute.start", vmId: "vm1", reason: "boot", shape: SHAPE })
      .h1(60_000, { kind: "vm.compute.stop", vmId: "vm1", reason: "resize", shape: SHAPE })
      .h1(60_000, { kind: "vm.storage.stop", vmId: "vm1", reason: "resize", shape: SHAPE })
      .h1(60_000, { kind: "vm.storage.start", vmId: "vm1", reason: "resize", shape: big })
      .h1(60_000, { kind: "vm.compute.start", vmId: "vm1", reason: "resize", shape: big })
      .h1(90_000, { kind: "vm.compute.stop", vmId: "vm1", reason: "stop-user", shape: big });
    const r = pairIntervals(f.entries, T0 + 100_000);
    assert.deepEqual(r.problems, []);
    assert.deepEqual(compact(r), [
      "h1 vm.storage vm1 closed boot/resize 60000",
      "h1 vm.compute vm1 closed boot/resize 60000",
      "h1 vm.storage vm1 open resize/ 40000",
      "h1 vm.compute vm1 closed resize/stop-user 30000",
    ]);
    assert.deepEqual(r.intervals.map((i) => i.shape.cpu), [4, 4, 8, 8]);
    assert.ok(r.intervals.every((i) => i.stopShape === undefined));
    assert.equal(r.intervals.filter((i) => i.family === "vm.compute").reduce((a, i) => a + i.shape.cpu! * i.durationMs!, 0), 4 * 60_000 + 8 * 30_000);
    assert.equal(intervalsSummary(r.intervals), "3 closed, 1 open, 2 split by a resize");
    assert.match(intervalsTable(r.intervals).split("\n")[4]!, / 8cpu 1Gi 10Gi +resize\/stop-user$/);
  });

  it("a stop with another shape than its start (an agent that did not meter resizes) is billed at the start's shape and reported", () => {
    const f = feed()
      .h1(0, { kind: "vm.compute.start", vmId: "vm1", reason: "boot", shape: { cpu: 2 } })
      .h1(10_000, { kind: "vm.compute.stop", vmId: "vm1", reason: "stop-user", shape: { cpu: 6 } });
    const r = pairIntervals(f.entries, T0 + 20_000);
    assert.deepEqual([r.intervals[0]!.shape, r.intervals[0]!.stopShape], [{ cpu: 2 }, { cpu: 6 }]);
    assert.equal(intervalsSummary(r.intervals), "1 closed, 0 open, 1 stopped with another shape than started (a resize not metered; billed at the start's shape)");
    assert.match(intervalsTable(r.intervals).split("\n")[1]!, / 2cpu - - \(stopped as 6cpu - -\) +boot\/stop-user$/);
    assert.deepEqual(intervalJson(r.intervals[0]!).stop_shape, { cpu: 6 });
  });

  it("acceptance: over random lives with resizes, the intervals' vCPU- and byte-seconds equal the instance's, integrated independently", () => {
    let seed = 11;
    const rand = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
    const pick = <X,>(xs: readonly X[]) => xs[Math.floor(rand() * xs.length)]!;
    const S = InstanceState;
    for (let life = 0; life < 50; life++) {
      const f = feed();
      let seq = 0;
      let previous: Instance | undefined;
      let meter: MeterState | undefined;
      let atMs = 0;
      // The independent account: what the instance had, step by step.
      let cpuMs = 0;
      let memMs = 0;
      let diskMs = 0;
      let computeOpen = false;
      const steps = 5 + Math.floor(rand() * 20);
      for (let step = 0; step < steps; step++) {
        const state = step === 0 ? pick([S.CREATED, S.RUNNING]) : pick([S.RUNNING, S.RUNNING, S.STANDBY, S.STOPPED, S.ERROR]);
        const next = create(InstanceSchema, { id: "vm1", state, allocatedVcpus: pick([1, 2, 4, 16]), allocatedMemoryBytes: pick([1n, 3n]) << 30n, allocatedStorageBytes: pick([10n, 50n]) << 30n });
        const r = lifecycleEntries({ type: "upsert", previous, meter, next, cause: state === S.STANDBY ? "standby" : "request" }, ns(T0 + atMs));
        for (const e of r.entries) f.entries.push({ fleetSeq: f.entries.length + 1, host: "h1", ledgerId: "L1", line: encodeLedgerLine(++seq, e) });
        const forMs = 1 + Math.floor(rand() * 100_000);
        computeOpen = state === S.RUNNING || (state === S.ERROR && computeOpen);
        if (computeOpen) {
          cpuMs += next.allocatedVcpus * forMs;
          memMs += Number(next.allocatedMemoryBytes >> 30n) * forMs;
        }
        diskMs += Number(next.allocatedStorageBytes >> 30n) * forMs;
        atMs += forMs;
        previous = next;
        meter = r.meter;
      }
      const { intervals, problems } = pairIntervals(f.entries, T0 + atMs);
      assert.deepEqual(problems, []);
      const sum = (family: string, v: (i: (typeof intervals)[number]) => number) => intervals.filter((i) => i.family === family).reduce((a, i) => a + v(i) * i.durationMs!, 0);
      assert.equal(sum("vm.compute", (i) => i.shape.cpu ?? 0), cpuMs, `life ${life}: vCPU-ms`);
      assert.equal(sum("vm.compute", (i) => (i.shape.mem_bytes ?? 0) / 2 ** 30), memMs, `life ${life}: GiB-ms of memory`);
      assert.equal(sum("vm.storage", (i) => (i.shape.storage_bytes ?? 0) / 2 ** 30), diskMs, `life ${life}: GiB-ms of storage`);
      assert.ok(intervals.every((i) => i.stopShape === undefined && (i.status === "closed" || i.status === "open")), `life ${life}: every interval pairs cleanly`);
    }
  });

  it("snapshots pair by snapshot_id, never with a VM of the same id", () => {
    const f = feed()
      .h1(0, { kind: "vm.storage.start", vmId: "x", reason: "boot", shape: SHAPE })
      .h1(1000, { kind: "snap.storage.start", snapshotId: "x", hypervisor: "cloud-hypervisor", shape: { storageBytes: 2 ** 31 } })
      .h1(1000, { kind: "snap.storage.start", snapshotId: "s2", shape: { storageBytes: 1000 } })
      .h1(4000, { kind: "snap.storage.stop", snapshotId: "x", reason: "snap-rm", hypervisor: "cloud-hypervisor", shape: { storageBytes: 2 ** 31 } })
      .h1(5000, { kind: "vm.storage.stop", vmId: "x", reason: "vm-rm", shape: SHAPE });
    const r = pairIntervals(f.entries, T0 + 9000);
    assert.deepEqual(compact(r), ["h1 vm.storage x closed boot/vm-rm 5000", "h1 snap.storage x closed -/snap-rm 3000", "h1 snap.storage s2 open -/ 8000"]);
    assert.equal(formatShape(r.intervals[1]!.shape), "- - 2Gi");
    assert.equal(formatShape(r.intervals[2]!.shape), "- - 1000");
  });

  it("a clone's intervals carry the snapshot it came from", () => {
    const f = feed()
      .h1(0, { kind: "vm.storage.start", vmId: "c1", sourceSnapshotId: "s1", reason: "clone", shape: SHAPE })
      .h1(0, { kind: "vm.compute.start", vmId: "c1", sourceSnapshotId: "s1", reason: "clone", shape: SHAPE });
    const r = pairIntervals(f.entries, T0 + 1000);
    assert.deepEqual(compact(r), ["h1 vm.storage c1 open clone/ 1000", "h1 vm.compute c1 open clone/ 1000"]);
    assert.equal(r.intervals[0]!.start?.sourceSnapshotId, "s1");
  });

  it("a stop whose start was not read (before --from) is reported, not dropped", () => {
    const f = feed()
      .h1(0, { kind: "vm.compute.stop", vmId: "vm1", reason: "stop-user", shape: SHAPE })
      .h1(0, { kind: "vm.storage.stop", vmId: "vm1", reason: "vm-rm", shape: SHAPE })
      .h1(1000, { kind: "snap.storage.stop", snapshotId: "s9", reason: "snap-rm", shape: { storageBytes: 5 } });
    const r = pairIntervals(f.entries, T0 + 2000);
    assert.deepEqual(compact(r), ["h1 vm.compute vm1 no-start ?/stop-user none", "h1 vm.storage vm1 no-start ?/vm-rm none", "h1 snap.storage s9 no-start ?/snap-rm none"]);
    assert.deepEqual(r.intervals[0]!.shape, { cpu: 4, mem_bytes: 1073741824, storage_bytes: 10737418240 }, "the stop's shape");
    assert.equal(intervalsSummary(r.intervals, 7), "0 closed, 0 open, 3 stopped without a start (started before fleet_seq 7)");
  });

  it("the same vm_id on several hosts: separate intervals, each closed by its own host's stop", () => {
    const f = feed()
      .add("h1", "L1", 0, { kind: "vm.compute.start", vmId: "vm1", reason: "boot", shape: SHAPE })
      .add("h2", "L2", 1000, { kind: "vm.compute.start", vmId: "vm1", reason: "boot", shape: { cpu: 1 } })
      .add("h1", "L1", 3000, { kind: "vm.compute.stop", vmId: "vm1", reason: "stop-user", shape: SHAPE })
      .add("h2", "L2", 4000, { kind: "vm.compute.stop", vmId: "vm2", reason: "stop-user", shape: { cpu: 1 } })
      .add("h3", "L3", 5000, { kind: "vm.compute.stop", vmId: "vm1", reason: "stop-user", shape: { cpu: 1 } });
    assert.deepEqual(compact(pairIntervals(f.entries, T0 + 11_000)), [
      "h1 vm.compute vm1 closed boot/stop-user 3000",
      "h2 vm.compute vm1 open boot/ 10000",
      "h2 vm.compute vm2 no-start ?/stop-user none",
      "h3 vm.compute vm1 no-start ?/stop-user none",
    ]);
  });

  it("a replaced ledger: its open intervals are reported as such, and the new ledger's stops do not close them", () => {
    const f = feed()
      .add("h1", "old", 0, { kind: "vm.storage.start", vmId: "vm1", reason: "boot", shape: SHAPE })
      .add("h1", "old", 0, { kind: "vm.compute.start", vmId: "vm1", reason: "boot", shape: SHAPE })
      .add("h1", "old", 500, { kind: "vm.compute.stop", vmId: "vm1", reason: "stop-user", shape: SHAPE })
      .add("h1", "new", 1000, { kind: "vm.storage.stop", vmId: "vm1", reason: "vm-rm", shape: SHAPE })
      .add("h1", "new", 2000, { kind: "vm.storage.start", vmId: "vm1", reason: "boot", shape: SHAPE });
    const r = pairIntervals(f.entries, T0 + 3000);
    assert.deepEqual(compact(r), [
      "h1 vm.storage vm1 ledger-replaced boot/ none",
      "h1 vm.compute vm1 closed boot/stop-user 500",
      "h1 vm.storage vm1 no-start ?/vm-rm none",
      "h1 vm.storage vm1 open boot/ 1000",
    ]);
    assert.equal(r.intervals[0]!.ledgerId, "old");
    assert.equal(r.intervals[3]!.ledgerId, "new");
    assert.equal(intervalsSummary(r.intervals), "1 closed, 1 open, 1 stopped without a start, 1 left open in a replaced ledger");
  });

  it("a second start without a stop (never written by an agent) ends the first as no-stop", () => {
    const f = feed()
      .h1(0, { kind: "vm.compute.start", vmId: "vm1", reason: "boot", shape: SHAPE })
      .h1(1000, { kind: "vm.compute.start", vmId: "vm1", reason: "restart", shape: SHAPE })
      .h1(3000, { kind: "vm.compute.stop", vmId: "vm1", reason: "stop-user", shape: SHAPE });
    const r = pairIntervals(f.entries, T0 + 5000);
    assert.deepEqual(compact(r), ["h1 vm.compute vm1 no-stop boot/ none", "h1 vm.compute vm1 closed restart/stop-user 2000"]);
    assert.equal(intervalsSummary(r.intervals), "1 closed, 0 open, 1 started again without a stop");
  });

  it("lines it cannot pair are problems, named by fleet_seq, and the rest is still paired", () => {
    const entries: FeedEntry[] = [
      { fleetSeq: 1, host: "h1", ledgerId: "L", line: "{not json" },
      { fleetSeq: 2, host: "h1", ledgerId: "L", line: '{"seq":2,"kind":"vm.memory.start","vm_id":"a","shape":{},"emitted_at":"2026-05-20T01:00:00Z"}' },
      { fleetSeq: 3, host: "h1", ledgerId: "L", line: '{"seq":3,"kind":"vm.compute.start","shape":{},"emitted_at":"2026-05-20T01:00:00Z"}' },
      { fleetSeq: 4, host: "h1", ledgerId: "L", line: '{"seq":4,"kind":"vm.compute.start","vm_id":"a","shape":{},"emitted_at":"yesterday"}' },
      { fleetSeq: 5, host: "h1", ledgerId: "L", line: '{"seq":5,"kind":"vm.compute.start","vm_id":"a","shape":{},"emitted_at":"2026-05-20T01:00:00Z"}' },
    ];
    const r = pairIntervals(entries, T0 + 1000);
    assert.deepEqual(
      r.problems.map((p) => `${p.fleetSeq} ${p.message.replace(/:.*/, "")}`),
      ["1 not JSON", "2 unknown kind \"vm.memory.start\"", "3 vm.compute.start without vm_id", "4 emitted_at \"yesterday\" is not an RFC 3339 UTC time"],
    );
    assert.deepEqual(compact(r), ["h1 vm.compute a open -/ 1000"]);
  });

  it("page by page gives what all at once gives", () => {
    const f = feed();
    for (let k = 0; k < 40; k++) {
      f.add(`h${k % 3}`, "L", k * 1000, { kind: k % 6 < 3 ? "vm.compute.start" : "vm.compute.stop", vmId: `vm${k % 2}`, reason: k % 6 < 3 ? "boot" : "stop-user", shape: { cpu: 1 } });
    }
    const pairer = new IntervalPairer();
    for (let i = 0; i < f.entries.length; i += 7) for (const e of f.entries.slice(i, i + 7)) pairer.add(e);
    assert.deepEqual(pairer.finish(T0 + 60_000), pairIntervals(f.entries, T0 + 60_000).intervals);
  });
});

describe("reading and printing", () => {
  it("parses metering.md's example line", () => {
    const line = '{"seq":7,"kind":"vm.compute.start","vm_id":"vm1","reason":"boot","hypervisor":"cloud-hypervisor","shape":{"cpu":4,"mem_bytes":1073741824,"storage_bytes":10737418240},"emitted_at":"2026-05-20T01:02:03Z"}';
    assert.deepEqual(parseMeteringLine(line), {
      seq: 7,
      kind: "vm.compute.start",
      vm_id: "vm1",
      reason: "boot",
      hypervisor: "cloud-hypervisor",
      shape: { cpu: 4, mem_bytes: 1073741824, storage_bytes: 10737418240 },
      emitted_at: "2026-05-20T01:02:03Z",
    });
  });

  it("emitted_at keeps its nanoseconds, and durations are exact to the millisecond", () => {
    assert.equal(emittedAtNs("2026-05-20T01:02:03Z"), BigInt(Date.parse("2026-05-20T01:02:03Z")) * 1_000_000n);
    assert.equal(emittedAtNs("2026-05-20T01:02:03.5Z") - emittedAtNs("2026-05-20T01:02:03Z"), 500_000_000n);
    assert.equal(emittedAtNs("2026-05-20T01:02:03.000000001Z") - emittedAtNs("2026-05-20T01:02:03Z"), 1n);
    assert.throws(() => emittedAtNs("2026-05-20 01:02:03Z"), /not an RFC 3339/);
    const mk = (at: string, kind: string, seq: number) => ({ host: "h", ledgerId: "L", line: `{"seq":${seq},"kind":"${kind}","vm_id":"v","shape":{},"emitted_at":"${at}"}` });
    const r = pairIntervals([mk("2026-05-20T01:02:03.999999999Z", "vm.compute.start", 1), mk("2026-05-20T01:02:05.25Z", "vm.compute.stop", 2)], 0);
    assert.equal(r.intervals[0]!.durationMs, 1250);
  });

  it("shapes and durations, compact", () => {
    assert.equal(formatShape({ cpu: 4, mem_bytes: 1073741824, storage_bytes: 10737418240 }), "4cpu 1Gi 10Gi");
    assert.equal(formatShape({ cpu: 2, mem_bytes: 1.5 * 2 ** 30 }), "2cpu 1.5Gi -");
    assert.equal(formatShape({}), "-");
    assert.equal(formatShape({ mem_bytes: 512 * 2 ** 20 }), "- 512Mi -");
    assert.equal(formatIntervalDuration(undefined), "-");
    assert.equal(formatIntervalDuration(0), "0s");
    assert.equal(formatIntervalDuration(250), "250ms");
    assert.equal(formatIntervalDuration(1499), "1s");
    assert.equal(formatIntervalDuration(90_400), "1m30s");
    assert.equal(formatIntervalDuration(3_600_000 + 5000), "1h5s");
    assert.equal(formatIntervalDuration(-2000), "-2s");
  });

  it("the table: one row per interval, open ones say so, a missing start is '?'", () => {
    const f = feed()
      .h1(0, { kind: "vm.compute.stop", vmId: "vm0", reason: "stop-crash", shape: { cpu: 1 } })
      .h1(0, { kind: "vm.compute.start", vmId: "vm1", reason: "boot", shape: SHAPE })
      .h1(90_000, { kind: "vm.compute.stop", vmId: "vm1", reason: "stop-user", shape: SHAPE })
      .h1(100_000, { kind: "snap.storage.start", snapshotId: "s1", shape: { storageBytes: 2 ** 30 } });
    const r = pairIntervals(f.entries, T0 + 160_000);
    assert.equal(
      intervalsTable(r.intervals),
      formatTable(
        ["HOST", "KIND", "ID", "STATUS", "START", "STOP", "DURATION", "SHAPE", "REASONS"],
        [
          ["h1", "vm.compute", "vm0", "no-start", "-", "2026-05-20T01:00:00Z", "-", "1cpu - -", "?/stop-crash"],
          ["h1", "vm.compute", "vm1", "closed", "2026-05-20T01:00:00Z", "2026-05-20T01:01:30Z", "1m30s", "4cpu 1Gi 10Gi", "boot/stop-user"],
          ["h1", "snap.storage", "s1", "open", "2026-05-20T01:01:40Z", "open", "1m", "- - 1Gi", "-"],
        ],
      ),
    );
    assert.match(intervalsTable(r.intervals).split("\n")[0]!, /^HOST  KIND          ID   STATUS    START/);
    assert.deepEqual(intervalJson(r.intervals[1]!), {
      host: "h1",
      ledger_id: "L1",
      kind: "vm.compute",
      vm_id: "vm1",
      status: "closed",
      start: { fleet_seq: 2, seq: 2, reason: "boot", emitted_at: "2026-05-20T01:00:00Z" },
      stop: { fleet_seq: 3, seq: 3, reason: "stop-user", emitted_at: "2026-05-20T01:01:30Z" },
      duration_ms: 90_000,
      shape: { cpu: 4, mem_bytes: 1073741824, storage_bytes: 10737418240 },
    });
    assert.deepEqual(intervalJson(r.intervals[2]!), {
      host: "h1",
      ledger_id: "L1",
      kind: "snap.storage",
      snapshot_id: "s1",
      status: "open",
      start: { fleet_seq: 4, seq: 4, emitted_at: "2026-05-20T01:01:40Z" },
      duration_ms: 60_000,
      shape: { storage_bytes: 1073741824 },
    });
  });
});
