/**
 * P3: FleetService.ListInstanceStats from an aggregator process over N agent servers (agent-farm
 * processes), a few of them behind delaying TCP proxies, one hung (SIGSTOP). Latency is judged
 * against the slowest healthy host of the same call (host_results); CPU per host-call against
 * a bare grpc-js fan-out (reference-fanout.ts) run in the same benchmark; RSS per host against
 * an aggregator with no hosts.
 */
import { writeFileSync } from "node:fs";
import net from "node:net";
import { join } from "node:path";
import { fromBinary } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { ConnectionState, FleetService, ListInstanceStatsResponseSchema } from "../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { MetricsService } from "../../gen/fleetlet/agent/v1/metrics_pb.js";
import { createGrpcJsTransport } from "../../lib/rpc/grpc-transport.js";
import {
  REPO_ROOT,
  logProblems,
  processCpuMs,
  readJsonLine,
  rssKiB,
  runBench,
  signal,
  sleep,
  startChild,
  startFleetletDaemon,
  tempDir,
} from "../common/processes.js";
import { rawClient, rawUnary, waitReady } from "./raw-grpc.js";
import { startFarm } from "../common/agent-farm-process.js";
import { check, figure, fmt, median, percentile, printFigures, progress, verdict, type Figure } from "../common/report.js";

const INSTANCES_PER_HOST = 5;
const DEADLINE_MS = 2000;
const SLOW_EVERY = 20;
const SLOW_DELAY_MS = { min: 10, max: 50 };
const TARGET_OVERHEAD_MS = 50;
const TARGET_CPU_MS_PER_HOST_CALL = 0.3;
const TARGET_RSS_KIB_PER_HOST = 256;
const REFERENCE_JS = join(REPO_ROOT, "dist", "bench", "fanout", "reference-fanout.js");

type Kind = "healthy" | "slow" | "hung";

interface Plan {
  name: string;
  kind: Kind;
  address: string;
  delayMs: number;
}

runBench(async ({ smoke }) => {
  const sizes = smoke ? [50] : [200, 1000];
  const calls = smoke ? 10 : 30;
  const warmupCalls = smoke ? 2 : 3;
  const hungCalls = smoke ? 1 : 3;
  const farmProcesses = smoke ? 2 : 4;
  const dir = tempDir("fanout");
  const maxHosts = Math.max(...sizes);

  progress(`starting ${maxHosts - 1} agents in ${farmProcesses} processes, plus 1 to hang`);
  const regular = maxHosts - 1;
  const perFarm = Math.ceil(regular / farmProcesses);
  const farms = Array.from({ length: farmProcesses }, (_, f) => startFarm(Math.min(perFarm, regular - f * perFarm), INSTANCES_PER_HOST, join(dir, `farm-${f}`)));
  const hungFarm = startFarm(1, INSTANCES_PER_HOST, join(dir, "farm-hung"));
  const farmAddresses = await Promise.all(farms.map((f) => f.addresses));
  const agentAddresses = farmAddresses.flat();
  const hungAddress = (await hungFarm.addresses)[0]!;
  check(agentAddresses.length === regular, `farms serve ${agentAddresses.length} agents, expected ${regular}`);

  progress("aggregator with no hosts (RSS baseline)");
  const baselineKiB = await baselineRss(dir);

  const rows: [string, string][] = [];
  const figures: Figure[] = [figure("aggregator_rss_no_hosts_mb", baselineKiB / 1024, "MB", "lower")];
  const rss: { n: number; connectedKiB: number; afterCallsKiB: number }[] = [];
  for (const n of sizes) {
    const result = await runSize(n, { calls, warmupCalls, hungCalls, dir, agentAddresses, hungAddress, hungPid: hungFarm.child.pid, farmPids: farms.map((f) => f.child.pid), baselineKiB });
    rows.push(...result.rows);
    figures.push(...result.figures);
    rss.push({ n, ...result.rss });
  }
  if (rss.length >= 2) {
    // The slope between two sizes leaves out what does not grow with hosts (JIT code, heap headroom).
    const [a, b] = [rss[0]!, rss[rss.length - 1]!];
    const slope = (k: "connectedKiB" | "afterCallsKiB") => (b[k] - a[k]) / (b.n - a.n);
    rows.push([
      `RSS per host, ${a.n} -> ${b.n}`,
      `${fmt(slope("connectedKiB"), 0)} KB connected, ${fmt(slope("afterCallsKiB"), 0)} KB after calls (slope; target <= ${TARGET_RSS_KIB_PER_HOST} KB: ${verdict(slope("afterCallsKiB") <= TARGET_RSS_KIB_PER_HOST)})`,
    ]);
  }
  printFigures(`fanout (P3)${smoke ? " --smoke" : ""}`, [
    ["setup", `${regular} agents in ${farmProcesses} farm processes + 1 hung; ${INSTANCES_PER_HOST} instances per agent; 1 in ${SLOW_EVERY} hosts behind a proxy delaying each chunk ${SLOW_DELAY_MS.min}-${SLOW_DELAY_MS.max} ms; per-host deadline ${DEADLINE_MS} ms`],
    ["aggregator RSS, no hosts", `${fmt(baselineKiB / 1024, 1)} MB`],
    ...rows,
  ], figures);
});

