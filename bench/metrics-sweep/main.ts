/**
 * P1: CPU of one metrics sweep (stat, statm, rx_bytes, tx_bytes for every instance) in the
 * agent's own code (InstanceRegistry + StatsCollector, in-process), against a C loop doing only
 * the preads through kept fds on the same files. Each round runs the agent's sweeps, the same
 * preads from Node, then the C loop, so machine noise hits all three alike.
 */
import { execFileSync } from "node:child_process";
import { closeSync, existsSync, openSync, readSync } from "node:fs";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { InstanceSchema } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import type { InstanceStats } from "../../gen/fleetlet/agent/v1/metrics_pb.js";
import { InstanceRegistry } from "../../agent/inventory/instance-registry.js";
import { validateInstance } from "../../agent/inventory/instance-validation.js";
import { StatsCollector } from "../../agent/metrics/stats-collector.js";
import { REPO_ROOT, runBench, startSleepers, tempDir } from "../common/processes.js";
import { check, figure, fmt, median, percentile, printFigures, progress, verdict, type Figure } from "../common/report.js";

const INTERFACE = "lo";
const TARGET_MS_AT_1000 = 20;
const TARGET_RATIO = 1.5;

runBench(async ({ smoke }) => {
  const n = smoke ? 100 : 1000;
  const rounds = smoke ? 3 : 6;
  const sweepsPerRound = smoke ? 30 : 100;
  const warmupSweeps = smoke ? 20 : 50;
  const dir = tempDir("metrics-sweep");

  progress(`starting ${n} sleep processes`);
  const pids = await startSleepers(n, smoke ? 120 : 600);
  check(new Set(pids).size === n, `expected ${n} distinct pids, got ${new Set(pids).size}`);
  check(existsSync(`/sys/class/net/${INTERFACE}/statistics/rx_bytes`), `/sys/class/net/${INTERFACE} has no statistics`);

  const registry = InstanceRegistry.open(dir);
  await Promise.all(
    pids.map((pid, i) =>
      registry.upsert(
        validateInstance(
          create(InstanceSchema, {
            id: `vm-${String(i).padStart(5, "0")}`,
            name: `bench-${i}`,
            pid,
            tapDevice: INTERFACE,
            allocatedVcpus: 1,
            allocatedMemoryBytes: 256n << 20n,
          }),
          { tapPrefix: "fl-" },
        ),
      ),
    ),
  );
  const collector = new StatsCollector(registry);

  const validate = (stats: InstanceStats[]) => {
    check(stats.length === n, `sweep returned ${stats.length} stats, expected ${n}`);
    for (const s of stats) {
      check(s.unavailable.length === 0, `${s.instanceId}: unavailable ${s.unavailable.join("; ")}`);
      check(s.cpuUsec !== undefined && s.memoryRssBytes !== undefined && s.netRxBytes !== undefined && s.netTxBytes !== undefined, `${s.instanceId}: missing figures`);
    }
  };
  progress(`warming up (${warmupSweeps} sweeps)`);
  for (let i = 0; i < warmupSweeps; i++) validate(collector.sweep());

  const reference = compileReference(dir);
  // A second floor, in Node: the same preads through readSync with no parsing, to tell the
  // cost of the Node fs binding apart from the cost of the agent's own code.
  const files = pids.flatMap((pid) => [
    `/proc/${pid}/stat`,
    `/proc/${pid}/statm`,
    `/sys/class/net/${INTERFACE}/statistics/rx_bytes`,
    `/sys/class/net/${INTERFACE}/statistics/tx_bytes`,
  ]);
  const fds = files.map((f) => openSync(f, "r"));
  const buffer = Buffer.allocUnsafe(8192);
  const readAll = () => {
    for (const fd of fds) check(readSync(fd, buffer, 0, buffer.length, 0) > 0, `empty read of fd ${fd}`);
  };
  for (let i = 0; i < warmupSweeps; i++) readAll();
  const nodeCpuMs: number[] = [];
  const floorCpuMs: number[] = [];
  const nodeWallMs: number[] = [];
  const cCpuMs: number[] = [];
  for (let r = 0; r < rounds; r++) {
    progress(`round ${r + 1}/${rounds}: ${sweepsPerRound} sweeps each`);
    let last: InstanceStats[] = [];
    for (let s = 0; s < sweepsPerRound; s++) {
      const cpu0 = process.cpuUsage();
      const wall0 = performance.now();
      last = collector.sweep();
      const wall = performance.now() - wall0;
      const cpu = process.cpuUsage(cpu0);
      nodeCpuMs.push((cpu.user + cpu.system) / 1000);
      nodeWallMs.push(wall);
      check(last.length === n, `sweep returned ${last.length} stats, expected ${n}`);
    }
    validate(last);
    for (let s = 0; s < sweepsPerRound; s++) {
      const cpu0 = process.cpuUsage();
      readAll();
      const cpu = process.cpuUsage(cpu0);
      floorCpuMs.push((cpu.user + cpu.system) / 1000);
    }
    if (reference) {
      const out = execFileSync(reference, [String(sweepsPerRound), INTERFACE], {
        input: `${pids.join("\n")}\n`,
        encoding: "utf8",
        stdio: ["pipe", "pipe", "ignore"],
      });
      const times = out.trim().split("\n").map((line) => Number(line) / 1e6);
      check(times.length === sweepsPerRound && times.every(Number.isFinite), `C reference printed ${times.length} times, expected ${sweepsPerRound}`);
      cCpuMs.push(...times);
    }
  }
  collector.close();
  for (const fd of fds) closeSync(fd);

  const nodeMedian = median(nodeCpuMs);
  const nodeP99 = percentile(nodeCpuMs, 99);
  const targetMs = (TARGET_MS_AT_1000 * n) / 1000;
  const rows: [string, string][] = [
    ["instances", `${n} (distinct sleep pids, interface ${INTERFACE}; ${4 * n} files)`],
    ["sweeps measured", `${nodeCpuMs.length} (${rounds} rounds alternating with the C reference)`],
    ["fleetlet CPU ms/sweep", `median ${fmt(nodeMedian)}  p99 ${fmt(nodeP99)}  (wall median ${fmt(median(nodeWallMs))})`],
    ["fleetlet CPU us/instance", fmt((nodeMedian * 1000) / n, 1)],
    ["Node readSync-only CPU ms/sweep", `median ${fmt(median(floorCpuMs))}  p99 ${fmt(percentile(floorCpuMs, 99))}  (same preads, no parsing)`],
  ];
  const figures: Figure[] = [
    figure("fleetlet_cpu_ms_per_sweep_median", nodeMedian, "ms", "lower"),
    figure("fleetlet_cpu_ms_per_sweep_p99", nodeP99, "ms", "lower"),
    figure("node_readsync_cpu_ms_per_sweep_median", median(floorCpuMs), "ms", "lower"),
  ];
  if (reference) {
    const cMedian = median(cCpuMs);
    const ratio = nodeMedian / cMedian;
    figures.push(figure("c_reference_cpu_ms_per_sweep_median", cMedian, "ms", "lower"), figure("ratio_fleetlet_to_c", ratio, "x", "lower"));
    rows.push(
      ["C reference CPU ms/sweep", `median ${fmt(cMedian)}  p99 ${fmt(percentile(cCpuMs, 99))}`],
      ["ratio fleetlet/C (median)", `${fmt(ratio)}x  (Node readSync-only/C ${fmt(median(floorCpuMs) / cMedian)}x)`],
      [
        "target P1",
        `<= ${fmt(targetMs, 0)} ms${n === 1000 ? "" : " (20 ms scaled to n)"} and <= ${TARGET_RATIO}x: ` +
          `${verdict(nodeMedian <= targetMs && ratio <= TARGET_RATIO)} (ms ${verdict(nodeMedian <= targetMs)}, ratio ${verdict(ratio <= TARGET_RATIO)})`,
      ],
    );
  } else {
    rows.push(
      ["C reference", "SKIPPED: gcc not found, no ratio"],
      ["target P1", `<= ${fmt(targetMs, 0)} ms: ${verdict(nodeMedian <= targetMs)}; ratio not measured`],
    );
  }
  printFigures(`metrics-sweep (P1)${smoke ? " --smoke" : ""}`, rows, figures);
});

/** Builds reference.c with gcc -O2 into the temp dir; undefined when gcc is not installed. */
function compileReference(dir: string): string | undefined {
  const source = join(REPO_ROOT, "bench", "metrics-sweep", "reference.c");
  const binary = join(dir, "reference");
  try {
    execFileSync("gcc", ["-O2", "-o", binary, source], { stdio: ["ignore", "ignore", "pipe"] });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") {
      progress("gcc not found: the C reference is skipped");
      return undefined;
    }
    throw e;
  }
  return binary;
}
