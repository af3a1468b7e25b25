/**
 * Issue 13: what mTLS costs, against plaintext in the same run.
 *
 * 1. Unary CPU per call: two `fleetlet agent` daemons side by side, one plaintext and one with
 *    --tls-cert/--tls-key/--tls-ca (mTLS, certificates from `fleetlet certs`), driven by the same
 *    node:http2 load client with the same fixed number of InventoryService.ListInstances calls
 *    (empty registry: the cheapest real call, so the transport's share is the largest) over
 *    long-lived connections, in alternating rounds. The agent's CPU time per call comes from
 *    /proc/<pid>/stat before/after. Then the same with a fresh connection per call (a full
 *    handshake each: what a client that does not keep its connection pays).
 * 2. Handshake storm: an aggregator started with --hosts-file naming N agents (farm processes,
 *    bench/fanout/agent-farm.ts) that all serve mTLS, dialled with --agent-tls-*; the time from
 *    its start to all N hosts READY (FleetService.ListHosts) and to all SYNCED, and its CPU
 *    seconds until then; the same with plaintext agents, alternating.
 */
import { execFile, execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { fromBinary } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { InventoryService, ListInstancesResponseSchema } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { ConnectionState, FleetService, HostSyncState } from "../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { createGrpcJsTransport } from "../../lib/rpc/grpc-transport.js";
import { startFarm } from "../common/agent-farm-process.js";
import { FLEETLET_BIN, logProblems, processCpuMs, runBench, sleep, startFleetletDaemon, tempDir, type Daemon } from "../common/processes.js";
import { check, figure, fmt, median, printFigures, progress, verdict, type Figure } from "../common/report.js";
import { H2GrpcClient, type ClientTls } from "../common/h2-grpc-client.js";

/** A few calls in flight over a couple of long-lived connections, as a CLI or a dashboard would. */
const CONNECTIONS = 2;
const IN_FLIGHT = 8;
const FRESH_IN_FLIGHT = 4;
const TARGET_RATIO = 1.3;
const POLL_MS = 100;

type Mode = "plain" | "tls";

interface UnaryRun {
  calls: number;
  wallMs: number;
  agentCpuMs: number;
  clientCpuMs: number;
}

interface StormRun {
  servingMs: number;
  readyMs: number;
  syncedMs: number;
  /** The aggregator's CPU since its start (all of it: /proc counts from exec). */
  cpuReadyMs: number;
  cpuSyncedMs: number;
  farmCpuMs: number;
}

runBench(async ({ smoke }) => {
  // Two rounds at least, so each agent goes first once (a drift in machine load then favours
  // neither); a single smoke round moved the ratio by 0.1-0.2 from one run to the next.
  const rounds = smoke ? 2 : 3;
  const callsPerRound = smoke ? 5000 : 20_000;
  // The first ~10,000 calls of an agent cost 1.5x the later ones (JIT): warm-up, not TLS.
  const warmupCalls = 10_000;
  const idleMs = smoke ? 2000 : 20_000;
  const freshCalls = smoke ? 100 : 1000;
  const stormHosts = smoke ? 100 : 1000;
  const stormRounds = smoke ? 1 : 3;
  const farmProcesses = smoke ? 1 : 4;
  const readyTimeoutMs = smoke ? 30_000 : 180_000;
  const dir = tempDir("tls");

  progress("certificates (fleetlet certs ca|server|client)");
  const pki = await makeCertificates(join(dir, "pki"));
  const clientTls: ClientTls = { ca: readFileSync(pki.ca), cert: readFileSync(pki.viewer.cert), key: readFileSync(pki.viewer.key) };

  // ---- 1. unary CPU per call ----
  progress("starting a plaintext and an mTLS agent");
  // --runtime none, --standby off: no Docker/Kubernetes watch and no conntrack reader, whatever
  // this machine has; neither is what is measured. Info level (the default): a line per call.
  const agentArgs = (name: string) => ["--listen", "127.0.0.1:0", "--state-dir", join(dir, name), "--metrics-listen", "off", "--runtime", "none", "--standby", "off", "--log-level", "info"];
  const agents: Record<Mode, Daemon> = {
    plain: await startFleetletDaemon("agent", agentArgs("agent-plain"), join(dir, "agent-plain.log")),
    tls: await startFleetletDaemon("agent", [...agentArgs("agent-tls"), "--tls-cert", pki.server.cert, "--tls-key", pki.server.key, "--tls-ca", pki.ca], join(dir, "agent-tls.log")),
  };
  const tlsOf = (mode: Mode) => (mode === "tls" ? clientTls : undefined);
  const listPath = `/${InventoryService.typeName}/${InventoryService.method.listInstances.name}`;
  const emptyRequest = Buffer.alloc(0);
  let checked = 0;
  const verify = (res: Buffer, i: number) => {
    // A sample is decoded: decoding every answer would add client CPU to a 2-core machine.
    if (i % 256 !== 0) return;
    check(fromBinary(ListInstancesResponseSchema, res).instances.length === 0, "ListInstances of an empty agent answered instances");
    checked++;
  };
  const longLived = (mode: Mode, calls: number) => unaryLoad(agents[mode], tlsOf(mode), listPath, emptyRequest, verify, calls);
  const fresh = (mode: Mode, calls: number) => freshLoad(agents[mode], tlsOf(mode), listPath, emptyRequest, verify, calls);

  progress("warming up both agents");
  for (const mode of ["plain", "tls"] as const) {
    await longLived(mode, warmupCalls);
    await fresh(mode, Math.min(100, freshCalls));
  }
  const runs: Record<Mode, UnaryRun[]> = { plain: [], tls: [] };
  // What else ran on the machine meanwhile: while other work loaded it, the plaintext agent's CPU
  // per call rose more than the mTLS agent's (the ratio 1.25x against 1.41-1.47x on a quiet
  // machine), so a run says how quiet it was.
  const ours = () => processCpuMs(agents.plain.pid) + processCpuMs(agents.tls.pid) + processCpuMs(process.pid);
  const machine0 = { ...machineCpuMs(), ours: ours(), at: performance.now() };
  for (let r = 0; r < rounds; r++) {
    progress(`round ${r + 1}/${rounds}: ${callsPerRound} calls each over long-lived connections`);
    // Alternate which goes first so a drift in machine load does not favour one side.
    for (const mode of r % 2 === 0 ? (["plain", "tls"] as const) : (["tls", "plain"] as const)) runs[mode].push(await longLived(mode, callsPerRound));
  }
  const machine1 = machineCpuMs();
  const roundsWallMs = performance.now() - machine0.at;
  // Never below 0: two sums of 10 ms ticks taken at slightly different moments.
  const otherLoadPercent = Math.max(0, ((machine1.busyMs - machine0.busyMs - (ours() - machine0.ours)) / roundsWallMs) * 100);
  const stealPercent = ((machine1.stealMs - machine0.stealMs) / roundsWallMs) * 100;
  progress(`${freshCalls} calls each with a fresh connection per call`);
  const freshRuns: Record<Mode, UnaryRun> = { plain: await fresh("plain", freshCalls), tls: await fresh("tls", freshCalls) };
  check(checked > 0, "no ListInstances answer was checked");
  // Idle last: an mTLS agent re-reads and re-checks its certificate files every second. After a
  // settle, as V8 tidies up its heap for a few seconds after a load ends (7-8 ms/s measured
  // right after it, in either mode).
  progress(`both agents idle for ${idleMs} ms`);
  await sleep(smoke ? 1000 : 8000);
  const idle0 = { plain: processCpuMs(agents.plain.pid), tls: processCpuMs(agents.tls.pid) };
  await sleep(idleMs);
  const idleCpuMsPerS = { plain: ((processCpuMs(agents.plain.pid) - idle0.plain) * 1000) / idleMs, tls: ((processCpuMs(agents.tls.pid) - idle0.tls) * 1000) / idleMs };
  for (const a of Object.values(agents)) await a.stop();

  // ---- 2. handshake storm ----
  progress(`starting ${stormHosts} plaintext and ${stormHosts} mTLS agents in ${farmProcesses * 2} farm processes`);
  // All farm agents listen on 127.0.0.1 (distinct ports) and share one server certificate for
  // 127.0.0.1: the aggregator checks each agent's certificate against the dialled IP, and every
  // connection is still a full handshake of its own (grpc-js resumes no TLS session, and each
  // farm agent has its own listener and credentials). The aggregator's work per handshake (ECDHE,
  // the chain's signature checks, signing with its own key) does not depend on which certificate
  // it is shown; 1,000 distinct certificates would take 1,000 `fleetlet certs` runs to make.
  const perFarm = Math.ceil(stormHosts / farmProcesses);
  const farmSet = (mode: Mode) =>
    Array.from({ length: farmProcesses }, (_, f) =>
      startFarm(Math.min(perFarm, stormHosts - f * perFarm), 0, join(dir, `farm-${mode}-${f}`), {
        tls: mode === "tls" ? { certFile: pki.server.cert, keyFile: pki.server.key, caFile: pki.ca } : undefined,
      }),
    );
  const farms = { plain: farmSet("plain"), tls: farmSet("tls") };
  const farmAddresses: Record<Mode, string[]> = {
    plain: (await Promise.all(farms.plain.map((f) => f.addresses))).flat(),
    tls: (await Promise.all(farms.tls.map((f) => f.addresses))).flat(),
  };
  for (const mode of ["plain", "tls"] as const) check(farmAddresses[mode].length === stormHosts, `${mode} farms serve ${farmAddresses[mode].length} agents, expected ${stormHosts}`);
  const farmPids = [...farms.plain, ...farms.tls].map((f) => f.child.pid);
  const farmCpu = () => farmPids.reduce((a, pid) => a + processCpuMs(pid), 0);
  // Both sets run during every storm: what the idle ones cost is the same background for both
  // modes, shown with the figures.
  const farmIdle0 = farmCpu();
  await sleep(2000);
  const farmIdleCpuPercent = (farmCpu() - farmIdle0) / 20;

  progress("an aggregator with no hosts (what starting costs without any)");
  const empty = await stormOnce([], undefined, join(dir, "aggregator-empty"), farmCpu, readyTimeoutMs);
  const agentTlsArgs = ["--agent-tls-ca", pki.ca, "--agent-tls-cert", pki.aggregator.cert, "--agent-tls-key", pki.aggregator.key];
  const storms: Record<Mode, StormRun[]> = { plain: [], tls: [] };
  const logs: Record<Mode, string> = { plain: "", tls: "" };
  let i = 0;
  for (let r = 0; r < stormRounds; r++) {
    for (const mode of r % 2 === 0 ? (["tls", "plain"] as const) : (["plain", "tls"] as const)) {
      progress(`storm ${r + 1}/${stormRounds}: aggregator dialling ${stormHosts} ${mode === "tls" ? "mTLS" : "plaintext"} agents`);
      const stateDir = join(dir, `aggregator-${i++}-${mode}`);
      const run = await stormOnce(farmAddresses[mode], mode === "tls" ? agentTlsArgs : undefined, stateDir, farmCpu, readyTimeoutMs, (path) => (logs[mode] = logProblems(path)));
      progress(`  READY ${fmt(run.readyMs, 0)} ms, SYNCED ${fmt(run.syncedMs, 0)} ms, aggregator CPU ${fmt(run.cpuSyncedMs, 0)} ms`);
      storms[mode].push(run);
    }
  }

  // ---- figures ----
  const perCall = (runs: UnaryRun[], k: "agentCpuMs" | "clientCpuMs") => (runs.reduce((a, r) => a + r[k], 0) * 1000) / runs.reduce((a, r) => a + r.calls, 0);
  const rate = (runs: UnaryRun[]) => median(runs.map((r) => (r.calls * 1000) / r.wallMs));
  const u = {
    plain: { cpu: perCall(runs.plain, "agentCpuMs"), client: perCall(runs.plain, "clientCpuMs"), rate: rate(runs.plain) },
    tls: { cpu: perCall(runs.tls, "agentCpuMs"), client: perCall(runs.tls, "clientCpuMs"), rate: rate(runs.tls) },
  };
  const unaryRatio = u.tls.cpu / u.plain.cpu;
  const f = {
    plain: { cpu: perCall([freshRuns.plain], "agentCpuMs"), rate: rate([freshRuns.plain]) },
    tls: { cpu: perCall([freshRuns.tls], "agentCpuMs"), rate: rate([freshRuns.tls]) },
  };
  const freshRatio = f.tls.cpu / f.plain.cpu;
  const s = (mode: Mode, k: keyof StormRun) => median(storms[mode].map((r) => r[k]));
  const ratio = (k: keyof StormRun) => s("tls", k) / s("plain", k);
  // Less what an aggregator with no hosts spends to start: the part the hosts cost.
  const net = (mode: Mode) => s(mode, "cpuSyncedMs") - empty.cpuSyncedMs;
  const n = stormHosts;
  const describeStorm = (mode: Mode) =>
    `READY ${fmt(s(mode, "readyMs") / 1000, 2)} s, SYNCED ${fmt(s(mode, "syncedMs") / 1000, 2)} s after start (serving at ${fmt(s(mode, "servingMs") / 1000, 2)} s); aggregator CPU ${fmt(s(mode, "cpuReadyMs") / 1000, 2)} s at READY, ${fmt(s(mode, "cpuSyncedMs") / 1000, 2)} s at SYNCED (${fmt(net(mode) / 1000, 2)} s more than with no hosts); farms ${fmt(s(mode, "farmCpuMs") / 1000, 2)} s`;
  const figures: Figure[] = [
    figure("plain_unary_agent_cpu_us_per_call", u.plain.cpu, "us", "lower"),
    figure("tls_unary_agent_cpu_us_per_call", u.tls.cpu, "us", "lower"),
    figure("ratio_unary_cpu_tls_to_plain", unaryRatio, "x", "lower"),
    figure("plain_unary_calls_per_s", u.plain.rate, "calls/s", "higher"),
    figure("tls_unary_calls_per_s", u.tls.rate, "calls/s", "higher"),
    // Idle CPU over the smoke run's 2 s is a few 10 ms ticks: too coarse for bench:quick to compare.
    ...(smoke
      ? []
      : [figure("plain_idle_agent_cpu_ms_per_s", idleCpuMsPerS.plain, "ms/s", "lower"), figure("tls_idle_agent_cpu_ms_per_s", idleCpuMsPerS.tls, "ms/s", "lower")]),
    figure("plain_fresh_conn_agent_cpu_us_per_call", f.plain.cpu, "us", "lower"),
    figure("tls_fresh_conn_agent_cpu_us_per_call", f.tls.cpu, "us", "lower"),
    figure("ratio_fresh_conn_cpu_tls_to_plain", freshRatio, "x", "lower"),
    figure(`h${n}_plain_ready_s`, s("plain", "readyMs") / 1000, "s", "lower"),
    figure(`h${n}_tls_ready_s`, s("tls", "readyMs") / 1000, "s", "lower"),
    figure(`h${n}_ratio_ready_tls_to_plain`, ratio("readyMs"), "x", "lower"),
    figure(`h${n}_plain_synced_s`, s("plain", "syncedMs") / 1000, "s", "lower"),
    figure(`h${n}_tls_synced_s`, s("tls", "syncedMs") / 1000, "s", "lower"),
    figure(`h${n}_plain_aggregator_cpu_ready_s`, s("plain", "cpuReadyMs") / 1000, "s", "lower"),
    figure(`h${n}_tls_aggregator_cpu_ready_s`, s("tls", "cpuReadyMs") / 1000, "s", "lower"),
    figure(`h${n}_ratio_aggregator_cpu_ready_tls_to_plain`, ratio("cpuReadyMs"), "x", "lower"),
    figure(`h${n}_plain_aggregator_cpu_synced_s`, s("plain", "cpuSyncedMs") / 1000, "s", "lower"),
    figure(`h${n}_tls_aggregator_cpu_synced_s`, s("tls", "cpuSyncedMs") / 1000, "s", "lower"),
    figure(`h${n}_ratio_aggregator_cpu_synced_tls_to_plain`, ratio("cpuSyncedMs"), "x", "lower"),
    figure("aggregator_no_hosts_cpu_s", empty.cpuSyncedMs / 1000, "s", "lower"),
  ];
  printFigures(`tls${smoke ? " --smoke" : ""}`, [
    ["unary load", `InventoryService.ListInstances (empty registry), ${IN_FLIGHT} in flight over ${CONNECTIONS} long-lived HTTP/2 connections (node:http2 client), ${rounds} x ${callsPerRound} calls per agent, alternating; mTLS = --tls-cert/--tls-key/--tls-ca, P-256 certificates from fleetlet certs`],
    ["plaintext agent", `${fmt(u.plain.cpu, 1)} us agent CPU per call, ${fmt(u.plain.rate, 0)} calls/s (median of ${rounds}); client ${fmt(u.plain.client, 1)} us/call`],
    ["mTLS agent", `${fmt(u.tls.cpu, 1)} us agent CPU per call, ${fmt(u.tls.rate, 0)} calls/s (median of ${rounds}); client ${fmt(u.tls.client, 1)} us/call`],
    ["machine during the rounds", `${fmt(otherLoadPercent, 0)}% of a core busy outside this benchmark's processes (${fmt(stealPercent, 0)}% of it stolen by the hypervisor; a busy machine lowers the ratio)`],
    ["each round", `agent CPU per call plaintext ${runs.plain.map((r) => fmt((r.agentCpuMs * 1000) / r.calls, 0)).join(", ")} us, mTLS ${runs.tls.map((r) => fmt((r.agentCpuMs * 1000) / r.calls, 0)).join(", ")} us`],
    ["ratio mTLS/plaintext CPU per call", `${fmt(unaryRatio, 2)}x (calls/s ${fmt(u.tls.rate / u.plain.rate, 2)}x)`],
    ["fresh connection per call", `${freshCalls} calls, ${FRESH_IN_FLIGHT} at a time, each on a new connection: plaintext ${fmt(f.plain.cpu, 0)} us agent CPU per call (${fmt(f.plain.rate, 0)} calls/s), mTLS ${fmt(f.tls.cpu, 0)} us (${fmt(f.tls.rate, 0)} calls/s): ${fmt(freshRatio, 2)}x`],
    ["idle agent CPU", `plaintext ${fmt(idleCpuMsPerS.plain, 1)} ms/s, mTLS ${fmt(idleCpuMsPerS.tls, 1)} ms/s (over ${idleMs / 1000} s, no calls; /proc ticks are 10 ms)`],
    ["agent logs", `plaintext: ${logProblems(agents.plain.logPath)}; mTLS: ${logProblems(agents.tls.logPath)}`],
    ["storm setup", `aggregator --hosts-file with ${n} agents (${farmProcesses} farm processes per mode, all on 127.0.0.1 sharing one server certificate), median of ${stormRounds} per mode, alternating; ListHosts polled every ${POLL_MS} ms; farms idle ${fmt(farmIdleCpuPercent, 1)}% of a core`],
    ["aggregator, no hosts", `serving at ${fmt(empty.servingMs / 1000, 2)} s after start, ${fmt(empty.cpuSyncedMs / 1000, 2)} s CPU`],
    [`[${n}] plaintext agents`, describeStorm("plain")],
    [`[${n}] mTLS agents`, describeStorm("tls")],
    [`[${n}] each run`, (["plain", "tls"] as const).map((mode) => `${mode === "tls" ? "mTLS" : "plaintext"} READY ${storms[mode].map((r) => fmt(r.readyMs / 1000, 1)).join(", ")} s, CPU ${storms[mode].map((r) => fmt(r.cpuReadyMs / 1000, 1)).join(", ")} s`).join("; ")],
    [`[${n}] ratio mTLS/plaintext`, `time to READY ${fmt(ratio("readyMs"), 2)}x, to SYNCED ${fmt(ratio("syncedMs"), 2)}x; aggregator CPU at READY ${fmt(ratio("cpuReadyMs"), 2)}x, at SYNCED ${fmt(ratio("cpuSyncedMs"), 2)}x (${fmt(net("tls") / net("plain"), 2)}x less the no-host start)`],
    [`[${n}] aggregator logs`, `plaintext: ${logs.plain}; mTLS: ${logs.tls}`],
    ["target unary CPU", `mTLS <= ${TARGET_RATIO}x plaintext per call (long-lived connections): ${verdict(unaryRatio <= TARGET_RATIO)}`],
  ], figures);
});

let clockTicks: number | undefined;

/** All CPUs' busy time (user, nice, system, irq, softirq, steal) and steal so far, from /proc/stat. */
function machineCpuMs(): { busyMs: number; stealMs: number } {
  clockTicks ??= Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
  const [user, nice, system, , , irq, softirq, steal] = readFileSync("/proc/stat", "latin1").split("\n")[0]!.trim().split(/\s+/).slice(1).map(Number) as number[];
  const toMs = (ticks: number) => (ticks * 1000) / clockTicks!;
  return { busyMs: toMs(user! + nice! + system! + irq! + softirq! + steal!), stealMs: toMs(steal!) };
}

interface Pki {
  ca: string;
  server: { cert: string; key: string };
  aggregator: { cert: string; key: string };
  viewer: { cert: string; key: string };
}

/** The files an operator makes (docs/operations.md "TLS"), with the same command. */
async function makeCertificates(dir: string): Promise<Pki> {
  const fleetlet = (...args: string[]) => promisify(execFile)(process.execPath, [FLEETLET_BIN, "certs", ...args]);
  const ca = join(dir, "ca");
  await fleetlet("ca", "--out", ca);
  await Promise.all([
    fleetlet("server", "--ca-dir", ca, "--out", join(dir, "hosts"), "--name", "agent", "--host", "127.0.0.1"),
    fleetlet("client", "--ca-dir", ca, "--out", join(dir, "users"), "--name", "aggregator", "--role", "aggregator"),
    fleetlet("client", "--ca-dir", ca, "--out", join(dir, "users"), "--name", "bench", "--role", "viewer"),
  ]);
  const pair = (sub: string, name: string) => ({ cert: join(dir, sub, `${name}.crt`), key: join(dir, sub, `${name}.key`) });
  return { ca: join(ca, "ca.crt"), server: pair("hosts", "agent"), aggregator: pair("users", "aggregator"), viewer: pair("users", "bench") };
}

/** `calls` calls, IN_FLIGHT at a time over CONNECTIONS connections opened (and handshaken) before the clock starts. */
async function unaryLoad(agent: Daemon, tls: ClientTls | undefined, path: string, request: Buffer, verify: (res: Buffer, i: number) => void, calls: number): Promise<UnaryRun> {
  const clients = await Promise.all(Array.from({ length: CONNECTIONS }, () => H2GrpcClient.connect(agent.address, tls)));
  try {
    let next = 0;
    const agent0 = processCpuMs(agent.pid);
    const client0 = process.cpuUsage();
    const started = performance.now();
    await Promise.all(
      Array.from({ length: IN_FLIGHT }, async (_, w) => {
        const client = clients[w % CONNECTIONS]!;
        while (next < calls) {
          const i = next++;
          verify(await client.unary(path, request), i);
        }
      }),
    );
    const wallMs = performance.now() - started;
    const client = process.cpuUsage(client0);
    return { calls, wallMs, agentCpuMs: processCpuMs(agent.pid) - agent0, clientCpuMs: (client.user + client.system) / 1000 };
  } finally {
    await Promise.all(clients.map((c) => c.close()));
  }
}

/** `calls` calls, FRESH_IN_FLIGHT at a time, each on a connection of its own (connect, call, close). */
async function freshLoad(agent: Daemon, tls: ClientTls | undefined, path: string, request: Buffer, verify: (res: Buffer, i: number) => void, calls: number): Promise<UnaryRun> {
  let next = 0;
  const agent0 = processCpuMs(agent.pid);
  const client0 = process.cpuUsage();
  const started = performance.now();
  await Promise.all(
    Array.from({ length: FRESH_IN_FLIGHT }, async () => {
      while (next < calls) {
        const i = next++;
        const client = await H2GrpcClient.connect(agent.address, tls);
        try {
          verify(await client.unary(path, request), i);
        } finally {
          await client.close();
        }
      }
    }),
  );
  const wallMs = performance.now() - started;
  // The agent closes its side of the last connections a moment later; that is part of the cost.
  await sleep(200);
  const client = process.cpuUsage(client0);
  return { calls, wallMs, agentCpuMs: processCpuMs(agent.pid) - agent0, clientCpuMs: (client.user + client.system) / 1000 };
}

/**
 * Starts an aggregator over `addresses` and polls ListHosts until every host is READY, then until
 * every one is also SYNCED; times are from the spawn, CPU is the process's whole CPU so far.
 */
async function stormOnce(
  addresses: string[],
  agentTlsArgs: string[] | undefined,
  stateDir: string,
  farmCpu: () => number,
  timeoutMs: number,
  onLog?: (path: string) => void,
): Promise<StormRun> {
  const n = addresses.length;
  const hostsFile = `${stateDir}.hosts`;
  writeFileSync(hostsFile, addresses.map((a, i) => `h${String(i).padStart(4, "0")}=${a}\n`).join(""));
  const logPath = `${stateDir}.log`;
  const farm0 = farmCpu();
  const started = performance.now();
  const aggregator = await startFleetletDaemon(
    "aggregator",
    ["--listen", "127.0.0.1:0", "--state-dir", stateDir, "--metrics-listen", "off", ...(n > 0 ? ["--hosts-file", hostsFile] : []), ...(agentTlsArgs ?? []), "--log-level", "info"],
    logPath,
  );
  const servingMs = performance.now() - started;
  const transport = createGrpcJsTransport(aggregator.address);
  try {
    const fleet = createClient(FleetService, transport);
    let ready: { ms: number; cpuMs: number } | undefined;
    for (;;) {
      const hosts = (await fleet.listHosts({})).hosts;
      const now = performance.now();
      const cpuMs = processCpuMs(aggregator.pid);
      check(hosts.length === n, `ListHosts shows ${hosts.length} hosts, expected ${n}`);
      const readyCount = hosts.filter((h) => h.connectionState === ConnectionState.READY).length;
      const syncedCount = hosts.filter((h) => h.syncState === HostSyncState.SYNCED).length;
      if (readyCount === n) ready ??= { ms: now - started, cpuMs };
      if (readyCount === n && syncedCount === n) {
        const failing = hosts.find((h) => h.lastError !== "");
        check(!failing, `host ${failing?.name}: ${failing?.lastError}`);
        onLog?.(logPath);
        return { servingMs, readyMs: ready!.ms, syncedMs: now - started, cpuReadyMs: ready!.cpuMs, cpuSyncedMs: cpuMs, farmCpuMs: farmCpu() - farm0 };
      }
      if (now - started > timeoutMs) {
        const stuck = hosts.find((h) => h.connectionState !== ConnectionState.READY || h.syncState !== HostSyncState.SYNCED);
        check(false, `after ${timeoutMs} ms: ${readyCount} of ${n} READY, ${syncedCount} SYNCED; e.g. ${stuck?.name}: ${ConnectionState[stuck?.connectionState ?? 0]} ${HostSyncState[stuck?.syncState ?? 0]} ${stuck?.lastError}`);
      }
      await sleep(POLL_MS);
    }
  } finally {
    transport.close();
    await aggregator.stop();
  }
}