interface SizeContext {
  calls: number;
  warmupCalls: number;
  hungCalls: number;
  dir: string;
  agentAddresses: string[];
  hungAddress: string;
  hungPid: number;
  farmPids: number[];
  baselineKiB: number;
}

interface SizeResult {
  rows: [string, string][];
  figures: Figure[];
  rss: { connectedKiB: number; afterCallsKiB: number };
}

async function runSize(n: number, ctx: SizeContext): Promise<SizeResult> {
  // Host plan: the hung host mid-list, every SLOW_EVERY-th host behind a delaying proxy.
  const hungIndex = Math.floor(n / 2);
  const plan: Plan[] = [];
  const proxies: DelayProxy[] = [];
  const slowCount = Math.floor((n - 1) / SLOW_EVERY);
  let regularIndex = 0;
  let slowIndex = 0;
  for (let i = 0; i < n; i++) {
    const name = `h${String(i).padStart(4, "0")}`;
    if (i === hungIndex) {
      plan.push({ name, kind: "hung", address: ctx.hungAddress, delayMs: 0 });
      continue;
    }
    const address = ctx.agentAddresses[regularIndex++]!;
    if (regularIndex % SLOW_EVERY === 0 && slowIndex < slowCount) {
      const delayMs = Math.round(SLOW_DELAY_MS.min + ((SLOW_DELAY_MS.max - SLOW_DELAY_MS.min) * slowIndex) / Math.max(1, slowCount - 1));
      slowIndex++;
      const proxy = await startDelayProxy(address, delayMs);
      proxies.push(proxy);
      plan.push({ name, kind: "slow", address: proxy.address, delayMs });
    } else {
      plan.push({ name, kind: "healthy", address, delayMs: 0 });
    }
  }
  const kindOf = new Map(plan.map((p) => [p.name, p.kind]));
  const hostsFile = join(ctx.dir, `hosts-${n}.txt`);
  writeFileSync(hostsFile, plan.map((p) => `${p.name}=${p.address}\n`).join(""));

  try {
    progress(`[${n} hosts] starting the aggregator`);
    const aggregator = await startFleetletDaemon(
      "aggregator",
      ["--listen", "127.0.0.1:0", "--state-dir", join(ctx.dir, `aggregator-${n}`), "--metrics-listen", "off", "--hosts-file", hostsFile, "--per-host-timeout", `${DEADLINE_MS / 1000}s`, "--log-level", "info"],
      join(ctx.dir, `aggregator-${n}.log`),
    );
    const transport = createGrpcJsTransport(aggregator.address);
    const fleet = createClient(FleetService, transport);
    // Fan-outs go through a raw-bytes client and are decoded after the clock stops, so the
    // latency is the aggregator's, not this client's decoding of N x 5 stats.
    const raw = rawClient(aggregator.address);
    const statsPath = `/${FleetService.typeName}/${FleetService.method.listInstanceStats.name}`;
    try {
      const connectStarted = performance.now();
      for (;;) {
        const hosts = (await fleet.listHosts({})).hosts;
        check(hosts.length === n, `ListHosts shows ${hosts.length} hosts, expected ${n}`);
        const ready = hosts.filter((h) => h.connectionState === ConnectionState.READY).length;
        if (ready === n) break;
        check(performance.now() - connectStarted < 60_000, `only ${ready} of ${n} hosts READY after 60 s`);
        await sleep(100);
      }
      const connectMs = performance.now() - connectStarted;
      const idleCpu0 = processCpuMs(aggregator.pid);
      await sleep(1000);
      const idleCpuMsPerS = processCpuMs(aggregator.pid) - idleCpu0;
      const connectedKiB = rssKiB(aggregator.pid);

      const fanOut = async (expectHung: boolean) => {
        const started = performance.now();
        const bytes = await rawUnary(raw, statsPath, Buffer.alloc(0), DEADLINE_MS * 3);
        const wallMs = performance.now() - started;
        const res = fromBinary(ListInstanceStatsResponseSchema, bytes);
        check(res.hostResults.length === n, `${res.hostResults.length} host results, expected ${n}`);
        let slowestMs = 0;
        let hung: { code: string; latencyMs: number } | undefined;
        for (const r of res.hostResults) {
          if (kindOf.get(r.host) === "hung" && expectHung) {
            hung = { code: r.code, latencyMs: r.latencyMs };
            continue;
          }
          check(r.code === "OK", `host ${r.host} (${kindOf.get(r.host)}): ${r.code} ${r.message}`);
          slowestMs = Math.max(slowestMs, r.latencyMs);
        }
        const expectedStats = (expectHung ? n - 1 : n) * INSTANCES_PER_HOST;
        check(res.stats.length === expectedStats, `${res.stats.length} stats, expected ${expectedStats}`);
        return { wallMs, slowestMs, hung };
      };

      progress(`[${n} hosts] connected in ${fmt(connectMs, 0)} ms; ${ctx.calls} fan-outs`);
      for (let i = 0; i < ctx.warmupCalls; i++) await fanOut(false);
      const farmCpu0 = ctx.farmPids.reduce((a, pid) => a + processCpuMs(pid), 0);
      const cpu0 = processCpuMs(aggregator.pid);
      const measured = [];
      for (let i = 0; i < ctx.calls; i++) measured.push(await fanOut(false));
      const aggregatorCpuMs = processCpuMs(aggregator.pid) - cpu0;
      const farmCpuMs = ctx.farmPids.reduce((a, pid) => a + processCpuMs(pid), 0) - farmCpu0;
      const afterCallsKiB = rssKiB(aggregator.pid);

      progress(`[${n} hosts] the slowest host alone, then the bare grpc-js fan-out reference`);
      const slowest = plan.filter((p) => p.kind === "slow").sort((a, b) => b.delayMs - a.delayMs)[0] ?? plan.find((p) => p.kind === "healthy")!;
      const aloneMs = await latencyAlone(slowest.address, ctx.calls);
      const reference = await runReference(plan.map((p) => p.address), ctx, n);

      progress(`[${n} hosts] hanging ${plan[hungIndex]!.name} (SIGSTOP); ${ctx.hungCalls} fan-outs`);
      signal(ctx.hungPid, "SIGSTOP");
      const hungRuns = [];
      try {
        for (let i = 0; i < ctx.hungCalls; i++) hungRuns.push(await fanOut(true));
      } finally {
        signal(ctx.hungPid, "SIGCONT");
      }

      const walls = measured.map((m) => m.wallMs);
      const slowests = measured.map((m) => m.slowestMs);
      const overheads = measured.map((m) => m.wallMs - m.slowestMs);
      const p99Overhead = percentile(overheads, 99);
      const cpuPerHostCall = aggregatorCpuMs / (ctx.calls * n);
      const refCpuPerHostCall = reference.cpuMs / (reference.calls * n);
      const rssPerHostConnected = (connectedKiB - ctx.baselineKiB) / n;
      const rssPerHostAfterCalls = (afterCallsKiB - ctx.baselineKiB) / n;
      const hungLatencies = hungRuns.map((r) => r.hung?.latencyMs ?? NaN);
      const hungCodes = [...new Set(hungRuns.map((r) => r.hung?.code ?? "missing"))];
      const hungWalls = hungRuns.map((r) => r.wallMs);
      const hungExact =
        hungCodes.length === 1 && hungCodes[0] === "DEADLINE_EXCEEDED" && hungLatencies.every((l) => Math.abs(l - DEADLINE_MS) <= 25);
      const refWalls = reference.results.map((r) => r.wallMs);
      const refOverheads = reference.results.map((r) => r.wallMs - r.slowestMs);
      const t = `[${n}]`;
      const rows: [string, string][] = [
        [`${t} hosts`, `${n}: ${plan.filter((p) => p.kind === "healthy").length} direct, ${proxies.length} slow (proxied), 1 hung; READY after ${fmt(connectMs, 0)} ms`],
        [`${t} fan-out latency`, `p50 ${fmt(median(walls), 1)} ms  p99 ${fmt(percentile(walls, 99), 1)} ms  (${ctx.calls} calls, one at a time)`],
        [`${t} slowest host (host_results)`, `p50 ${fmt(median(slowests), 1)} ms  p99 ${fmt(percentile(slowests, 99), 1)} ms`],
        [`${t} fan-out minus slowest`, `p50 ${fmt(median(overheads), 1)} ms  p99 ${fmt(p99Overhead, 1)} ms  (per call)`],
        [`${t} slowest host called alone`, `p50 ${fmt(median(aloneMs), 1)} ms  p99 ${fmt(percentile(aloneMs, 99), 1)} ms  (${slowest.name}, ${slowest.delayMs} ms/chunk proxy)`],
        [`${t} reference fan-out`, `p50 ${fmt(median(refWalls), 1)} ms  p99 ${fmt(percentile(refWalls, 99), 1)} ms; minus its slowest p99 ${fmt(percentile(refOverheads, 99), 1)} ms (bare grpc-js)`],
        [`${t} aggregator CPU`, `${fmt(cpuPerHostCall, 3)} ms per host-call (${fmt(aggregatorCpuMs, 0)} ms over ${ctx.calls * n} host-calls; idle ${fmt(idleCpuMsPerS, 0)} ms/s); agents ${fmt(farmCpuMs / (ctx.calls * n), 3)} ms`],
        [`${t} reference CPU`, `${fmt(refCpuPerHostCall, 3)} ms per host-call; aggregator/reference ${fmt(cpuPerHostCall / refCpuPerHostCall, 2)}x`],
        [`${t} aggregator RSS`, `${fmt(connectedKiB / 1024, 1)} MB connected, ${fmt(afterCallsKiB / 1024, 1)} MB after calls; per host ${fmt(rssPerHostConnected, 0)} KB connected, ${fmt(rssPerHostAfterCalls, 0)} KB after calls`],
        [`${t} hung host`, `${hungCodes.join(",")} after ${hungLatencies.map((l) => fmt(l, 1)).join(", ")} ms (deadline ${DEADLINE_MS}); whole call ${hungWalls.map((w) => fmt(w, 0)).join(", ")} ms`],
        [`${t} aggregator log`, logProblems(aggregator.logPath)],
        [`${t} target latency`, `p99(fan-out - slowest) <= ${TARGET_OVERHEAD_MS} ms: ${verdict(p99Overhead <= TARGET_OVERHEAD_MS)}`],
        [`${t} target CPU`, `<= ${TARGET_CPU_MS_PER_HOST_CALL} ms per host-call: ${verdict(cpuPerHostCall <= TARGET_CPU_MS_PER_HOST_CALL)}`],
        [`${t} target RSS`, `<= ${TARGET_RSS_KIB_PER_HOST} KB per host (after calls): ${verdict(rssPerHostAfterCalls <= TARGET_RSS_KIB_PER_HOST)}`],
        [`${t} target hung host`, `DEADLINE_EXCEEDED at its deadline +-25 ms: ${verdict(hungExact)}`],
      ];
      const figures = [
        figure(`h${n}_fanout_ms_p50`, median(walls), "ms", "lower"),
        figure(`h${n}_fanout_ms_p99`, percentile(walls, 99), "ms", "lower"),
        figure(`h${n}_fanout_minus_slowest_ms_p50`, median(overheads), "ms", "lower"),
        figure(`h${n}_fanout_minus_slowest_ms_p99`, p99Overhead, "ms", "lower"),
        figure(`h${n}_reference_fanout_ms_p50`, median(refWalls), "ms", "lower"),
        figure(`h${n}_aggregator_cpu_ms_per_host_call`, cpuPerHostCall, "ms", "lower"),
        figure(`h${n}_reference_cpu_ms_per_host_call`, refCpuPerHostCall, "ms", "lower"),
        figure(`h${n}_aggregator_rss_connected_mb`, connectedKiB / 1024, "MB", "lower"),
        figure(`h${n}_aggregator_rss_after_calls_mb`, afterCallsKiB / 1024, "MB", "lower"),
        figure(`h${n}_hung_host_ms_max`, Math.max(...hungLatencies), "ms", "lower"),
      ];
      return { rows, figures, rss: { connectedKiB, afterCallsKiB } };
    } finally {
      raw.close();
      transport.close();
      await aggregator.stop();
    }
  } finally {
    for (const p of proxies) p.close();
  }
}

