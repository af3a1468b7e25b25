/**
 * P5: wake-on-traffic, from a client's first SYN to the client served, for the `signal` and
 * `cgroup` standby drivers, against the real agent. Set up like test/e2e/standby-netns.test.ts:
 * a "host" namespace with conntrack active runs `fleetlet agent` (entered with `nsenter --net`,
 * not `ip netns exec`, which would hide /sys/fs/cgroup from it), reached from the root
 * namespace over a veth pair this benchmark creates; the instances are TCP echo servers in an
 * instance namespace behind a second veth pair (one IP each). Each round waits until every
 * instance is IN_STANDBY (idle timeout 5 s, the minimum), then, per instance, a client in the
 * host namespace connects, sends a byte and times the echo (the wake sample), then does the
 * same twice against the now running server (the reference: same client, same server, no
 * standby), so the wake overhead is the difference.
 *
 * The cgroup instance runs in a cgroup created for it: cgroup v2 (/sys/fs/cgroup/fleetlet-bench-
 * TAG) when /sys/fs/cgroup is a v2 mount, else the v1 freezer hierarchy the driver also supports
 * (/sys/fs/cgroup/freezer/fleetlet-bench-TAG); neither: that driver is skipped and said so.
 */
import { execFileSync } from "node:child_process";
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { createClient, type Client } from "@connectrpc/connect";
import { InstanceKind, InstanceState, InventoryService } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { StandbyService, StandbyState } from "../../gen/fleetlet/agent/v1/standby_pb.js";
import { createGrpcJsTransport } from "../../lib/rpc/grpc-transport.js";
import { FLEETLET_BIN, logProblems, onCleanup, readJsonLine, runBench, sleep, tempDir, type Child } from "../common/processes.js";
import { check, figure, fmt, Malfunction, median, percentile, printFigures, progress, verdict, type Figure } from "../common/report.js";
import { createNetns, enableConntrack, hasNsenter, missingPrerequisite, sh, shQuiet, skipBench, startInNetNsOnly, startInNs, uniqueTag } from "../conntrack/netns.js";
import { errorMessage } from "../../lib/error-message.js";
import { parseProcStat } from "../../lib/proc-stat-parser.js";

const HERE = fileURLToPath(new URL(".", import.meta.url));
const ECHO = join(HERE, "echo-server.js");
const CLIENT = join(HERE, "client.js");
const PORT = 7000;
const TARGET_P99_MS = 200;
const IDLE_TIMEOUT = "5s";
const REFERENCE_PER_ROUND = 2;
/** Longest wait for every instance to be on standby again (5 s timeout + confirm + slack). */
const STANDBY_WAIT_MS = 20_000;
const CLIENT_TIMEOUT_MS = 10_000;

interface Cgroup {
  mode: "v2" | "v1 freezer";
  dir: string;
  /** The file and values that show / undo a freeze (for checks and cleanup; the agent freezes). */
  stateFile: string;
  thaw: string;
  isFrozen(): boolean;
}

interface Target {
  id: string;
  driver: "signal" | "cgroup";
  ip: string;
  server: Child;
  cgroup?: Cgroup;
  wakeMs: number[];
  wakeConnectMs: number[];
  referenceMs: number[];
  referenceConnectMs: number[];
  /** Standby as the kernel sees it when IN_STANDBY was reported (stopped / frozen). */
  reallyAsleep: number;
}

