/**
 * P7 (goals.md), exactly once under crashes (metering.md check 5): 10 agents (separate
 * processes, each its own state dir and ledger) take lifecycle RPCs — 8 writers per agent
 * flipping 16 instances between RUNNING and STOPPED, one ledger entry per acknowledged flip —
 * while an aggregator merges every ledger. Meanwhile, every 2-4 s, a random fault: SIGKILL of an
 * agent (restarted on the same port and state dir), SIGKILL of the aggregator (restarted), or
 * SIGSTOP of an agent for 2 s (a partition). Until the agents' ledgers hold TARGET entries in all
 * (1,000,000; smoke 20,000). Then the writers stop, the aggregator catches up, and the checker
 * (test/helpers/metering-checker.ts, also used by the test suite) compares every agent's ledger
 * on disk with its slice of the merged feed: no entry lost, none duplicated, fleet_seq gapless.
 * Any problem is a malfunction (exit 1).
 */
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { InstanceState, InventoryService } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { FleetService } from "../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { createGrpcJsTransport } from "../../lib/rpc/grpc-transport.js";
import { agentLedgerLines, checkFleetFeed, type FleetRow } from "../../test/helpers/metering-checker.js";
import { logProblems, runBench, signal, sleep, startFleetletDaemon, tempDir, type Daemon } from "../common/processes.js";
import { check, fmt, printFigures, progress } from "../common/report.js";

const AGENTS = 10;
const WRITERS_PER_AGENT = 8;
const INSTANCES_PER_AGENT = 16;
/** Longest run (1,000,000 entries take ~12 min on a 2-core VM): what was reached by then is reported (and checked) as is. */
const MAX_RUN_S = 1500;