async function baselineRss(dir: string): Promise<number> {
  const aggregator = await startFleetletDaemon(
    "aggregator",
    ["--listen", "127.0.0.1:0", "--state-dir", join(dir, "aggregator-empty"), "--metrics-listen", "off", "--log-level", "info"],
    join(dir, "aggregator-empty.log"),
  );
  const transport = createGrpcJsTransport(aggregator.address);
  try {
    const fleet = createClient(FleetService, transport);
    for (let i = 0; i < 3; i++) {
      check((await fleet.listInstanceStats({})).hostResults.length === 0, "an aggregator without hosts answered host results");
    }
    await sleep(1000);
    return rssKiB(aggregator.pid);
  } finally {
    transport.close();
    await aggregator.stop();
  }
}

/** Latencies of `calls` sequential ListInstanceStats calls to one agent address. */
async function latencyAlone(address: string, calls: number): Promise<number[]> {
  const client = rawClient(address);
  try {
    await waitReady(client);
    const path = `/${MetricsService.typeName}/${MetricsService.method.listInstanceStats.name}`;
    const out: number[] = [];
    for (let i = 0; i < calls + 2; i++) {
      const t0 = performance.now();
      await rawUnary(client, path, Buffer.alloc(0), DEADLINE_MS);
      if (i >= 2) out.push(performance.now() - t0);
    }
    return out;
  } finally {
    client.close();
  }
}