runBench(async ({ smoke }) => {
  const title = `wake (P5)${smoke ? " --smoke" : ""}`;
  const missing = missingPrerequisite([["ip", "-V"], ["iptables", "--version"]]);
  if (missing) return skipBench(title, missing);
  const rounds = smoke ? 3 : 20;
  const tag = uniqueTag();
  const hostNs = `flt-bwh-${tag}`;
  const instNs = `flt-bwi-${tag}`;
  const o = freeOctet(tag);
  const agentIp = `10.217.${o}.2`;
  const ips = { signal: `10.216.${o}.2`, cgroup: `10.216.${o}.3` };
  const dir = tempDir("wake");

  // --- namespaces and links (as test/e2e/standby-netns.test.ts) --------------------------
  progress(`namespaces ${hostNs} (agent, conntrack) and ${instNs} (instances)`);
  createNetns(hostNs);
  createNetns(instNs);
  sh("ip", "-n", hostNs, "link", "add", `fbwi-${tag}`, "type", "veth", "peer", "name", `fbwg-${tag}`, "netns", instNs);
  sh("ip", "-n", hostNs, "addr", "add", `10.216.${o}.1/29`, "dev", `fbwi-${tag}`);
  sh("ip", "-n", instNs, "addr", "add", `${ips.signal}/29`, "dev", `fbwg-${tag}`);
  sh("ip", "-n", instNs, "addr", "add", `${ips.cgroup}/29`, "dev", `fbwg-${tag}`);
  sh("ip", "-n", hostNs, "link", "set", `fbwi-${tag}`, "up");
  sh("ip", "-n", instNs, "link", "set", `fbwg-${tag}`, "up");
  sh("ip", "link", "add", `fbwr-${tag}`, "type", "veth", "peer", "name", `fbwa-${tag}`, "netns", hostNs);
  onCleanup(() => shQuiet("ip", "link", "del", `fbwr-${tag}`));
  sh("ip", "addr", "add", `10.217.${o}.1/30`, "dev", `fbwr-${tag}`);
  sh("ip", "link", "set", `fbwr-${tag}`, "up");
  sh("ip", "-n", hostNs, "addr", "add", `${agentIp}/30`, "dev", `fbwa-${tag}`);
  sh("ip", "-n", hostNs, "link", "set", `fbwa-${tag}`, "up");
  enableConntrack(hostNs);

  // --- the instances ---------------------------------------------------------------------
  const startEcho = async (ip: string): Promise<Child> => {
    const server = startInNs(instNs, process.execPath, [ECHO, ip, String(PORT)], { stdio: ["ignore", "pipe", "inherit"] });
    await readJsonLine(server, (v: { listening?: boolean }) => v.listening === true, 15_000);
    return server;
  };
  const target = (driver: Target["driver"], server: Child, cgroup?: Cgroup): Target => ({
    id: `bench-${driver}`, driver, ip: ips[driver], server, cgroup, wakeMs: [], wakeConnectMs: [], referenceMs: [], referenceConnectMs: [], reallyAsleep: 0,
  });
  const targets: Target[] = [target("signal", await startEcho(ips.signal))];
  // The agent must see /sys/fs/cgroup: it enters the host namespace with nsenter (see netns.ts).
  const nsenter = hasNsenter();
  const cgroupSkip = nsenter ? cgroupUnusable() : "nsenter (util-linux) missing: an agent started by `ip netns exec` sees no /sys/fs/cgroup";
  let cgroupNote: string;
  if (cgroupSkip === undefined) {
    const cgroup = createCgroup(tag);
    const server = await startEcho(ips.cgroup);
    joinCgroup(cgroup, server.pid);
    targets.push(target("cgroup", server, cgroup));
    cgroupNote = `${cgroup.mode}: ${cgroup.dir}${cgroup.mode === "v2" ? "" : " (cgroup v2 is not mounted at /sys/fs/cgroup here)"}`;
  } else {
    cgroupNote = `SKIPPED: ${cgroupSkip}`;
    progress(`cgroup driver skipped: ${cgroupSkip}`);
  }

  // --- the agent -----------------------------------------------------------------------
  const logPath = join(dir, "agent.log");
  const agent = await startAgentInNs(hostNs, agentIp, join(dir, "state"), logPath, nsenter);
  const transport = createGrpcJsTransport(agent.address);
  onCleanup(() => transport.close());
  const inventory: Client<typeof InventoryService> = createClient(InventoryService, transport);
  const standby: Client<typeof StandbyService> = createClient(StandbyService, transport);
  for (const t of targets) {
    await inventory.registerInstance({
      instance: {
        id: t.id, pid: t.server.pid, ip: t.ip, networkEnabled: true, tapDevice: `fbwi-${tag}`, kind: InstanceKind.PROCESS,
        standbyPolicy: { enabled: true, idleTimeout: IDLE_TIMEOUT, wakeOnTraffic: true, driver: t.driver },
      },
    });
    const s = (await standby.getStandbyStatus({ instanceId: t.id })).status!;
    check(s.supported, `standby unsupported in the host namespace: ${s.unsupportedReason}`);
  }
  progress(`agent ${agent.address} (pid ${agent.pid}); ${targets.map((t) => `${t.id} pid ${t.server.pid} ${t.ip}`).join(", ")}`);

  const client = async (ip: string): Promise<{ ms: number; connectMs: number }> => {
    const c = startInNs(hostNs, process.execPath, [CLIENT, ip, String(PORT), String(CLIENT_TIMEOUT_MS)], { stdio: ["ignore", "pipe", "inherit"] });
    const r = await readJsonLine<{ ms?: number; connectMs?: number; error?: string }>(c, () => true, CLIENT_TIMEOUT_MS + 10_000);
    await c.exited;
    if (r.error !== undefined || r.ms === undefined) throw new Malfunction(`client to ${ip}: ${r.error ?? "no result"}`);
    return { ms: r.ms, connectMs: r.connectMs ?? NaN };
  };
  const status = async (id: string) => (await standby.getStandbyStatus({ instanceId: id })).status!;

  // --- the rounds ----------------------------------------------------------------------
  const started = performance.now();
  for (let round = 0; round < rounds; round++) {
    const waitStart = performance.now();
    for (const t of targets) {
      const deadline = performance.now() + STANDBY_WAIT_MS;
      for (;;) {
        const s = await status(t.id);
        if (s.status === StandbyState.IN_STANDBY) break;
        if (performance.now() > deadline) {
          throw new Malfunction(`${t.id}: not IN_STANDBY ${STANDBY_WAIT_MS} ms into round ${round + 1} (${StandbyState[s.status]}, ${s.lastError || "no error"})`);
        }
        await sleep(50);
      }
      check((await inventory.getInstance({ instanceId: t.id })).instance!.state === InstanceState.STANDBY, `${t.id}: IN_STANDBY but the instance is not STANDBY`);
      if (await asleep(t)) t.reallyAsleep++;
    }
    const waited = performance.now() - waitStart;
    // Alternate which instance is woken first, so neither always goes second.
    const order = round % 2 === 0 ? targets : [...targets].reverse();
    const line: string[] = [];
    for (const t of order) {
      const wake = await client(t.ip);
      t.wakeMs.push(wake.ms);
      t.wakeConnectMs.push(wake.connectMs);
      for (let i = 0; i < REFERENCE_PER_ROUND; i++) {
        const ref = await client(t.ip);
        t.referenceMs.push(ref.ms);
        t.referenceConnectMs.push(ref.connectMs);
      }
      line.push(`${t.driver} ${fmt(wake.ms, 1)} ms (ref ${t.referenceMs.slice(-REFERENCE_PER_ROUND).map((v) => fmt(v, 1)).join(", ")})`);
    }
    progress(`round ${round + 1}/${rounds}: standby after ${fmt(waited / 1000, 1)} s; woken: ${line.join("; ")}`);
  }
  const roundsS = (performance.now() - started) / 1000;

  // --- figures ---------------------------------------------------------------------------
  const dist = (v: number[]) => `p50 ${fmt(median(v), 1)}  p99 ${fmt(percentile(v, 99), 1)}  max ${fmt(Math.max(...v), 1)} ms`;
  const rows: [string, string][] = [
    ["setup", `agent in ${hostNs} (conntrack on), echo servers in ${instNs} behind a veth; idle timeout ${IDLE_TIMEOUT}; client timed inside (connect start -> echo)`],
    ["rounds", `${rounds} (${fmt(roundsS, 0)} s): wait for IN_STANDBY, then per instance 1 wake + ${REFERENCE_PER_ROUND} reference connections`],
    ["cgroup driver", cgroupNote],
  ];
  for (const t of targets) {
    const refP50 = median(t.referenceMs);
    const refP99 = percentile(t.referenceMs, 99);
    rows.push(
      [`[${t.driver}] wake -> served`, `${dist(t.wakeMs)}  (${t.wakeMs.length} wakes; the client's connect event at p50 ${fmt(median(t.wakeConnectMs), 1)} ms)`],
      [`[${t.driver}] reference (running)`, `${dist(t.referenceMs)}  (${t.referenceMs.length} connections; connect event at p50 ${fmt(median(t.referenceConnectMs), 1)} ms)`],
      [`[${t.driver}] wake overhead`, `p50 +${fmt(median(t.wakeMs) - refP50, 1)} ms, p99 +${fmt(percentile(t.wakeMs, 99) - refP99, 1)} ms`],
      [`[${t.driver}] really asleep`, `${t.reallyAsleep} of ${rounds} standbys (${t.driver === "signal" ? "process state T" : `${t.cgroup!.stateFile} frozen`} when IN_STANDBY was seen)`],
    );
  }
  const figures: Figure[] = targets.flatMap((t) => [
    figure(`${t.driver}_wake_ms_p50`, median(t.wakeMs), "ms", "lower"),
    figure(`${t.driver}_wake_ms_p99`, percentile(t.wakeMs, 99), "ms", "lower"),
    figure(`${t.driver}_reference_ms_p50`, median(t.referenceMs), "ms", "lower"),
  ]);
  rows.push(["agent log", logProblems(logPath)]);
  for (const t of targets) rows.push([`target P5 ${t.driver}`, `wake p99 <= ${TARGET_P99_MS} ms: ${verdict(percentile(t.wakeMs, 99) <= TARGET_P99_MS)}`]);
  if (cgroupSkip !== undefined) rows.push(["target P5 cgroup", `not measured: ${cgroupSkip}`]);
  printFigures(title, rows, figures);
  for (const t of targets) check(t.reallyAsleep === rounds, `${t.id}: IN_STANDBY reported but the process was not stopped/frozen in ${rounds - t.reallyAsleep} round(s)`);
});

