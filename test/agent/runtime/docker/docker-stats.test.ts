import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { dockerStatsToContainerStats, type DockerStatsInput } from "../../../../agent/runtime/docker/docker-stats.js";
import type { DockerStatsJson } from "../../../../agent/runtime/docker/docker-api-types.js";
import { statsFixture } from "./docker-fixtures.js";

// Recorded on a 2-CPU cgroup v1 host with 25276063744 bytes of memory (/info MemTotal).
const HOST_MEMORY = 25276063744;

function input(raw: DockerStatsJson, extra: Partial<DockerStatsInput> = {}): DockerStatsInput {
  return {
    raw,
    externalId: "a95651712a13747952a8ca0dc4d86200ec9c477e2b59ada775acb62248902cfd",
    name: "web",
    instanceId: "docker-a95651712a13",
    runId: "run-1",
    configuredMemoryBytes: 0,
    hostMemoryBytes: HOST_MEMORY,
    ...extra,
  };
}

/** The same sample later: container and system CPU counters moved by the given ns. */
function later(raw: DockerStatsJson, containerNs: number, systemNs: number): DockerStatsJson {
  const cpu = raw.cpu_stats!;
  return {
    ...raw,
    read: "2026-11-22T03:08:11.81227243Z",
    cpu_stats: {
      ...cpu,
      cpu_usage: { ...cpu.cpu_usage, total_usage: cpu.cpu_usage!.total_usage! + containerNs },
      system_cpu_usage: cpu.system_cpu_usage! + systemNs,
    },
  };
}

const reasonFor = (unavailable: string[], field: string) => unavailable.find((u) => u.startsWith(`${field}: `));

