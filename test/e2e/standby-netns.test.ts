import { afterAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { InstanceState, InventoryService } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { type StandbyPolicySchema, StandbyReason, StandbyService, StandbyState } from "../../gen/fleetlet/agent/v1/standby_pb.js";
import { createGrpcJsTransport, type GrpcJsTransport } from "../../lib/rpc/grpc-transport.js";
import { FLEETLET_BIN } from "../helpers/daemon-process.js";
import { mustRunInCi, rootSkipReason } from "../helpers/root.js";
import { tempDir } from "../helpers/temp-dir.js";

// Auto-standby end to end (standby.md check 12, testing.md recipe): a "host" namespace with
// conntrack active runs the agent; the instance is an echo server (ports 7000 and 7001) in its
// own namespace behind a veth pair; real TCP clients connect from the host namespace. The test
// reaches the agent's port over a second veth pair from the root namespace (only interfaces and
// addresses this test creates, removed at the end).

const skip = mustRunInCi(rootSkipReason());
const sh = (...args: string[]) => execFileSync(args[0]!, args.slice(1), { stdio: ["ignore", "ignore", "pipe"] });
const envs: Env[] = [];

afterAll(() => {
  for (const e of envs) e.teardown();
});

interface Env {
  hostNs: string;
  /** The instance's host-side veth (its "TAP"): the interface whose counters the agent reads. */
  hostIf: string;
  instIp: string;
  hostIp: string;
  server: ChildProcess;
  inventory: Client<typeof InventoryService>;
  standby: Client<typeof StandbyService>;
  client(port: number, holdMs: number, message?: string): Promise<string>;
  /** A client streaming to the echo server for `ms`; resolves with its exit code. */
  stream(port: number, ms: number): Promise<number | null>;
  teardown(): void;
}

async function setUp(agentEnv: Record<string, string> = {}, { conntrackRule = true, notrackInstance = false } = {}): Promise<Env> {
  const tag = randomBytes(2).toString("hex");
  const hostNs = `flt-sbh-${tag}`;
  const instNs = `flt-sbi-${tag}`;
  const o = 1 + (parseInt(tag, 16) % 250);
  const instIp = `10.214.${o}.2`;
  const hostIp = `10.214.${o}.1`;
  const agentIp = `10.215.${o}.2`;
  const children: ChildProcess[] = [];
  const state = tempDir("standby-e2e");
  let transport: GrpcJsTransport | undefined;
  const env = { hostNs, instIp, hostIp, hostIf: `vi-${tag}` } as Env;
  env.teardown = () => {
    transport?.close();
    for (const c of children) c.kill("SIGKILL");
    env.server?.kill("SIGCONT");
    for (const args of [["link", "del", `vr-${tag}`], ["netns", "del", hostNs], ["netns", "del", instNs]]) {
      try {
        sh("ip", ...args);
      } catch {
        // already gone
      }
    }
    state.remove();
  };
  envs.push(env);
  sh("ip", "netns", "add", hostNs);
  sh("ip", "netns", "add", instNs);
  sh("ip", "-n", hostNs, "link", "set", "lo", "up");
  sh("ip", "-n", instNs, "link", "set", "lo", "up");
  // host ns <-> instance ns: the instance's "TAP"
  sh("ip", "-n", hostNs, "link", "add", `vi-${tag}`, "type", "veth", "peer", "name", `vg-${tag}`, "netns", instNs);
  sh("ip", "-n", hostNs, "addr", "add", `${hostIp}/30`, "dev", `vi-${tag}`);
  sh("ip", "-n", instNs, "addr", "add", `${instIp}/30`, "dev", `vg-${tag}`);
  sh("ip", "-n", hostNs, "link", "set", `vi-${tag}`, "up");
  sh("ip", "-n", instNs, "link", "set", `vg-${tag}`, "up");
  // root ns <-> host ns: how the test reaches the agent's gRPC port
  sh("ip", "link", "add", `vr-${tag}`, "type", "veth", "peer", "name", `va-${tag}`, "netns", hostNs);
  sh("ip", "addr", "add", `10.215.${o}.1/30`, "dev", `vr-${tag}`);
  sh("ip", "link", "set", `vr-${tag}`, "up");
  sh("ip", "-n", hostNs, "addr", "add", `${agentIp}/30`, "dev", `va-${tag}`);
  sh("ip", "-n", hostNs, "link", "set", `va-${tag}`, "up");
  // Conntrack active in the host namespace (testing.md) — or not: a host with no rule that uses
  // conntrack, where the kernel tracks nothing and every instance looks idle to it.
  if (conntrackRule) {
    sh("ip", "netns", "exec", hostNs, "iptables", "-A", "INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT");
    sh("ip", "netns", "exec", hostNs, "sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_timeout_time_wait=1");
  }
  // Conntrack active, but blind for this one instance: its packets are exempt from tracking (as
  // traffic that bypasses the tracked hooks would be). The agent's loopback probe still passes.
  if (notrackInstance) {
    sh("ip", "netns", "exec", hostNs, "iptables", "-t", "raw", "-A", "OUTPUT", "-d", instIp, "-j", "NOTRACK");
    sh("ip", "netns", "exec", hostNs, "iptables", "-t", "raw", "-A", "PREROUTING", "-s", instIp, "-j", "NOTRACK");
  }

  env.server = spawn("ip", ["netns", "exec", instNs, process.execPath, "-e",
    `for (const p of [7000, 7001]) require("net").createServer((s) => { s.on("error", () => {}); s.pipe(s); }).listen(p, "${instIp}"); setTimeout(() => console.log("up"), 100);`], { stdio: ["ignore", "pipe", "inherit"] });
  children.push(env.server);
  await new Promise((r) => env.server.stdout!.once("data", r));

  const agent = spawn("ip", ["netns", "exec", hostNs, process.execPath, FLEETLET_BIN, "agent", "--listen", `${agentIp}:0`, "--insecure", "--state-dir", state.path, "--metrics-listen", "off"], {
    stdio: ["ignore", "pipe", "inherit"],
    env: { ...process.env, ...agentEnv },
  });
  children.push(agent);
  const address = await new Promise<string>((res, rej) => {
    const t = setTimeout(() => rej(new Error("agent not serving")), 15_000);
    createInterface({ input: agent.stdout! }).on("line", (l) => {
      if (!l.includes('"agent serving"')) return;
      clearTimeout(t);
      res((JSON.parse(l) as { address: string }).address);
    });
  });
  transport = createGrpcJsTransport(address);
  env.inventory = createClient(InventoryService, transport);
  env.standby = createClient(StandbyService, transport);
  env.stream = (port, ms) => {
    // ~200 KB/s to the echo server for `ms`, then a clean close.
    const script = `const s = require("net").connect(${port}, "${instIp}"); s.on("data", () => {}); s.on("error", () => process.exit(1));
      const t = setInterval(() => s.write(Buffer.alloc(4096)), 20); setTimeout(() => { clearInterval(t); s.end(); }, ${ms}); s.on("close", () => process.exit(0));`;
    const c = spawn("ip", ["netns", "exec", hostNs, process.execPath, "-e", script], { stdio: ["ignore", "ignore", "inherit"] });
    children.push(c);
    return new Promise((res) => c.on("exit", (code) => res(code)));
  };
  env.client = (port, holdMs, message = "ping") => {
    const script = `const s = require("net").connect(${port}, "${instIp}"); let got = "";
      s.on("data", (d) => { got += d; if (got.length >= ${message.length}) setTimeout(() => s.end(), ${holdMs}); });
      s.on("close", () => { console.log(got); process.exit(0); }); s.on("error", (e) => { console.log("ERR " + e.message); process.exit(1); });
      s.write("${message}");`;
    const c = spawn("ip", ["netns", "exec", hostNs, process.execPath, "-e", script], { stdio: ["ignore", "pipe", "inherit"] });
    children.push(c);
    return new Promise((res) => {
      let out = "";
      c.stdout!.on("data", (d: Buffer) => (out += d.toString()));
      c.on("exit", () => res(out.trim()));
    });
  };
  return env;
}

function procState(pid: number): string {
  const line = readFileSync(`/proc/${pid}/stat`, "latin1");
  return line.slice(line.lastIndexOf(")") + 2, line.lastIndexOf(")") + 3);
}

async function until<T>(what: string, get: () => Promise<T>, ok: (v: T) => boolean, ms: number): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await get();
    if (ok(v)) return v;
    if (Date.now() > end) assert.fail(`${what}: not reached in ${ms} ms (last: ${JSON.stringify(v, (_k, x: unknown) => (typeof x === "bigint" ? String(x) : x))})`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function register(env: Env, policy: MessageInitShape<typeof StandbyPolicySchema>, tapDevice?: string): Promise<() => Promise<StandbyState>> {
  await env.inventory.registerInstance({
    instance: { id: "web", pid: env.server.pid, ip: env.instIp, networkEnabled: true, kind: 3, ...(tapDevice ? { tapDevice } : {}), standbyPolicy: { enabled: true, idleTimeout: "5s", wakeOnTraffic: true, driver: "signal", ...policy } },
  });
  const s = (await env.standby.getStandbyStatus({ instanceId: "web" })).status!;
  assert.equal(s.supported, true, s.unsupportedReason);
  return async () => (await env.standby.getStandbyStatus({ instanceId: "web" })).status!.status;
}

describe.skipIf(skip)("auto-standby in network namespaces", () => {
  it("an open connection keeps it awake past its timeout; idle → SIGSTOP'd once; a new connection wakes it and is served", async () => {
    const env = await setUp();
    const pid = env.server.pid!;
    const status = await register(env, {});
    // A connection held for 9 s, almost twice the 5 s timeout.
    const held = env.client(7000, 9000);
    await until("ACTIVE", status, (s) => s === StandbyState.ACTIVE, 5000);
    await new Promise((r) => setTimeout(r, 7000));
    assert.equal(await status(), StandbyState.ACTIVE, "still active while the connection is open");
    assert.notEqual(procState(pid), "T", "not stopped while a client is connected");
    assert.equal(await held, "ping");
    // Last connection gone: the countdown runs, then the signal driver stops the process.
    await until("IDLE_COUNTDOWN", status, (s) => s === StandbyState.IDLE_COUNTDOWN, 5000);
    await until("IN_STANDBY", status, (s) => s === StandbyState.IN_STANDBY, 12_000);
    assert.equal(procState(pid), "T", "the server process really is stopped");
    assert.equal((await env.inventory.getInstance({ instanceId: "web" })).instance!.state, InstanceState.STANDBY);
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal(await status(), StandbyState.IN_STANDBY, "stays on standby (once, no flapping)");
    // A new connection: its SYN wakes the instance, and it is served.
    const started = Date.now();
    assert.equal(await env.client(7000, 0, "hello"), "hello");
    assert.ok(Date.now() - started < 5000, `served ${Date.now() - started} ms after connecting`);
    assert.notEqual(procState(pid), "T");
    assert.equal((await env.inventory.getInstance({ instanceId: "web" })).instance!.state, InstanceState.RUNNING);
    env.teardown();
  });

  it("connections to an ignored port or from an ignored network do not keep it awake", async () => {
    const env = await setUp();
    const status = await register(env, { ignoreDestinationPorts: [7001] });
    const toIgnoredPort = env.client(7001, 12_000);
    await until("IN_STANDBY despite a connection to port 7001", status, (s) => s === StandbyState.IN_STANDBY, 12_000);
    assert.equal(procState(env.server.pid!), "T");
    env.server.kill("SIGCONT");
    await env.inventory.registerInstance({
      instance: { id: "web", pid: env.server.pid, ip: env.instIp, networkEnabled: true, kind: 3, state: InstanceState.RUNNING, standbyPolicy: { enabled: true, idleTimeout: "5s", driver: "signal", ignoreSourceCidrs: [`${env.hostIp}/32`] } },
    });
    const fromIgnoredNet = env.client(7000, 12_000);
    await until("IN_STANDBY despite a connection from an ignored source", status, (s) => s === StandbyState.IN_STANDBY, 12_000);
    env.server.kill("SIGCONT");
    await Promise.all([toIgnoredPort, fromIgnoredNet]);
    env.teardown();
  });

  it("on a host where the kernel tracks no flows: UNSUPPORTED with the reason, never a countdown; a busy instance never sleeps, nor once quiet", async () => {
    const env = await setUp({}, { conntrackRule: false });
    const pid = env.server.pid!;
    await env.inventory.registerInstance({
      instance: { id: "web", pid, ip: env.instIp, networkEnabled: true, kind: 3, tapDevice: env.hostIf, standbyPolicy: { enabled: true, idleTimeout: "5s", wakeOnTraffic: true, driver: "signal" } },
    });
    const s = (await env.standby.getStandbyStatus({ instanceId: "web" })).status!;
    assert.equal(StandbyState[s.status], "UNSUPPORTED");
    assert.equal(s.supported, false);
    assert.match(s.unsupportedReason, /conntrack is not tracking flows in the agent's network namespace: a probe connection over loopback was not in the table while open \(nf_conntrack loaded, nf_conntrack_events=\d\)/);
    // What standby would do cannot be changed where it cannot run.
    await assert.rejects(env.standby.holdStandby({ instanceId: "web", duration: { seconds: 60n } }), (e: unknown) => e instanceof ConnectError && e.code === Code.FailedPrecondition && /not tracking flows/.test(e.rawMessage));
    // ~200 KB/s on the veth for 8 s (more than the timeout), then quiet for twice the timeout.
    const streaming = env.stream(7000, 8000);
    for (let k = 0; k < 26; k++) {
      await new Promise((r) => setTimeout(r, 700));
      assert.notEqual(procState(pid), "T", `${k * 0.7} s: never stopped`);
      const now = (await env.standby.getStandbyStatus({ instanceId: "web" })).status!;
      assert.equal(StandbyState[now.status], "UNSUPPORTED", "never a countdown");
    }
    assert.equal(await streaming, 0, "the client was served throughout");
    assert.equal((await env.inventory.getInstance({ instanceId: "web" })).instance!.state, InstanceState.RUNNING);
    env.teardown();
  });

  it("conntrack active but blind for this instance (its packets not tracked): ERROR / CONNTRACK_BLIND, never on standby", async () => {
    const env = await setUp({}, { notrackInstance: true });
    const pid = env.server.pid!;
    const status = await register(env, {}, env.hostIf);
    const streaming = env.stream(7000, 14_000);
    const seen = await until("ERROR / CONNTRACK_BLIND", async () => (await env.standby.getStandbyStatus({ instanceId: "web" })).status!, (x) => StandbyReason[x.reason] === "CONNTRACK_BLIND", 16_000);
    assert.equal(StandbyState[seen.status], "ERROR");
    assert.match(seen.lastError, new RegExp(`conntrack shows no flow of ${env.instIp.replace(/\./g, "\\.")} while its interface carried \\d+ bytes/s`));
    assert.notEqual(procState(pid), "T");
    assert.equal(await streaming, 0);
    // Quiet for twice the timeout: no countdown ends in a standby nothing could wake it from.
    for (let k = 0; k < 14; k++) {
      await new Promise((r) => setTimeout(r, 700));
      assert.notEqual(procState(pid), "T", "never stopped");
    }
    assert.equal(await status(), StandbyState.ERROR);
    env.teardown();
  });

  it("every conntrack event dropped (fault injection) while traffic flows: 0 false standbys; once quiet, standby", async () => {
    const env = await setUp({ FLEETLET_FAULT_DROP_CONNTRACK_EVENTS: "1", FLEETLET_ENABLE_FAULT_INJECTION: "1" });
    const pid = env.server.pid!;
    const status = await register(env, {}, env.hostIf);
    // 16 s of traffic, more than three timeouts, with not one event reaching the controller.
    const streaming = env.stream(7000, 16_000);
    await new Promise((r) => setTimeout(r, 1000));
    // The connection's NEW event never arrived (it would have made it ACTIVE at once).
    assert.notEqual(StandbyReason[(await env.standby.getStandbyStatus({ instanceId: "web" })).status!.reason], "ACTIVE_INBOUND_CONNECTIONS");
    let stopped = 0;
    const states = new Set<string>();
    const done = streaming.then(() => true);
    while (!(await Promise.race([done, new Promise<false>((r) => setTimeout(() => r(false), 300))]))) {
      if (procState(pid) === "T") stopped++;
      states.add(StandbyState[await status()]);
    }
    assert.equal(stopped, 0, "0 false standbys");
    assert.ok(!states.has("IN_STANDBY") && !states.has("STANDBY_REQUESTED"), [...states].join(","));
    assert.equal(await streaming, 0, "the client was served throughout");
    // Events are gone but dumps are not: the connection is found, and once it is closed and the
    // interface quiet, the instance goes on standby.
    await until("IN_STANDBY once quiet", status, (x) => x === StandbyState.IN_STANDBY, 20_000);
    assert.equal(procState(pid), "T");
    env.teardown();
  });

  it("with every NEW event lost (fault injection), an open connection still never leads to standby", async () => {
    const env = await setUp({ FLEETLET_FAULT_DROP_CONNTRACK_NEW: "1", FLEETLET_ENABLE_FAULT_INJECTION: "1" });
    const status = await register(env, {});
    const held = env.client(7000, 11_000);
    // The countdown ends at 5 s; the confirming dump finds the flow the events never reported.
    await until("ACTIVE through the confirm dump", status, (s) => s === StandbyState.ACTIVE, 9000);
    await new Promise((r) => setTimeout(r, 3000));
    assert.equal(await status(), StandbyState.ACTIVE);
    assert.notEqual(procState(env.server.pid!), "T", "never stopped while the connection is open");
    assert.equal(await held, "ping");
    // Closed: the 2 s reconcile dump sees it gone, and the countdown leads to standby.
    await until("IN_STANDBY after the connection closed", status, (s) => s === StandbyState.IN_STANDBY, 15_000);
    env.teardown();
  });
});
