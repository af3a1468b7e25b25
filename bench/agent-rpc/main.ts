/**
 * P2: MetricsService.ListInstanceStats (200 instances) from an agent running as its own process,
 * against a bare grpc-js echo server, both driven by the same raw-bytes load client for the same
 * time, in alternating rounds. Then the agent's RSS with 1,000 registered instances.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { fromBinary, toBinary, create } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { InventoryService } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { ListInstanceStatsResponseSchema, MetricsService } from "../../gen/fleetlet/agent/v1/metrics_pb.js";
import { EchoRequestSchema, EchoService } from "../../gen/fleetlet/testing/v1/echo_pb.js";
import { createGrpcJsTransport } from "../../lib/rpc/grpc-transport.js";
import {
  REPO_ROOT,
  logProblems,
  processCpuMs,
  readJsonLine,
  rssKiB,
  runBench,
  sleep,
  startChild,
  startFleetletDaemon,
  startSleepers,
  tempDir,
} from "../common/processes.js";
import { H2GrpcClient } from "../common/h2-grpc-client.js";
import { check, figure, fmt, median, printFigures, progress, verdict } from "../common/report.js";

const INSTANCES = 200;
const RSS_INSTANCES = 1000;
const SETTLE_MS = 15_000;
const CONNECTIONS = 2;
const IN_FLIGHT = 32;
const TARGET_RATIO = 0.8;
const TARGET_RSS_MB = 150;

interface LoadResult {
  calls: number;
  wallMs: number;
  clientCpuMs: number;
  serverCpuMs: number;
}

runBench(async ({ smoke }) => {
  const rounds = smoke ? 1 : 3;
  const durationMs = smoke ? 2000 : 5000;
  const warmupMs = smoke ? 500 : 1500;
  const dir = tempDir("agent-rpc");

  const pids = await startSleepers(8, smoke ? 120 : 600);
  progress("starting the agent and the echo server");
  // Instances share 8 sleeper pids (the sweep's cost is per instance): above the default
  // per-pid cap of 16, which guards file descriptors, not what is measured here.
  const agent = await startFleetletDaemon(
    "agent",
    ["--listen", "127.0.0.1:0", "--state-dir", join(dir, "agent"), "--metrics-listen", "off", "--log-level", "info", "--max-instances-per-pid", "1000"],
    join(dir, "agent.log"),
  );
  const echo = startChild(process.execPath, [join(REPO_ROOT, "dist", "bench", "agent-rpc", "echo-server.js")], {
    stdio: ["pipe", "pipe", "inherit"],
  });
  const echoAddress = (await readJsonLine<{ msg?: string; address?: string }>(echo, (l) => l.msg === "echo serving")).address!;
  const rssIdleKiB = rssKiB(agent.pid);

  const transport = createGrpcJsTransport(agent.address);
  const inventory = createClient(InventoryService, transport);
  const metrics = createClient(MetricsService, transport);
  const register = async (from: number, to: number) => {
    // Batches in flight together share the registry's group commit.
    for (let start = from; start < to; start += 100) {
      await Promise.all(
        Array.from({ length: Math.min(100, to - start) }, (_, k) => {
          const i = start + k;
          return inventory.registerInstance({
            instance: {
              id: `vm-${String(i).padStart(5, "0")}`,
              name: `bench-${i}`,
              pid: pids[i % pids.length]!,
              tapDevice: "lo",
              allocatedVcpus: 2,
              allocatedMemoryBytes: 1n << 30n,
            },
          });
        }),
      );
    }
  };
  const checkStats = async (expected: number) => {
    const res = await metrics.listInstanceStats({});
    check(res.stats.length === expected, `ListInstanceStats returned ${res.stats.length} stats, expected ${expected}`);
    const bad = res.stats.find((s) => s.unavailable.length > 0 || s.cpuUsec === undefined || s.netRxBytes === undefined);
    check(!bad, `instance ${bad?.instanceId}: ${bad?.unavailable.join("; ")}`);
  };
  progress(`registering ${INSTANCES} instances`);
  await register(0, INSTANCES);
  await checkStats(INSTANCES);

  const statsPath = `/${MetricsService.typeName}/${MetricsService.method.listInstanceStats.name}`;
  const echoPath = `/${EchoService.typeName}/${EchoService.method.echo.name}`;
  const emptyRequest = Buffer.alloc(0);
  const echoRequest = Buffer.from(toBinary(EchoRequestSchema, create(EchoRequestSchema, { text: "ping" })));
  let checked = 0;
  const verifyStats = (res: Buffer, i: number) => {
    // Decoding every answer would make the client the bottleneck; a sample proves them right.
    if (i % 64 !== 0) return;
    const stats = fromBinary(ListInstanceStatsResponseSchema, res).stats;
    check(stats.length === INSTANCES, `ListInstanceStats returned ${stats.length} stats, expected ${INSTANCES}`);
    checked++;
  };
  const verifyEcho = (res: Buffer) => check(res.equals(echoRequest), "echo answered different bytes");

  const runAgent = (ms: number) => load(agent.address, statsPath, emptyRequest, verifyStats, agent.pid, ms);
  const runEcho = (ms: number) => load(echoAddress, echoPath, echoRequest, verifyEcho, echo.pid, ms);
  progress("warming up both servers");
  await runEcho(warmupMs);
  await runAgent(warmupMs);

  const agentRuns: LoadResult[] = [];
  const echoRuns: LoadResult[] = [];
  for (let r = 0; r < rounds; r++) {
    progress(`round ${r + 1}/${rounds}: ${durationMs} ms each`);
    // Alternate which goes first so a drift in machine load does not favour one side.
    if (r % 2 === 0) {
      echoRuns.push(await runEcho(durationMs));
      agentRuns.push(await runAgent(durationMs));
    } else {
      agentRuns.push(await runAgent(durationMs));
      echoRuns.push(await runEcho(durationMs));
    }
  }
  check(checked > 0, "no ListInstanceStats answer was checked");
  const rss200KiB = rssKiB(agent.pid);

  progress(`registering up to ${RSS_INSTANCES} instances for the RSS figure`);
  await register(INSTANCES, RSS_INSTANCES);
  for (let i = 0; i < 20; i++) await checkStats(RSS_INSTANCES);
  await sleep(500);
  const rss1000KiB = rssKiB(agent.pid);
  // The high-water mark: VmRSS depends on how long ago the last full GC ran, the peak less so.
  const hwmKiB = (pid: number) => Number(/^VmHWM:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, "latin1"))?.[1] ?? NaN);
  const peakKiB = hwmKiB(agent.pid);
  // For scale: the bare grpc-js server's own memory after the same load.
  const echoRssKiB = rssKiB(echo.pid);
  const echoPeakKiB = hwmKiB(echo.pid);
  // And once the agent has been left alone for a while at 1,000 instances (what an operator
  // sees between scrapes): V8's memory reducer has then run, whatever the last load left.
  await sleep(smoke ? 1000 : SETTLE_MS);
  const rssSettledKiB = rssKiB(agent.pid);
  transport.close();

  const rate = (r: LoadResult) => (r.calls * 1000) / r.wallMs;
  const agentRate = median(agentRuns.map(rate));
  const echoRate = median(echoRuns.map(rate));
  const ratio = agentRate / echoRate;
  const describe = (runs: LoadResult[]) => {
    const calls = runs.reduce((a, r) => a + r.calls, 0);
    const wall = runs.reduce((a, r) => a + r.wallMs, 0);
    const server = runs.reduce((a, r) => a + r.serverCpuMs, 0);
    const client = runs.reduce((a, r) => a + r.clientCpuMs, 0);
    return {
      text: `server CPU ${fmt((server * 1000) / calls, 0)} us/call (${fmt((server / wall) * 100, 0)}% of a core), client CPU ${fmt((client * 1000) / calls, 0)} us/call (${fmt((client / wall) * 100, 0)}%)`,
      serverUsPerCall: (server * 1000) / calls,
    };
  };
  const a = describe(agentRuns);
  const e = describe(echoRuns);
  const rssMb = rss1000KiB / 1024;
  printFigures(`agent-rpc (P2)${smoke ? " --smoke" : ""}`, [
    ["load", `${IN_FLIGHT} calls in flight over ${CONNECTIONS} HTTP/2 connections (node:http2 gRPC client), ${rounds} x ${durationMs} ms per server, alternating`],
    ["agent ListInstanceStats", `${fmt(agentRate, 0)} calls/s (${INSTANCES} instances, median of ${rounds})`],
    ["  cost", a.text],
    ["echo reference", `${fmt(echoRate, 0)} calls/s (bare grpc-js unary, tiny payload)`],
    ["  cost", e.text],
    ["ratio agent/echo (calls/s)", `${fmt(ratio, 3)}x`],
    ["server CPU per call agent/echo", `${fmt(a.serverUsPerCall / e.serverUsPerCall, 1)}x`],
    ["agent RSS", `${fmt(rssIdleKiB / 1024, 1)} MB idle, ${fmt(rss200KiB / 1024, 1)} MB at ${INSTANCES} after load, ${fmt(rssMb, 1)} MB at ${RSS_INSTANCES} right after load, ${fmt(rssSettledKiB / 1024, 1)} MB ${smoke ? 1 : SETTLE_MS / 1000} s later`],
    ["agent peak RSS", `${fmt(peakKiB / 1024, 1)} MB (VmHWM over the whole run)`],
    ["echo reference RSS", `${fmt(echoRssKiB / 1024, 1)} MB after its load, peak ${fmt(echoPeakKiB / 1024, 1)} MB`],
    ["agent log", logProblems(agent.logPath)],
    ["target P2 rate", `>= ${TARGET_RATIO}x: ${verdict(ratio >= TARGET_RATIO)}`],
    ["target P2 RSS", `<= ${TARGET_RSS_MB} MB at ${RSS_INSTANCES} instances: ${verdict(rssMb <= TARGET_RSS_MB)}`],
  ], [
    figure("agent_calls_per_s", agentRate, "calls/s", "higher"),
    figure("agent_server_cpu_us_per_call", a.serverUsPerCall, "us", "lower"),
    figure("echo_calls_per_s", echoRate, "calls/s", "higher"),
    figure("echo_server_cpu_us_per_call", e.serverUsPerCall, "us", "lower"),
    figure("ratio_agent_to_echo", ratio, "x", "higher"),
    figure("agent_rss_idle_mb", rssIdleKiB / 1024, "MB", "lower"),
    figure(`agent_rss_${INSTANCES}_after_load_mb`, rss200KiB / 1024, "MB", "lower"),
    figure(`agent_rss_${RSS_INSTANCES}_mb`, rssMb, "MB", "lower"),
    figure(`agent_rss_${RSS_INSTANCES}_settled_mb`, rssSettledKiB / 1024, "MB", "lower"),
    figure("agent_rss_peak_mb", peakKiB / 1024, "MB", "lower"),
    figure("echo_rss_peak_mb", echoPeakKiB / 1024, "MB", "lower"),
  ]);
});

/** Keeps IN_FLIGHT calls going over CONNECTIONS fresh connections for `ms`; measures both sides' CPU. */
async function load(
  target: string,
  path: string,
  request: Buffer,
  verify: (res: Buffer, i: number) => void,
  serverPid: number,
  ms: number,
): Promise<LoadResult> {
  const clients = await Promise.all(Array.from({ length: CONNECTIONS }, () => H2GrpcClient.connect(target)));
  try {
    let calls = 0;
    let stop = false;
    const server0 = processCpuMs(serverPid);
    const client0 = process.cpuUsage();
    const started = performance.now();
    const timer = setTimeout(() => (stop = true), ms);
    await Promise.all(
      Array.from({ length: IN_FLIGHT }, async (_, w) => {
        const client = clients[w % CONNECTIONS]!;
        while (!stop) {
          const res = await client.unary(path, request);
          verify(res, calls++);
        }
      }),
    ).finally(() => clearTimeout(timer));
    const wallMs = performance.now() - started;
    const client = process.cpuUsage(client0);
    return { calls, wallMs, clientCpuMs: (client.user + client.system) / 1000, serverCpuMs: processCpuMs(serverPid) - server0 };
  } finally {
    for (const c of clients) c.close();
  }
}
