import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { createClient, type Client } from "@connectrpc/connect";
import { InstanceState, InventoryService } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { StandbyService, StandbyState } from "../../gen/fleetlet/agent/v1/standby_pb.js";
import { createGrpcJsTransport, type GrpcJsTransport } from "../../lib/rpc/grpc-transport.js";
import { FLEETLET_BIN } from "../helpers/daemon-process.js";
import { mustRunInCi, rootSkipReason } from "../helpers/root.js";
import { tempDir } from "../helpers/temp-dir.js";

// Auto-standby end to end (standby.md check 12, testing.md recipe): a "host" namespace with
// conntrack active runs the agent; the instance is a server in its own namespace behind a veth
// pair; real TCP clients connect from the host namespace. The test reaches the agent's port over
// a second veth pair from the root namespace (only interfaces and addresses this test creates).

const skip = mustRunInCi(rootSkipReason());
const tag = randomBytes(2).toString("hex");
const hostNs = `flt-sbh-${tag}`;
const instNs = `flt-sbi-${tag}`;
const o = 1 + (parseInt(tag, 16) % 250);
const instIp = `10.214.${o}.2`;
const agentIp = `10.215.${o}.2`;
const children: ChildProcess[] = [];
const state = tempDir("standby-e2e");
let transport: GrpcJsTransport | undefined;
let inventory: Client<typeof InventoryService>;
let standby: Client<typeof StandbyService>;
let server: ChildProcess;

const sh = (...args: string[]) => execFileSync(args[0]!, args.slice(1), { stdio: ["ignore", "ignore", "pipe"] });

function procState(pid: number): string {
  const line = readFileSync(`/proc/${pid}/stat`, "latin1");
  return line.slice(line.lastIndexOf(")") + 2, line.lastIndexOf(")") + 3);
}

/** A client in the host namespace: connects, optionally holds the connection, prints the echo. */
function client(holdMs: number, message = "ping"): Promise<string> {
  const script = `const s = require("net").connect(7000, "${instIp}"); let got = "";
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
}

before(async () => {
  if (skip) return;
  sh("ip", "netns", "add", hostNs);
  sh("ip", "netns", "add", instNs);
  sh("ip", "-n", hostNs, "link", "set", "lo", "up");
  sh("ip", "-n", instNs, "link", "set", "lo", "up");
  // host ns <-> instance ns: the instance's "TAP"
  sh("ip", "-n", hostNs, "link", "add", `vi-${tag}`, "type", "veth", "peer", "name", `vg-${tag}`, "netns", instNs);
  sh("ip", "-n", hostNs, "addr", "add", `10.214.${o}.1/30`, "dev", `vi-${tag}`);
  sh("ip", "-n", instNs, "addr", "add", `${instIp}/30`, "dev", `vg-${tag}`);
  sh("ip", "-n", hostNs, "link", "set", `vi-${tag}`, "up");
  sh("ip", "-n", instNs, "link", "set", `vg-${tag}`, "up");
  // root ns <-> host ns: how the test reaches the agent's gRPC port
  sh("ip", "link", "add", `vr-${tag}`, "type", "veth", "peer", "name", `va-${tag}`, "netns", hostNs);
  sh("ip", "addr", "add", `10.215.${o}.1/30`, "dev", `vr-${tag}`);
  sh("ip", "link", "set", `vr-${tag}`, "up");
  sh("ip", "-n", hostNs, "addr", "add", `${agentIp}/30`, "dev", `va-${tag}`);
  sh("ip", "-n", hostNs, "link", "set", `va-${tag}`, "up");
  // Conntrack active in the host namespace (testing.md).
  sh("ip", "netns", "exec", hostNs, "iptables", "-A", "INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT");
  sh("ip", "netns", "exec", hostNs, "sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_timeout_time_wait=1");

  server = spawn("ip", ["netns", "exec", instNs, process.execPath, "-e", `require("net").createServer((s) => { s.on("error", () => {}); s.pipe(s); }).listen(7000, "${instIp}", () => console.log("up"))`], { stdio: ["ignore", "pipe", "inherit"] });
  children.push(server);
  await new Promise((r) => server.stdout!.once("data", r));

  const agent = spawn("ip", ["netns", "exec", hostNs, process.execPath, FLEETLET_BIN, "agent", "--listen", `${agentIp}:0`, "--state-dir", state.path, "--metrics-listen", "off"], { stdio: ["ignore", "pipe", "inherit"] });
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
  inventory = createClient(InventoryService, transport);
  standby = createClient(StandbyService, transport);
});

after(() => {
  transport?.close();
  for (const c of children) c.kill("SIGKILL");
  server?.kill("SIGCONT");
  if (!skip) {
    for (const args of [["link", "del", `vr-${tag}`], ["netns", "del", hostNs], ["netns", "del", instNs]]) {
      try {
        sh("ip", ...args);
      } catch {
        // already gone
      }
    }
  }
  state.remove();
});

async function until<T>(what: string, get: () => Promise<T>, ok: (v: T) => boolean, ms: number): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await get();
    if (ok(v)) return v;
    if (Date.now() > end) assert.fail(`${what}: not reached in ${ms} ms (last: ${JSON.stringify(v, (_k, x: unknown) => (typeof x === "bigint" ? String(x) : x))})`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe("auto-standby in network namespaces", { skip }, () => {
  it("an open connection keeps it awake past its timeout; idle → SIGSTOP'd once; a new connection wakes it and is served", async () => {
    const pid = server.pid!;
    await inventory.registerInstance({
      instance: {
        id: "web", pid, ip: instIp, networkEnabled: true, tapDevice: `vi-${tag}`, kind: 3,
        standbyPolicy: { enabled: true, idleTimeout: "5s", wakeOnTraffic: true, driver: "signal" },
      },
    });
    const status = async () => (await standby.getStandbyStatus({ instanceId: "web" })).status!;
    assert.equal((await status()).supported, true, (await status()).unsupportedReason);

    // A connection held for 9 s, almost twice the 5 s timeout.
    const held = client(9000);
    await until("ACTIVE", status, (s) => s.status === StandbyState.ACTIVE, 5000);
    await new Promise((r) => setTimeout(r, 7000));
    assert.equal((await status()).status, StandbyState.ACTIVE, "still active while the connection is open");
    assert.notEqual(procState(pid), "T", "not stopped while a client is connected");
    assert.equal(await held, "ping");

    // Last connection gone: the countdown runs, then the signal driver stops the process.
    await until("IN_STANDBY", status, (s) => s.status === StandbyState.IN_STANDBY, 12_000);
    assert.equal(procState(pid), "T", "the server process really is stopped");
    assert.equal((await inventory.getInstance({ instanceId: "web" })).instance!.state, InstanceState.STANDBY);
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal((await status()).status, StandbyState.IN_STANDBY, "stays on standby (once, no flapping)");

    // A new connection: its SYN wakes the instance, and it is served.
    const started = Date.now();
    assert.equal(await client(0, "hello"), "hello");
    const wakeMs = Date.now() - started;
    assert.notEqual(procState(pid), "T");
    assert.equal((await inventory.getInstance({ instanceId: "web" })).instance!.state, InstanceState.RUNNING);
    assert.ok(wakeMs < 5000, `served ${wakeMs} ms after connecting`);
  });
});
