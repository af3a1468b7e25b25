/**
 * P4: the agent's conntrack event reader under a storm of short connections. In a namespace of
 * its own (conntrack active, TIME_WAIT 1 s), load generators make N short TCP connections to a
 * server on 127.0.0.1 while a probe process holding the agent's conntrack source (agent defaults,
 * as standby-setup.ts opens it) counts the NEW (SYN_SENT) events of that server port, the
 * overflows (ENOBUFS) with a resync dump for each, its CPU and its event-loop delay.
 * Reference, same run, same load: `conntrack -E -p tcp --dport PORT` writing to a file,
 * counting its [NEW] lines. Every round has a server port of its own, runs alone (one reader
 * at a time) and starts on an empty table (`conntrack -F` in the namespace between rounds, so
 * no reader gets the GC's burst of DESTROYs for an earlier round's flows). Two loads, each for
 * both readers:
 *   paced: 7,000 connections/s, which is >= 42,000 events/s (the P4 target is 40,000)
 *   max:   as fast as the generators can go
 * A connection here makes 6 or 7 NEW+UPDATE events (SYN_SENT, SYN_RECV, ESTABLISHED, FIN_WAIT,
 * CLOSE_WAIT unless the client's ACK and FIN travel together, LAST_ACK, TIME_WAIT); its DESTROY
 * comes later, from the conntrack GC. The offered event rate is given as that range.
 */