/** The third octet of 10.217.X.0/30 (root namespace side): from the tag, skipping ones in use. */
function freeOctet(tag: string): number {
  const routes = execFileSync("ip", ["-4", "route", "show"], { encoding: "utf8" });
  const start = parseInt(tag, 16) % 250;
  for (let i = 0; i < 250; i++) {
    const o = 1 + ((start + i) % 250);
    if (!routes.includes(`10.217.${o}.`)) return o;
  }
  throw new Error("no free 10.217.X.0/30 subnet in the root namespace");
}

/** Why the cgroup driver cannot be measured here, or undefined. */
function cgroupUnusable(): string | undefined {
  if (existsSync("/sys/fs/cgroup/cgroup.controllers")) return undefined;
  if (existsSync("/sys/fs/cgroup/freezer/freezer.state") || existsSync("/sys/fs/cgroup/freezer/cgroup.procs")) return undefined;
  return "neither cgroup v2 at /sys/fs/cgroup (no cgroup.controllers) nor a v1 freezer at /sys/fs/cgroup/freezer";
}

/** A cgroup of our own, removed at cleanup (after its process was thawed and stopped). */
function createCgroup(tag: string): Cgroup {
  const v2 = existsSync("/sys/fs/cgroup/cgroup.controllers");
  const dir = v2 ? `/sys/fs/cgroup/fleetlet-bench-${tag}` : `/sys/fs/cgroup/freezer/fleetlet-bench-${tag}`;
  mkdirSync(dir);
  onCleanup(async () => {
    // The process is gone by now (stopped by pid, later cleanups run first); the kernel may take
    // a moment to see the cgroup empty.
    for (let i = 0; ; i++) {
      try {
        rmdirSync(dir);
        return;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === "ENOENT") return;
        if (i >= 40) throw new Error(`could not remove ${dir}: ${errorMessage(e)}`);
        await sleep(50);
      }
    }
  });
  return v2
    ? { mode: "v2", dir, stateFile: `${dir}/cgroup.freeze`, thaw: "0", isFrozen: () => /^frozen 1$/m.test(readFileSync(`${dir}/cgroup.events`, "utf8")) }
    : { mode: "v1 freezer", dir, stateFile: `${dir}/freezer.state`, thaw: "THAWED", isFrozen: () => readFileSync(`${dir}/freezer.state`, "utf8").trim() === "FROZEN" };
}

