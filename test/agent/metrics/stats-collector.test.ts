import { afterEach, beforeEach, describe, it } from "vitest";
import assert from "node:assert/strict";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { InstanceSchema, InstanceState } from "../../../gen/fleetlet/agent/v1/inventory_pb.js";
import { InstanceRegistry } from "../../../agent/inventory/instance-registry.js";
import { validateInstance } from "../../../agent/inventory/instance-validation.js";
import { StatsCollector } from "../../../agent/metrics/stats-collector.js";
import { tempDir } from "../../helpers/temp-dir.js";
import { fixtureTree, statLine } from "../kernel/proc-fixture-tree.js";

// metrics.md "Behaviour checks" 1-7 on fixture trees, plus the ratios.

let tree: ReturnType<typeof fixtureTree>;
let state: ReturnType<typeof tempDir>;
let registry: InstanceRegistry;
let now: number;
let collector: StatsCollector;

const register = (init: MessageInitShape<typeof InstanceSchema>) =>
  registry.upsert(validateInstance(create(InstanceSchema, { id: "vm1", name: "one", ...init }), { tapPrefix: "fl-" }));

beforeEach(() => {
  tree = fixtureTree();
  state = tempDir("collector");
  registry = InstanceRegistry.open(state.path, tree);
  now = 1_000_000_000;
  collector = new StatsCollector(registry, {
    roots: tree,
    constants: { clockTicksPerSecond: 100, pageSizeBytes: 4096 },
    nowUsec: () => now,
  });
});

afterEach(() => {
  collector.close();
  tree.remove();
  state.remove();
});