describe("docker stats → ContainerStats", () => {
  it("first sample (recorded, unlimited container without network): no CPU% yet, every unset field has a reason", () => {
    const { stats, sample } = dockerStatsToContainerStats(input(statsFixture("v1-unlimited")));
    assert.equal(stats.runtime, "docker");
    assert.equal(stats.instanceId, "docker-a95651712a13");
    assert.equal(stats.timestamp?.nanos, 812272430);
    assert.equal(stats.cpuPercent, undefined);
    assert.match(reasonFor(stats.unavailable, "cpu_percent") ?? "", /first sample/);
    assert.equal(stats.cpuUsageNsec, 19806634n);
    assert.equal(stats.memoryUsageBytes, 323584n);
    assert.equal(stats.memoryWorkingSetBytes, 323584n, "total_inactive_file is 0");
    assert.equal(stats.memoryUnlimited, true, "limit = host memory with HostConfig.Memory 0");
    assert.equal(stats.memoryLimitBytes, undefined);
    assert.equal(stats.netRxBytes, undefined, "--network none: unset, not 0");
    assert.equal(stats.netTxBytes, undefined);
    assert.ok(reasonFor(stats.unavailable, "net_rx_bytes"));
    assert.ok(reasonFor(stats.unavailable, "net_tx_bytes"));
    assert.equal(stats.blockReadBytes, 0n, "an empty device list: no block I/O happened");
    assert.equal(stats.pids, 1n);
    assert.deepEqual(sample, { runId: "run-1", containerNs: 19806634, systemNs: 20294660000000 });
  });

  it("CPU% = Δcontainer / Δsystem × online CPUs × 100 from the previous sample (100 = one core)", () => {
    const first = statsFixture("v1-unlimited");
    const { sample } = dockerStatsToContainerStats(input(first));
    // 2 CPUs for 1 s = 2e9 ns of system time; the container used 0.5 s: half a core.
    const { stats } = dockerStatsToContainerStats(input(later(first, 500_000_000, 2_000_000_000), { previous: sample }));
    assert.equal(stats.cpuPercent, 50);
    assert.equal(reasonFor(stats.unavailable, "cpu_percent"), undefined);
    // Both CPUs busy: 200.
    const { stats: busy } = dockerStatsToContainerStats(input(later(first, 2_000_000_000, 2_000_000_000), { previous: sample }));
    assert.equal(busy.cpuPercent, 200);
  });

  it("a one-off sample has CPU% from the engine's own previous read (precpu_stats, recorded with one-shot=false)", () => {
    // A single-threaded burner: the engine read 980287491 ns of container CPU over 2e9 ns of
    // system time (2 CPUs × ~1 s) between preread and read: 98% of one core.
    const { stats, sample } = dockerStatsToContainerStats(input(statsFixture("v1-two-reads"), { configuredMemoryBytes: 268435456 }));
    assert.equal(reasonFor(stats.unavailable, "cpu_percent"), undefined);
    assert.ok(stats.cpuPercent !== undefined && Math.abs(stats.cpuPercent - ((3223021407 - 2242733916) / (39868880000000 - 39866880000000)) * 2 * 100) < 1e-9);
    assert.equal(stats.cpuUsageNsec, 3223021407n);
    // The agent's own baseline for the next (one-shot) sample is this read.
    assert.deepEqual(sample, { runId: "run-1", containerNs: 3223021407, systemNs: 39868880000000 });
    // The engine's baseline wins over an older sample of the agent's (it covers the last second).
    const old = { runId: "run-1", containerNs: 0, systemNs: 39000000000000 };
    assert.equal(dockerStatsToContainerStats(input(statsFixture("v1-two-reads"), { previous: old })).stats.cpuPercent, stats.cpuPercent);
  });

  it("a recorded one-shot answer has no engine baseline (zero precpu, no system time): CPU% needs the agent's previous sample", () => {
    const oneShot = statsFixture("v1-one-shot-burning");
    const alone = dockerStatsToContainerStats(input(oneShot)).stats;
    assert.equal(alone.cpuPercent, undefined);
    assert.match(reasonFor(alone.unavailable, "cpu_percent") ?? "", /first sample .* no previous read from the engine/);
    // Recorded 1 s after the two-reads answer of the same container: 865969343 ns over 2e9 ns.
    const { sample } = dockerStatsToContainerStats(input(statsFixture("v1-two-reads")));
    const next = dockerStatsToContainerStats(input(oneShot, { previous: sample })).stats;
    assert.ok(next.cpuPercent !== undefined && Math.abs(next.cpuPercent - ((4088990750 - 3223021407) / (39870880000000 - 39868880000000)) * 2 * 100) < 1e-9);
  });

  it("online_cpus missing: the per-CPU list's length (cgroup v1)", () => {
    const first = statsFixture("v1-unlimited");
    const { sample } = dockerStatsToContainerStats(input(first));
    const next = later(first, 1_000_000_000, 4_000_000_000);
    next.cpu_stats = { ...next.cpu_stats, online_cpus: undefined, cpu_usage: { ...next.cpu_stats!.cpu_usage, percpu_usage: [1, 2, 3, 4] } };
    assert.equal(dockerStatsToContainerStats(input(next, { previous: sample })).stats.cpuPercent, 100);
  });

  it("a counter that went down (restart) gives no CPU%, never a negative or wrapped value", () => {
    const first = statsFixture("v1-unlimited");
    const { sample } = dockerStatsToContainerStats(input(first));
    const { stats, sample: next } = dockerStatsToContainerStats(input(later(first, -10_000_000, 1_000_000_000), { previous: sample }));
    assert.equal(stats.cpuPercent, undefined);
    assert.match(reasonFor(stats.unavailable, "cpu_percent") ?? "", /went down/);
    // The new sample is the baseline for the next one.
    assert.equal(next?.containerNs, 19806634 - 10_000_000);
  });

  it("another run of the container (StartedAt changed) gives no CPU% even if the counter grew", () => {
    const first = statsFixture("v1-unlimited");
    const { sample } = dockerStatsToContainerStats(input(first));
    const { stats } = dockerStatsToContainerStats(input(later(first, 1_000_000, 1_000_000_000), { previous: sample, runId: "run-2" }));
    assert.equal(stats.cpuPercent, undefined);
    assert.match(reasonFor(stats.unavailable, "cpu_percent") ?? "", /restarted/);
  });

  it("no system time elapsed: no CPU% (no division by zero)", () => {
    const first = statsFixture("v1-unlimited");
    const { sample } = dockerStatsToContainerStats(input(first));
    const { stats } = dockerStatsToContainerStats(input(first, { previous: sample }));
    assert.equal(stats.cpuPercent, undefined);
  });

  it("recorded limited container with a network: limit, working set (v1 total_inactive_file), net", () => {
    const { stats } = dockerStatsToContainerStats(input(statsFixture("v1-network-limited"), { configuredMemoryBytes: 64 * 1024 * 1024 }));
    assert.equal(stats.memoryLimitBytes, 67108864n);
    assert.equal(stats.memoryUnlimited, false);
    assert.equal(stats.memoryUsageBytes, 2486272n);
    assert.equal(stats.memoryWorkingSetBytes, 2486272n - 2097152n);
    assert.equal(stats.netRxBytes, 1446n);
    assert.equal(stats.netTxBytes, 0n, "a real zero: the interface exists");
    assert.equal(reasonFor(stats.unavailable, "net_rx_bytes"), undefined);
  });

  it("cgroup v1 prefers total_inactive_file (hierarchical); v2 has only inactive_file", () => {
    const v1: DockerStatsJson = { ...statsFixture("v1-unlimited"), memory_stats: { usage: 10_000, limit: 1_000_000, stats: { total_inactive_file: 3_000, inactive_file: 1_000 } } };
    assert.equal(dockerStatsToContainerStats(input(v1)).stats.memoryWorkingSetBytes, 7_000n);
    const v2: DockerStatsJson = { ...statsFixture("v1-unlimited"), memory_stats: { usage: 10_000, limit: 1_000_000, stats: { inactive_file: 4_000, anon: 6_000 } } };
    assert.equal(dockerStatsToContainerStats(input(v2)).stats.memoryWorkingSetBytes, 6_000n);
  });

  it("working set is clamped at 0 when inactive_file exceeds usage", () => {
    const raw: DockerStatsJson = { ...statsFixture("v1-unlimited"), memory_stats: { usage: 1_000, limit: 1_000_000, stats: { inactive_file: 5_000 } } };
    assert.equal(dockerStatsToContainerStats(input(raw)).stats.memoryWorkingSetBytes, 0n);
  });

  it("unlimited: the kernel's page-rounded 2^63 (cgroup v1) or ≥ 2^62; a configured limit is reported", () => {
    // biome-ignore lint/correctness/noPrecisionLoss: 2^63 - 4096, what cgroup v1 reports for "no limit"; exact as a double
    const huge: DockerStatsJson = { ...statsFixture("v1-unlimited"), memory_stats: { usage: 1, limit: 9223372036854771712, stats: {} } };
    const a = dockerStatsToContainerStats(input(huge, { configuredMemoryBytes: undefined, hostMemoryBytes: undefined })).stats;
    assert.equal(a.memoryUnlimited, true);
    assert.equal(a.memoryLimitBytes, undefined);
    // A limit equal to the host's memory that was configured is a limit.
    const b = dockerStatsToContainerStats(input(statsFixture("v1-unlimited"), { configuredMemoryBytes: HOST_MEMORY })).stats;
    assert.equal(b.memoryUnlimited, false);
    assert.equal(b.memoryLimitBytes, BigInt(HOST_MEMORY));
    // Host memory unknown and no configured limit known: the number is all we have.
    const c = dockerStatsToContainerStats(input(statsFixture("v1-unlimited"), { configuredMemoryBytes: undefined, hostMemoryBytes: undefined })).stats;
    assert.equal(c.memoryLimitBytes, BigInt(HOST_MEMORY));
  });

  it("network counters are summed over interfaces", () => {
    const raw: DockerStatsJson = { ...statsFixture("v1-unlimited"), networks: { eth0: { rx_bytes: 100, tx_bytes: 10 }, eth1: { rx_bytes: 5, tx_bytes: 1 } } };
    const { stats } = dockerStatsToContainerStats(input(raw));
    assert.equal(stats.netRxBytes, 105n);
    assert.equal(stats.netTxBytes, 11n);
  });

  it('block I/O summed over devices: cgroup v1 "Read"/"Write" (Sync/Async/Total ignored)', () => {
    const raw: DockerStatsJson = {
      ...statsFixture("v1-unlimited"),
      blkio_stats: {
        io_service_bytes_recursive: [
          { major: 8, minor: 0, op: "Read", value: 4096 },
          { major: 8, minor: 0, op: "Write", value: 8192 },
          { major: 8, minor: 0, op: "Sync", value: 12288 },
          { major: 8, minor: 0, op: "Async", value: 0 },
          { major: 8, minor: 0, op: "Total", value: 12288 },
          { major: 8, minor: 16, op: "Read", value: 1 },
          { major: 8, minor: 16, op: "Write", value: 2 },
          { major: 8, minor: 16, op: "Total", value: 3 },
        ],
      },
    };
    const { stats } = dockerStatsToContainerStats(input(raw));
    assert.equal(stats.blockReadBytes, 4097n);
    assert.equal(stats.blockWriteBytes, 8194n);
  });

  it('block I/O on cgroup v2: lower-case "read"/"write"', () => {
    const raw: DockerStatsJson = {
      ...statsFixture("v1-unlimited"),
      blkio_stats: {
        io_service_bytes_recursive: [
          { major: 259, minor: 0, op: "read", value: 1000 },
          { major: 259, minor: 0, op: "write", value: 2000 },
          { major: 253, minor: 1, op: "read", value: 24 },
        ],
      },
    };
    const { stats } = dockerStatsToContainerStats(input(raw));
    assert.equal(stats.blockReadBytes, 1024n);
    assert.equal(stats.blockWriteBytes, 2000n);
  });

  it("block I/O not reported (null list): unset with a reason", () => {
    const raw: DockerStatsJson = { ...statsFixture("v1-unlimited"), blkio_stats: { io_service_bytes_recursive: null } };
    const { stats } = dockerStatsToContainerStats(input(raw));
    assert.equal(stats.blockReadBytes, undefined);
    assert.ok(reasonFor(stats.unavailable, "block_read_bytes"));
    assert.ok(reasonFor(stats.unavailable, "block_write_bytes"));
  });

  it("a container that is not running (recorded): everything unset, each with a reason, no sample", () => {
    const { stats, sample } = dockerStatsToContainerStats(input(statsFixture("not-running")));
    assert.equal(sample, undefined);
    assert.equal(stats.timestamp, undefined);
    for (const f of ["cpuPercent", "cpuUsageNsec", "memoryUsageBytes", "memoryWorkingSetBytes", "memoryLimitBytes", "netRxBytes", "netTxBytes", "blockReadBytes", "blockWriteBytes", "pids"] as const) {
      assert.equal(stats[f], undefined, f);
    }
    assert.equal(stats.unavailable.length, 10);
    assert.ok(stats.unavailable.every((u) => u.endsWith(": container is not running")));
  });

  it("a paused container still has stats (recorded)", () => {
    const { stats } = dockerStatsToContainerStats(input(statsFixture("v1-paused")));
    assert.equal(stats.memoryUsageBytes, 327680n);
    assert.equal(stats.pids, 1n);
  });

  it("missing sections are unset with reasons, never -1 or 0", () => {
    const { stats } = dockerStatsToContainerStats(input({ read: "2026-11-22T03:08:10Z" }));
    assert.equal(stats.cpuUsageNsec, undefined);
    assert.equal(stats.memoryUsageBytes, undefined);
    assert.equal(stats.memoryLimitBytes, undefined);
    assert.equal(stats.memoryUnlimited, false);
    assert.equal(stats.pids, undefined);
    for (const f of ["cpu_percent", "cpu_usage_nsec", "memory_usage_bytes", "memory_working_set_bytes", "memory_limit_bytes", "net_rx_bytes", "block_read_bytes", "pids"]) {
      assert.ok(reasonFor(stats.unavailable, f), f);
    }
  });
});