import { closeSync, existsSync, openSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { processCpuMs, readJsonLine, runBench, signal, sleep, tempDir, type Child } from "../common/processes.js";
import { check, figure, fmt, Malfunction, printFigures, progress, verdict, type Figure } from "../common/report.js";
import { createNetns, enableConntrack, missingPrerequisite, sh, skipBench, startInNs, uniqueTag } from "./netns.js";
import type { ProbeStats } from "./probe.js";
import { DEFAULT_RECEIVE_BUFFER_BYTES } from "../../agent/kernel/conntrack-process-source.js";

const HERE = fileURLToPath(new URL(".", import.meta.url));
const SERVER = join(HERE, "server.js");
const LOAD = join(HERE, "load.js");
const PROBE = join(HERE, "probe.js");
const TARGET_EVENTS_PER_S = 40_000;
/** What the agent's reader asks for (SO_RCVBUFFORCE; the kernel doubles it). */
const AGENT_BUFFER_BYTES = DEFAULT_RECEIVE_BUFFER_BYTES;
/** 7,000 connections/s x 6..7 events = 42,000..49,000 events/s: above the target either way. */
const PACED_CONNECTIONS_PER_S = 7000;
const EVENTS_PER_CONNECTION = [6, 7] as const;
const TARGET_LOOP_P99_MS = 20;
/** Node generator processes and connections in flight (in all). */
const GENERATORS = 2;
const CONCURRENCY = 128;
/** After the generators are done, how long the counts may keep rising before they are read. */
const SETTLE_QUIET_MS = 1000;
const SETTLE_MAX_MS = 15_000;

interface LoadResult {
  made: number;
  errors: number;
  firstError?: string;
  /** From the first generator's first connect to the last one's last close. */
  ms: number;
  startedAt: number;
  endedAt: number;
}

interface FleetletRound {
  load: LoadResult;
  stats: ProbeStats;
  /** Set when the probe died during the round: how, and its stderr; stats are its last tick. */
  crashed?: string;
}

interface ReferenceRound {
  load: LoadResult;
  newLines: number;
  lines: number;
  cpuMs: number;
  stderr: string;
}

runBench(async ({ smoke }) => {
  const title = `conntrack (P4)${smoke ? " --smoke" : ""}`;
  const missing = missingPrerequisite([["ip", "-V"], ["iptables", "--version"], ["conntrack", "--version"]]);
  if (missing) return skipBench(title, missing);
  const n = smoke ? 2000 : 20_000;
  const dir = tempDir("conntrack");
  const ns = `flt-bct-${uniqueTag()}`;

  progress(`namespace ${ns}: conntrack on, TIME_WAIT 1 s`);
  createNetns(ns);
  enableConntrack(ns);
  // Several rounds of N client ports: room for all even if earlier ones are still held.
  sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_local_port_range=10000 65000");

  const server = startInNs(ns, process.execPath, [SERVER, "0", "0", "0", "0", "0"], { stdio: ["ignore", "pipe", "inherit"] });
  const { ports } = await readJsonLine<{ ports?: number[] }>(server, (v) => Array.isArray(v.ports), 15_000);
  const roundPorts = ports as [number, number, number, number, number];
  /** An empty table before each round (only this namespace's table; no reader is running). */
  const flush = () => sh("ip", "netns", "exec", ns, "conntrack", "-F");

  /** GENERATORS processes share the connections; `rate` (connections/s in all) paces them. */
  const runLoad = async (port: number, count: number, concurrency: number, rate?: number): Promise<LoadResult> => {
    const generators = count < 1000 ? 1 : GENERATORS;
    const results = await Promise.all(
      Array.from({ length: generators }, async (_, i) => {
        const share = Math.floor(count / generators) + (i < count % generators ? 1 : 0);
        const args = [LOAD, String(port), String(share), String(Math.ceil(concurrency / generators))];
        if (rate !== undefined) args.push(String(rate / generators));
        const gen = startInNs(ns, process.execPath, args, { stdio: ["ignore", "pipe", "inherit"] });
        const result = await readJsonLine<LoadResult>(gen, (v) => typeof v.made === "number", 180_000);
        await gen.exited;
        return result;
      }),
    );
    const startedAt = Math.min(...results.map((r) => r.startedAt));
    const endedAt = Math.max(...results.map((r) => r.endedAt));
    const result: LoadResult = {
      made: results.reduce((a, r) => a + r.made, 0),
      errors: results.reduce((a, r) => a + r.errors, 0),
      firstError: results.find((r) => r.firstError !== undefined)?.firstError,
      ms: endedAt - startedAt,
      startedAt,
      endedAt,
    };
    check(result.made > 0, `load generator made no connection (${result.errors} errors, first: ${result.firstError})`);
    progress(`  ${result.made} connections in ${fmt(result.ms, 0)} ms (${fmt(result.made / (result.ms / 1000), 0)}/s)`);
    return result;
  };

  /** Polls `read` until it reaches `want` or stops changing for SETTLE_QUIET_MS. */
  const settle = async <T>(read: () => Promise<T>, count: (v: T) => number, want: number): Promise<T> => {
    const end = performance.now() + SETTLE_MAX_MS;
    let last = await read();
    let changedAt = performance.now();
    while (count(last) < want && performance.now() - changedAt < SETTLE_QUIET_MS && performance.now() < end) {
      await sleep(100);
      const next = await read();
      if (count(next) !== count(last)) changedAt = performance.now();
      last = next;
    }
    return last;
  };

  let probes = 0;
  /**
   * One round with a fresh probe: `start PORT`, the load, then counters until they settle. If
   * the probe dies (at any point), the round still runs to its end and reports how it died and
   * what the probe had counted by its last periodic report.
   */
  const fleetletRound = async (port: number, load: () => Promise<LoadResult>): Promise<FleetletRound> => {
    const errPath = join(dir, `probe-${++probes}.err`);
    const errFd = openSync(errPath, "w");
    let probe: Child;
    try {
      probe = startInNs(ns, process.execPath, [PROBE], { stdio: ["pipe", "pipe", errFd] });
    } finally {
      closeSync(errFd);
    }
    const lines = lineQueue(probe);
    const alive = () => probe.child.exitCode === null && probe.child.signalCode === null;
    const ready = await lines.next((v) => v.ready === true || v.error !== undefined, 15_000);
    check(ready.ready === true, `probe could not read conntrack: ${String(ready.error)}`);
    const ask = async <T>(command: string, accept: (v: Record<string, unknown>) => boolean): Promise<T | undefined> => {
      if (!alive()) return undefined;
      try {
        probe.child.stdin!.write(`${command}\n`);
        return (await lines.next(accept, 10_000)) as T;
      } catch (e) {
        if (alive()) throw e;
        return undefined;
      }
    };
    await ask(`start ${port}`, (v) => v.started === port);
    const result = await load();
    // Once the probe is gone, its last periodic report is what it saw.
    const read = async () => (await ask<{ stats: ProbeStats }>("stats", (v) => v.stats !== undefined))?.stats ?? lines.lastTick();
    // Until nothing more arrives (UPDATEs trail the NEWs; DESTROYs, later still, do not count).
    const stats = await settle(read, (s) => s?.updates ?? 0, Infinity);
    if (!alive()) {
      await Promise.race([probe.exited, sleep(1000)]);
      const how = probe.child.signalCode ?? `exit ${probe.child.exitCode}`;
      const stderr = oneLine(readFileSync(errPath, "utf8"));
      progress(`  the probe died (${how}): ${stderr}`);
      const none: ProbeStats = {
        port, events: 0, portEvents: 0, updates: 0, newSynSent: 0, overflows: 0, resyncs: 0, resyncFailures: 0,
        decodeErrors: 0, cpuMs: NaN, readerCpuMs: NaN, readerRestarts: 0, eventLoopP99Ms: NaN, eventLoopMaxMs: NaN, firstEventMs: undefined, lastEventMs: undefined,
        receiveBufferBytes: Number(ready.receiveBufferBytes),
      };
      const when = stats?.port === port ? "counters up to its last report" : "died before its first report";
      return { load: result, stats: stats?.port === port ? stats : none, crashed: `${how} (${when}): ${stderr || "(no stderr)"}` };
    }
    check(stats !== undefined, "no counters from the probe");
    check(lines.errors.length === 0, `probe reported errors: ${lines.errors.slice(0, 3).join("; ")}`);
    probe.child.stdin!.end();
    await Promise.race([probe.exited, sleep(5000)]);
    await probe.stop();
    return { load: result, stats };
  };

  let references = 0;
  const referenceRound = async (port: number, load: () => Promise<LoadResult>, extra: string[] = []): Promise<ReferenceRound> => {
    const outPath = join(dir, `conntrack-E-${++references}.out`);
    const errPath = join(dir, `conntrack-E-${references}.err`);
    const outFd = openSync(outPath, "w");
    const errFd = openSync(errPath, "w");
    let ct: Child;
    try {
      ct = startInNs(ns, "conntrack", ["-E", ...extra, "-p", "tcp", "--dport", String(port)], { stdio: ["ignore", outFd, errFd] });
    } finally {
      closeSync(outFd);
      closeSync(errFd);
    }
    await sleep(500); // it subscribes within milliseconds; it prints nothing until an event
    check(ct.child.exitCode === null && ct.child.signalCode === null, `conntrack -E exited at once: ${readFileSync(errPath, "utf8").trim()}`);
    const cpuBefore = processCpuMs(ct.pid);
    const result = await load();
    await settle(async () => countLines(outPath), (c) => c.new, result.made);
    const cpuMs = processCpuMs(ct.pid) - cpuBefore;
    signal(ct.pid, "SIGINT"); // conntrack prints "N flow events have been shown" and exits
    await Promise.race([ct.exited, sleep(5000)]);
    await ct.stop();
    const counted = countLines(outPath);
    return { load: result, newLines: counted.new, lines: counted.total, cpuMs, stderr: oneLine(readFileSync(errPath, "utf8")) };
  };

  // --- the rounds ----------------------------------------------------------------------
  const paced = (port: number) => () => runLoad(port, n, CONCURRENCY, PACED_CONNECTIONS_PER_S);
  const max = (port: number) => () => runLoad(port, n, CONCURRENCY);
  flush();
  progress(`fleetlet, paced to ${PACED_CONNECTIONS_PER_S} connections/s: ${n} connections`);
  const flPaced = await fleetletRound(roundPorts[0], paced(roundPorts[0]));
  flush();
  progress(`conntrack -E, paced to ${PACED_CONNECTIONS_PER_S} connections/s: ${n} connections`);
  const refPaced = await referenceRound(roundPorts[1], paced(roundPorts[1]));
  flush();
  progress(`fleetlet, max rate: ${n} connections`);
  const flMax = await fleetletRound(roundPorts[2], max(roundPorts[2]));
  flush();
  progress(`conntrack -E, max rate: ${n} connections`);
  const refMax = await referenceRound(roundPorts[3], max(roundPorts[3]));
  // The same buffer as the agent's reader asks for: how much of the difference is the buffer.
  flush();
  progress(`conntrack -E -b ${AGENT_BUFFER_BYTES}, max rate: ${n} connections`);
  const refMaxBig = await referenceRound(roundPorts[4], max(roundPorts[4]), ["-b", String(AGENT_BUFFER_BYTES)]);
  await server.stop();

  // --- figures -------------------------------------------------------------------------
  /** Offered: what the kernel emitted for the connections made (NEW + UPDATEs), low and high. */
  const offered = (l: LoadResult, k: number) => (l.made * k) / (l.ms / 1000);
  const loadRow = (l: LoadResult) =>
    `${l.made} connections in ${fmt(l.ms, 0)} ms (${fmt(l.made / (l.ms / 1000), 0)}/s, ${l.errors} failed${l.firstError ? `: ${l.firstError}` : ""}) = ` +
    `${fmt(offered(l, EVENTS_PER_CONNECTION[0]) / 1000, 1)}k-${fmt(offered(l, EVENTS_PER_CONNECTION[1]) / 1000, 1)}k events/s offered`;
  const flRows = (label: string, r: FleetletRound): [string, string][] => {
    const s = r.stats;
    const lost = r.load.made - s.newSynSent;
    return [
      [`[${label}] fleetlet load`, loadRow(r.load)],
      [`[${label}] fleetlet NEW seen / made`, `${s.newSynSent} / ${r.load.made} (lost ${Math.max(0, lost)})${r.crashed ? " - the probe DIED" : ""}`],
      [`[${label}] fleetlet events received`, `${s.updates} NEW+UPDATE to the port (${fmt(s.updates / r.load.made, 2)} per connection made), ${fmt(s.updates / (r.load.ms / 1000), 0)}/s over the load's window`],
      [`[${label}] fleetlet overflows/resyncs`, `${s.overflows} ENOBUFS / ${s.resyncs} resync dumps done (${s.resyncFailures} failed); decode errors ${s.decodeErrors}`],
      [`[${label}] fleetlet CPU`, `${fmt(s.cpuMs, 0)} ms, reader process ${fmt(s.readerCpuMs, 0)} ms (${fmt((s.cpuMs * 1000) / Math.max(1, s.events), 2)} us per event received, ${s.events} in all); reader restarts ${s.readerRestarts}`],
      [`[${label}] fleetlet event loop`, `delay p99 ${fmt(s.eventLoopP99Ms)} ms, max ${fmt(s.eventLoopMaxMs)} ms`],
      ...(r.crashed ? [[`[${label}] fleetlet probe DIED`, r.crashed] as [string, string]] : []),
    ];
  };
  const refRows = (label: string, r: ReferenceRound): [string, string][] => [
    [`[${label}] conntrack -E load`, loadRow(r.load)],
    [`[${label}] conntrack -E NEW seen / made`, `${r.newLines} / ${r.load.made} (lost ${Math.max(0, r.load.made - r.newLines)}); ${r.lines} lines; CPU ${fmt(r.cpuMs, 0)} ms`],
    [`[${label}] conntrack -E stderr`, r.stderr === "" ? "(empty)" : r.stderr],
  ];
  const resynced = (r: FleetletRound) => !r.crashed && r.stats.readerRestarts === 0 && r.stats.resyncs === r.stats.overflows && r.stats.resyncFailures === 0;
  const okRound = (r: FleetletRound) => !r.crashed && r.stats.newSynSent >= r.load.made;
  // Conservative: the low end of the offered range (6 events per connection).
  const atTarget = offered(flPaced.load, EVENTS_PER_CONNECTION[0]) >= TARGET_EVENTS_PER_S;
  const crashes = [flPaced, flMax].filter((r) => r.crashed).length;
  const flFigures = (label: string, r: FleetletRound): Figure[] => [
    figure(`${label}_offered_events_per_s`, offered(r.load, EVENTS_PER_CONNECTION[0]), "events/s", "higher"),
    figure(`${label}_new_lost`, Math.max(0, r.load.made - r.stats.newSynSent), "connections", "lower"),
    figure(`${label}_cpu_us_per_event`, (r.stats.cpuMs * 1000) / Math.max(1, r.stats.events), "us", "lower"),
    figure(`${label}_event_loop_p99_ms`, r.stats.eventLoopP99Ms, "ms", "lower"),
  ];
  printFigures(title, [
    ["namespace", `${ns}: conntrack via an iptables INPUT rule, TIME_WAIT 1 s; server, ${GENERATORS} Node generators (${CONCURRENCY} in flight) and the reader in it, 127.0.0.1`],
    ["reader", `fleetlet: the agent's conntrack source (reader process, SO_RCVBUFFORCE ${fmt(flPaced.stats.receiveBufferBytes / 1048576, 1)} MiB as granted, our decoder), a resync dump per overflow; reference: conntrack -E -p tcp --dport PORT > file`],
    ["events per connection", "6 or 7 NEW+UPDATE (CLOSE_WAIT is skipped when the client's ACK and FIN go together); DESTROYs come later, from the GC"],
    ...flRows("paced", flPaced),
    ...refRows("paced", refPaced),
    ...flRows("max", flMax),
    ...refRows("max", refMax),
    ...refRows("max, -b 32 MiB", refMaxBig),
    ["target P4 rate", `>= ${TARGET_EVENTS_PER_S} events/s offered in the paced round (at 6 per connection): ${verdict(atTarget)} (${fmt(offered(flPaced.load, 6), 0)}; max round ${fmt(offered(flMax.load, 6), 0)})`],
    ["target P4 lost", `0 NEW lost: paced ${verdict(okRound(flPaced))}, max ${verdict(okRound(flMax))} (conntrack -E lost ${refPaced.load.made - refPaced.newLines} / ${refMax.load.made - refMax.newLines}; with the agent's buffer ${refMaxBig.load.made - refMaxBig.newLines} at max)`],
    ["target P4 resync", `a resync per overflow (and the reader alive): paced ${verdict(resynced(flPaced))}, max ${verdict(resynced(flMax))}`],
    ["target P4 event loop", `p99 <= ${TARGET_LOOP_P99_MS} ms: paced ${verdict(flPaced.stats.eventLoopP99Ms <= TARGET_LOOP_P99_MS)}, max ${verdict(flMax.stats.eventLoopP99Ms <= TARGET_LOOP_P99_MS)}`],
  ], [
    ...flFigures("paced", flPaced),
    ...flFigures("max", flMax),
    figure("conntrack_e_paced_new_lost", Math.max(0, refPaced.load.made - refPaced.newLines), "connections", "lower"),
  ]);
  // A reader that kills its process is a malfunction, not a missed target (figures first).
  if (crashes > 0) throw new Malfunction(`the probe holding the agent's conntrack source died in ${crashes} round(s): ${[flPaced, flMax].find((r) => r.crashed)!.crashed}`);
});

function countLines(path: string): { new: number; total: number } {
  if (!existsSync(path)) return { new: 0, total: 0 };
  let created = 0;
  let total = 0;
  for (const line of readFileSync(path, "utf8").split("\n")) {
    if (line.trim() === "") continue;
    total++;
    if (/^\s*\[NEW\]/.test(line)) created++;
  }
  return { new: created, total };
}

const oneLine = (s: string) => {
  const l = s.replace(/\s+/g, " ").trim();
  return l.length > 200 ? `${l.slice(0, 200)}...` : l;
};

/** JSON lines of a child's stdout, taken in order by `next`; {"error"} lines are collected. */
function lineQueue(child: Child) {
  const queue: Record<string, unknown>[] = [];
  const errors: string[] = [];
  let tick: ProbeStats | undefined;
  let wake: (() => void) | undefined;
  let buffered = "";
  child.child.stdout!.on("data", (chunk: Buffer) => {
    buffered += chunk.toString();
    const lines = buffered.split("\n");
    buffered = lines.pop() ?? "";
    for (const line of lines) {
      let v: Record<string, unknown>;
      try {
        v = JSON.parse(line) as Record<string, unknown>;
      } catch {
        continue;
      }
      if (v.tick !== undefined) {
        tick = v.tick as ProbeStats;
        continue;
      }
      if (v.error !== undefined) errors.push(String(v.error));
      queue.push(v);
    }
    wake?.();
  });
  return {
    errors,
    lastTick: () => tick,
    async next(accept: (v: Record<string, unknown>) => boolean, timeoutMs: number): Promise<Record<string, unknown>> {
      const end = performance.now() + timeoutMs;
      for (;;) {
        while (queue.length > 0) {
          const v = queue.shift()!;
          if (accept(v)) return v;
        }
        if (child.child.exitCode !== null || child.child.signalCode !== null) throw new Error(`pid ${child.pid} exited before answering`);
        const left = end - performance.now();
        if (left <= 0) throw new Error(`pid ${child.pid}: no answer in ${timeoutMs} ms`);
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, Math.min(left, 200));
          wake = () => {
            clearTimeout(t);
            resolve();
          };
        });
        wake = undefined;
      }
    },
  };
}