describe("StatsCollector on fixture trees", () => {
  it("check 1: utime 150 + stime 50 at CLK_TCK 100 is 2,000,000 µs", async () => {
    tree.setProcess(42, statLine("we ird) x", 150, 50), "1000 250 100 10 0 300 0\n");
    const s = collector.measure(await register({ pid: 42 }));
    assert.equal(s.cpuUsec, 2_000_000n);
    assert.equal(s.cpuSeconds, 2);
    assert.deepEqual(s.unavailable, []);
  });
  it("check 1: CLK_TCK is honoured (250 Hz)", async () => {
    const c = new StatsCollector(registry, { roots: tree, constants: { clockTicksPerSecond: 250, pageSizeBytes: 4096 } });
    tree.setProcess(42, statLine("x", 150, 100), "1 1");
    assert.equal(c.measure(await register({ pid: 42 })).cpuUsec, 1_000_000n);
    c.close();
  });
  it("check 3: statm pages × page size, 4 KiB and 16 KiB", async () => {
    tree.setProcess(42, statLine("x", 1, 1), "1000 250 100 10 0 300 0\n");
    const inst = await register({ pid: 42 });
    const s = collector.measure(inst);
    assert.equal(s.memoryVmsBytes, 4_096_000n);
    assert.equal(s.memoryRssBytes, 1_024_000n);
    const c16 = new StatsCollector(registry, { roots: tree, constants: { clockTicksPerSecond: 100, pageSizeBytes: 16384 } });
    const s16 = c16.measure(inst);
    assert.equal(s16.memoryVmsBytes, 4_096_000n * 4n);
    assert.equal(s16.memoryRssBytes, 1_024_000n * 4n);
    c16.close();
  });
  it("check 4: the host's tx is what the instance received (swapped)", async () => {
    tree.setInterface("tap0", "1234\n", "5678\n");
    const s = collector.measure(await register({ tapDevice: "tap0", networkEnabled: true }));
    assert.equal(s.netRxBytes, 5678n);
    assert.equal(s.netTxBytes, 1234n);
  });
  it("derives the interface name from the id when networking is on and no name is given", async () => {
    tree.setInterface("fl-abcd1234", "1\n", "2\n");
    const inst = await registry.upsert(validateInstance(create(InstanceSchema, { id: "ABCD1234efgh5678", networkEnabled: true }), { tapPrefix: "fl-" }));
    assert.equal(inst.tapDevice, "fl-abcd1234");
    assert.equal(collector.measure(inst).netRxBytes, 2n);
  });
  it("check 5: tx_bytes missing → both network fields unset with a reason, CPU and memory present", async () => {
    tree.setProcess(42, statLine("x", 10, 10), "10 5");
    tree.setInterface("tap0", "1234\n", undefined);
    const s = collector.measure(await register({ pid: 42, tapDevice: "tap0" }));
    assert.equal(s.netRxBytes, undefined);
    assert.equal(s.netTxBytes, undefined);
    assert.equal(s.unavailable.length, 1);
    assert.match(s.unavailable[0] ?? "", /^network: interface tap0: /);
    assert.equal(s.cpuUsec, 200_000n);
    assert.equal(s.memoryRssBytes, 5n * 4096n);
  });
  it("check 6: a pid that does not exist → CPU and memory unset with the reason, still an answer", async () => {
    const s = collector.measure(await register({ pid: 4_000_000, allocatedVcpus: 2 }));
    assert.equal(s.cpuUsec, undefined);
    assert.equal(s.memoryRssBytes, undefined);
    assert.deepEqual(s.unavailable, ["cpu: pid 4000000 not found", "memory: pid 4000000 not found"]);
    assert.equal(s.allocatedVcpus, 2);
    assert.equal(s.instanceName, "one");
  });
  it("check 7: a reused pid (different start time) is treated as gone", async () => {
    tree.setProcess(42, statLine("old", 10, 10, 1000), "10 5");
    const inst = await register({ pid: 42 });
    assert.equal(inst.pidStartTime, 1000n);
    assert.equal(collector.measure(inst).cpuUsec, 200_000n);
    const gone: string[] = [];
    collector.onProcessGone = (i) => gone.push(i.id);
    tree.setProcess(42, statLine("new", 1, 1, 9999), "10 5");
    const s = collector.measure(inst);
    assert.equal(s.cpuUsec, undefined);
    assert.equal(s.memoryRssBytes, undefined);
    assert.match(s.unavailable[0] ?? "", /^cpu: pid 42 was reused by another process \(start time 9999, expected 1000\)$/);
    assert.deepEqual(gone, ["vm1"], "a RUNNING instance's process going away is signalled");
    collector.measure(inst);
    collector.measure(inst);
    assert.deepEqual(gone, ["vm1"], "once, not at every reading");
  });
  it("a start time learnt after registration is persisted, so a pid reused after a restart is caught", async () => {
    const inst = await register({ pid: 43 });
    assert.equal(inst.pidStartTime, undefined, "no such process at registration");
    tree.setProcess(43, statLine("late", 5, 5, 777), "1 1");
    assert.equal(collector.measure(inst).cpuUsec, 100_000n);
    assert.equal(registry.get("vm1")!.pidStartTime, 777n);
    // Written in the background: wait for that write.
    const writes = registry.writes;
    for (let i = 0; i < 200 && registry.writes === writes; i++) await new Promise((r) => setTimeout(r, 5));
    // "Restart": a new registry and collector over the same state; another process has pid 43.
    const reopened = InstanceRegistry.open(state.path, tree);
    assert.equal(reopened.get("vm1")!.pidStartTime, 777n);
    const c2 = new StatsCollector(reopened, { roots: tree, constants: { clockTicksPerSecond: 100, pageSizeBytes: 4096 } });
    tree.setProcess(43, statLine("other", 9, 9, 999), "1 1");
    const s = c2.measure(reopened.get("vm1")!);
    c2.close();
    assert.equal(s.cpuUsec, undefined);
    assert.match(s.unavailable[0] ?? "", /was reused by another process \(start time 999, expected 777\)/);
  });
  it("a garbled stat line is a reason, not a zero", async () => {
    tree.setProcess(42, "42 (x R 1 2", "10 5");
    const s = collector.measure(await register({ pid: 42 }));
    assert.equal(s.cpuUsec, undefined);
    assert.match(s.unavailable[0] ?? "", /^cpu: stat: no '\)'/);
  });
  it("an instance without pid or network has those fields simply unset", async () => {
    const s = collector.measure(await register({}));
    assert.equal(s.cpuUsec, undefined);
    assert.equal(s.netRxBytes, undefined);
    assert.deepEqual(s.unavailable, []);
  });
});