interface ReferenceResult {
  calls: number;
  cpuMs: number;
  results: { wallMs: number; slowestMs: number; stats: number }[];
}

async function runReference(addresses: string[], ctx: SizeContext, n: number): Promise<ReferenceResult> {
  const file = join(ctx.dir, `reference-${n}.txt`);
  writeFileSync(file, `${addresses.join("\n")}\n`);
  const child = startChild(process.execPath, [REFERENCE_JS, file, String(ctx.calls), String(ctx.warmupCalls), String(DEADLINE_MS)], { stdio: ["ignore", "pipe", "inherit"] });
  const out = await readJsonLine<ReferenceResult & { msg?: string }>(child, (l) => l.msg === "reference done", 120_000);
  check((await child.exited) === 0, "the reference fan-out failed");
  for (const r of out.results) check(r.stats === n * INSTANCES_PER_HOST, `reference fan-out got ${r.stats} stats, expected ${n * INSTANCES_PER_HOST}`);
  return out;
}

interface DelayProxy {
  address: string;
  close(): void;
}

/** A TCP proxy that forwards each chunk, both ways, after `delayMs`: a slow host or link. */
async function startDelayProxy(target: string, delayMs: number): Promise<DelayProxy> {
  const colon = target.lastIndexOf(":");
  const host = target.slice(0, colon);
  const port = Number(target.slice(colon + 1));
  const sockets = new Set<net.Socket>();
  const server = net.createServer((downstream) => {
    const upstream = net.connect(port, host);
    for (const s of [downstream, upstream]) {
      s.setNoDelay(true);
      sockets.add(s);
    }
    const forward = (from: net.Socket, to: net.Socket) =>
      from.on("data", (chunk: Buffer) => {
        setTimeout(() => {
          if (!to.destroyed) to.write(chunk);
        }, delayMs);
      });
    forward(downstream, upstream);
    forward(upstream, downstream);
    const end = () => {
      for (const s of [downstream, upstream]) {
        s.destroy();
        sockets.delete(s);
      }
    };
    for (const s of [downstream, upstream]) {
      s.on("close", end);
      s.on("error", end);
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const { port: bound } = server.address() as net.AddressInfo;
  return {
    address: `127.0.0.1:${bound}`,
    close() {
      server.close();
      for (const s of sockets) s.destroy();
    },
  };
}