runBench(async ({ smoke }) => {
  const target = smoke ? 20_000 : 1_000_000;
  const dir = tempDir("metering-chaos");
  const agentDirs = Array.from({ length: AGENTS }, (_, i) => join(dir, `agent-${i}`));
  const agents: (Daemon | undefined)[] = new Array(AGENTS).fill(undefined);
  // A log file per incarnation: a daemon's address is read from its file's "serving" line.
  let incarnations = 0;
  const ports: number[] = [];
  const startAgent = async (i: number) => {
    const a = await startFleetletDaemon("agent", ["--listen", `127.0.0.1:${ports[i] ?? 0}`, "--state-dir", agentDirs[i]!, "--metrics-listen", "off", "--runtime", "none", "--standby", "off"], join(dir, `agent-${i}-${++incarnations}.log`));
    ports[i] = Number(a.address.split(":").at(-1));
    return a;
  };
  progress(`starting ${AGENTS} agents and an aggregator`);
  for (let i = 0; i < AGENTS; i++) agents[i] = await startAgent(i);
  const hostsFlag = ports.map((p, i) => `h${i}=127.0.0.1:${p}`).join(",");
  const startAggregator = () => startFleetletDaemon("aggregator", ["--listen", "127.0.0.1:0", "--state-dir", join(dir, "aggregator"), "--metrics-listen", "off", "--hosts", hostsFlag], join(dir, `aggregator-${++incarnations}.log`));
  let aggregator = await startAggregator();

  let stop = false;
  let acked = 0;
  const writer = async (i: number, w: number) => {
    let k = 0;
    while (!stop) {
      const a = agents[i];
      if (!a) {
        await sleep(50);
        continue;
      }
      const t = createGrpcJsTransport(a.address);
      const inv = createClient(InventoryService, t);
      try {
        while (!stop) {
          // Writer w owns instances w and w + 8: no two writers race on one instance.
          const id = `vm${(w + WRITERS_PER_AGENT * (k % 2)) % INSTANCES_PER_AGENT}`;
          const state = Math.floor(k / 2) % 2 === 0 ? InstanceState.RUNNING : InstanceState.STOPPED;
          await inv.registerInstance({ instance: { id, state, allocatedVcpus: 2, allocatedMemoryBytes: 1n << 30n } }, { timeoutMs: 5000 });
          acked++;
          k++;
        }
      } catch {
        await sleep(100); // the agent was killed or stopped: reconnect
      } finally {
        t.close();
      }
    }
  };
  const writers = agents.flatMap((_, i) => Array.from({ length: WRITERS_PER_AGENT }, (_, w) => writer(i, w)));

  const faults = { agentKills: 0, aggregatorKills: 0, partitions: 0 };
  const started = performance.now();
  let nextReport = 0;
  const ledgerTotal = () => agentDirs.reduce((n, d) => n + safeCount(d), 0);
  let total = 0;
  // Progress by acknowledged flips (each writes one entry; reading the ledgers is for the end).
  while (acked < target && (performance.now() - started) / 1000 < MAX_RUN_S) {
    total = acked;
    await sleep(2000 + Math.random() * 2000);
    const roll = Math.random();
    if (roll < 0.4) {
      const i = Math.floor(Math.random() * AGENTS);
      const a = agents[i]!;
      agents[i] = undefined;
      signal(a.pid, "SIGKILL");
      await a.exited;
      agents[i] = await startAgent(i);
      faults.agentKills++;
    } else if (roll < 0.7) {
      signal(aggregator.pid, "SIGKILL");
      await aggregator.exited;
      aggregator = await startAggregator();
      faults.aggregatorKills++;
    } else {
      const a = agents[Math.floor(Math.random() * AGENTS)]!;
      signal(a.pid, "SIGSTOP");
      await sleep(2000);
      signal(a.pid, "SIGCONT");
      faults.partitions++;
    }
    if (performance.now() - started > nextReport) {
      progress(`${acked} flips acknowledged; faults ${JSON.stringify(faults)}`);
      nextReport += 15_000;
    }
  }
  const runS = (performance.now() - started) / 1000;
  stop = true;
  await Promise.all(writers);
  total = ledgerTotal();
  progress(`writers stopped at ${total} entries after ${fmt(runS, 0)} s; waiting for the aggregator to catch up`);

  // Caught up = the feed holds as many entries as the ledgers.
  const aggregatorExit = await Promise.race([aggregator.exited, sleep(10).then(() => undefined)]);
  check(aggregatorExit === undefined, `the aggregator exited (${aggregatorExit}) on its own: ${logProblems(aggregator.logPath)}`);
  const t = createGrpcJsTransport(aggregator.address);
  const fleet = createClient(FleetService, t);
  const catchUpStart = performance.now();
  for (;;) {
    const res = await fleet.readMeteringEntries({ fromFleetSeq: BigInt(total), limit: 1 });
    if (res.lastFleetSeq >= BigInt(total)) break;
    check(performance.now() - catchUpStart < 120_000, `the aggregator merged ${res.lastFleetSeq} of ${total} entries after 120 s`);
    await sleep(200);
  }
  const catchUpS = (performance.now() - catchUpStart) / 1000;
  progress("reading the merged feed and every ledger, checking");
  const feed: FleetRow[] = [];
  for (let from = 1n; ; ) {
    const res = await fleet.readMeteringEntries({ fromFleetSeq: from, limit: 10_000 });
    if (res.entries.length === 0) break;
    for (const e of res.entries) feed.push({ fleetSeq: Number(e.fleetSeq), host: e.host, seq: Number(e.seq), line: e.line });
    from = res.nextFleetSeq;
  }
  t.close();
  const ledgers = new Map(agentDirs.map((d, i) => [`h${i}`, agentLedgerLines(d)]));
  const problems = checkFleetFeed(ledgers, feed);
  printFigures("metering chaos (P7 exactly once)", [
    ["agents, writers", `${AGENTS} agents x ${WRITERS_PER_AGENT} writers (lifecycle RPCs), 1 aggregator, all on this machine`],
    ["entries", `${total} in the ledgers (target ${target}), ${feed.length} in the merged feed; ${acked} flips acknowledged`],
    ["run", `${fmt(runS, 0)} s of writing (${fmt(total / runS, 0)} entries/s over all agents), aggregator caught up ${fmt(catchUpS, 1)} s after the writers stopped`],
    ["faults", `${faults.agentKills} agent SIGKILLs, ${faults.aggregatorKills} aggregator SIGKILLs, ${faults.partitions} agent SIGSTOPs of 2 s`],
    ["checker", problems.length === 0 ? "every ledger equals its slice of the feed: 0 lost, 0 duplicated, fleet_seq gapless 1.." + feed.length : problems.join("; ")],
    ["target P7 exactly once", `${total >= target ? "" : `target count NOT reached (${total}); `}${problems.length === 0 ? "0 lost, 0 duplicated" : "VIOLATED"}`],
  ]);
  check(problems.length === 0, `the checker found ${problems.length} problems: ${problems.slice(0, 3).join("; ")}`);
});

function safeCount(stateDir: string): number {
  try {
    return agentLedgerLines(stateDir).length;
  } catch {
    return 0;
  }
}