/** Moves the process into the cgroup; at cleanup the cgroup is thawed before it is stopped. */
function joinCgroup(cgroup: Cgroup, pid: number): void {
  writeFileSync(`${cgroup.dir}/cgroup.procs`, String(pid));
  onCleanup(() => {
    try {
      writeFileSync(cgroup.stateFile, cgroup.thaw);
    } catch {
      // already gone
    }
  });
}

/** Stopped (signal driver) or frozen (cgroup driver), polled briefly: a v1 freeze is asynchronous. */
async function asleep(t: Target): Promise<boolean> {
  for (let i = 0; i < 20; i++) {
    if (t.cgroup ? t.cgroup.isFrozen() : procState(t.server.pid) === "T") return true;
    await sleep(25);
  }
  return false;
}

function procState(pid: number): string {
  return parseProcStat(readFileSync(`/proc/${pid}/stat`, "latin1")).state;
}

/** `fleetlet agent` in the namespace's network, its log in a file; resolves with its address. */
async function startAgentInNs(ns: string, ip: string, stateDir: string, logPath: string, nsenter: boolean): Promise<Child & { address: string }> {
  const fd = openSync(logPath, "a");
  let agent: Child;
  try {
    const args = [FLEETLET_BIN, "agent", "--listen", `${ip}:0`, "--insecure", "--state-dir", stateDir, "--metrics-listen", "off"];
    agent = (nsenter ? startInNetNsOnly : startInNs)(ns, process.execPath, args, { stdio: ["ignore", fd, fd] });
  } finally {
    closeSync(fd);
  }
  const deadline = performance.now() + 30_000;
  for (;;) {
    const text = readFileSync(logPath, "utf8");
    for (const line of text.split("\n")) {
      if (!line.includes('"msg":"agent serving"')) continue;
      return { ...agent, address: (JSON.parse(line) as { address: string }).address };
    }
    if (agent.child.exitCode !== null || agent.child.signalCode !== null) throw new Error(`agent exited before serving:\n${text.slice(-2000)}`);
    if (performance.now() > deadline) throw new Error(`agent not serving after 30 s:\n${text.slice(-2000)}`);
    await sleep(25);
  }
}