describe("ratios", () => {
  it("memory_utilization_ratio = rss / allocated (may exceed 1), unset when allocated is 0", async () => {
    tree.setProcess(42, statLine("x", 1, 1), "10 512");
    const s = collector.measure(await register({ pid: 42, allocatedMemoryBytes: 1024n * 1024n }));
    assert.equal(s.memoryUtilizationRatio, 2);
    const s0 = collector.measure(await register({ pid: 42, allocatedMemoryBytes: 0n }));
    assert.equal(s0.memoryUtilizationRatio, undefined);
  });
  it("cpu_utilization_ratio: Δcpu / (Δwall × vcpus); unset on the first sample and after a reset", async () => {
    tree.setProcess(42, statLine("x", 100, 0), "1 1");
    const inst = await register({ pid: 42, allocatedVcpus: 2 });
    assert.equal(collector.measure(inst).cpuUtilizationRatio, undefined, "first sample");
    // 1 s of wall time, 100 more ticks = 1 s of CPU over 2 vCPUs → 0.5
    now += 1_000_000;
    tree.setProcess(42, statLine("x", 200, 0), "1 1");
    assert.equal(collector.measure(inst).cpuUtilizationRatio, 0.5);
    // Counter went down: a restarted process; no ratio, new baseline.
    now += 1_000_000;
    tree.setProcess(42, statLine("x", 5, 0), "1 1");
    assert.equal(collector.measure(inst).cpuUtilizationRatio, undefined, "after a reset");
    now += 1_000_000;
    tree.setProcess(42, statLine("x", 105, 0), "1 1");
    assert.equal(collector.measure(inst).cpuUtilizationRatio, 0.5);
  });
  it("cpu_utilization_ratio needs a window of 100 ms; the baseline is renewed once it is 1 s old", async () => {
    tree.setProcess(42, statLine("x", 100, 0), "1 1");
    const inst = await register({ pid: 42, allocatedVcpus: 1 });
    collector.measure(inst);
    now += 5_000;
    tree.setProcess(42, statLine("x", 101, 0), "1 1");
    assert.equal(collector.measure(inst).cpuUtilizationRatio, undefined, "5 ms is no window for 10 ms ticks");
    now += 495_000;
    tree.setProcess(42, statLine("x", 125, 0), "1 1");
    assert.equal(collector.measure(inst).cpuUtilizationRatio, 0.5, "250 ms of CPU over the 500 ms since the baseline");
    now += 500_000;
    tree.setProcess(42, statLine("x", 200, 0), "1 1");
    assert.equal(collector.measure(inst).cpuUtilizationRatio, 1, "1 s since the baseline; renewed now");
    now += 500_000;
    tree.setProcess(42, statLine("x", 200, 0), "1 1");
    assert.equal(collector.measure(inst).cpuUtilizationRatio, 0, "idle since the renewed baseline");
  });
  it("cpu_utilization_ratio is unset when vcpus is 0", async () => {
    tree.setProcess(42, statLine("x", 100, 0), "1 1");
    const inst = await register({ pid: 42, allocatedVcpus: 0 });
    collector.measure(inst);
    now += 1_000_000;
    assert.equal(collector.measure(inst).cpuUtilizationRatio, undefined);
  });
});

describe("sweep", () => {
  it("covers RUNNING instances plus any listed by id, sorted by id", async () => {
    tree.setProcess(42, statLine("x", 1, 1), "1 1");
    await register({ id: "b", pid: 42 });
    await register({ id: "a", pid: 42 });
    await register({ id: "c", state: InstanceState.STOPPED });
    await register({ id: "d", state: InstanceState.CREATED });
    assert.deepEqual(collector.sweep().map((s) => s.instanceId), ["a", "b"]);
    assert.deepEqual(collector.sweep(["d"]).map((s) => s.instanceId), ["a", "b", "d"]);
  });
});

describe("recentSweep", () => {
  it("shares one sweep between callers within the max age, sweeps anew after it", async () => {
    tree.setProcess(42, statLine("x", 100, 0), "1 1");
    await register({ id: "a", pid: 42 });
    const first = collector.recentSweep(500);
    tree.setProcess(42, statLine("x", 200, 0), "1 1");
    now += 400_000;
    assert.equal(collector.recentSweep(500), first, "same sweep within 500 ms");
    assert.equal(first[0]!.cpuUsec, 1_000_000n);
    now += 200_000;
    const later = collector.recentSweep(500);
    assert.notEqual(later, first);
    assert.equal(later[0]!.cpuUsec, 2_000_000n);
    assert.notEqual(collector.recentSweep(0), later, "0 always sweeps anew");
  });
  it("ages the shared sweep on the monotonic clock: a wall-clock step neither keeps it nor drops it", async () => {
    let wall = 1_800_000_000_000_000;
    let mono = 5_000_000;
    const c = new StatsCollector(registry, { roots: tree, constants: { clockTicksPerSecond: 100, pageSizeBytes: 4096 }, nowUsec: () => wall, monoUsec: () => mono });
    tree.setProcess(42, statLine("x", 100, 0), "1 1");
    await register({ id: "a", pid: 42 });
    const first = c.recentSweep(500);
    wall += 3_600_000_000; // an hour forward, no time passed
    assert.equal(c.recentSweep(500), first, "still fresh: no time passed");
    wall -= 2 * 3_600_000_000; // an hour back from the start
    mono += 600_000;
    const later = c.recentSweep(500);
    c.close();
    assert.notEqual(later, first, "600 ms old: swept anew although the wall clock went back");
    assert.equal(later[0]!.sampledAt?.seconds, BigInt(Math.floor(wall / 1e6)), "sampled_at is wall time");
  });
  it("a registry change invalidates the shared sweep; ids outside it are measured now", async () => {
    tree.setProcess(42, statLine("x", 1, 0), "1 1");
    await register({ id: "a", pid: 42 });
    collector.recentSweep(10_000);
    await register({ id: "b", pid: 42 });
    assert.deepEqual(collector.recentSweep(10_000).map((s) => s.instanceId), ["a", "b"]);
    await register({ id: "c", state: InstanceState.STOPPED });
    assert.deepEqual(collector.recentSweep(10_000, ["c", "zz"]).map((s) => s.instanceId), ["a", "b", "c"]);
  });
});
