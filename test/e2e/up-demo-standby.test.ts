import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { InstanceState, InventoryService } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { StandbyService, StandbyState, type StandbyStatus } from "../../gen/fleetlet/agent/v1/standby_pb.js";
import { createGrpcJsTransport } from "../../lib/rpc/grpc-transport.js";
import { mustRunInCi, rootSkipReason } from "../helpers/root.js";
import { tempDir } from "../helpers/temp-dir.js";
import { freePort, startUp, type UpProcess } from "../helpers/up-process.js";

// Issue 12 point 1: `fleetlet up --demo-network` as a user starts it. Its agent runs in a host
// namespace the demo creates (conntrack on there, or — with --no-demo-conntrack-rule — not, as on
// a host whose kernel tracks nothing); `up` itself sends demo-web ~256 KiB every second from that
// namespace and demo-idle nothing. With a 5 s policy the busy demo must never sleep, the idle one
// must, and (with tracking) a new TCP connection must wake it. The test reaches the agent only
// through the loopback port `up` prints, and sends traffic only from inside the demo's namespaces.

const skip = mustRunInCi(rootSkipReason());
const POLICY = { enabled: true, idleTimeout: "5s", wakeOnTraffic: true, driver: "signal" };

function procState(pid: number): string {
  const line = readFileSync(`/proc/${pid}/stat`, "latin1");
  return line.slice(line.lastIndexOf(")") + 2, line.lastIndexOf(")") + 3);
}

/** The root namespace's firewall, to show the demo never changed it. */
function rootRuleset(): string {
  return execFileSync("nft", ["list", "ruleset"], { encoding: "utf8" });
}

function namespaces(): string {
  return execFileSync("ip", ["netns", "list"], { encoding: "utf8" });
}

/** Opens a TCP connection from inside `ns`, sends `message`, resolves with what came back. */
function connectFrom(ns: string, ip: string, message: string): Promise<string> {
  const script = `const s = require("net").connect(7000, "${ip}"); let got = "";
    setTimeout(() => { console.log("TIMEOUT " + got); process.exit(1); }, 10000);
    s.on("data", (d) => { got += d; if (got.length >= ${message.length}) s.end(); });
    s.on("close", () => { console.log(got); process.exit(0); }); s.on("error", (e) => { console.log("ERR " + e.message); process.exit(1); });
    s.write("${message}");`;
  const c = spawn("ip", ["netns", "exec", ns, process.execPath, "-e", script], { stdio: ["ignore", "pipe", "inherit"] });
  let out = "";
  c.stdout!.on("data", (d: Buffer) => (out += d.toString()));
  return new Promise((res) => c.on("exit", () => res(out.trim())));
}

interface Demo {
  up: UpProcess;
  /** Why SetStandbyPolicy was refused (standby unsupported on the agent), if it was. */
  refused?: string;
  hostNs: string;
  ips: Record<string, string>;
  pids: Record<string, number>;
  standby: Client<typeof StandbyService>;
  inventory: Client<typeof InventoryService>;
  status(id: string): Promise<StandbyStatus>;
  /** Stops `up` (SIGTERM, or Ctrl-C: SIGINT to its whole group); checks it stopped cleanly and removed what it made. */
  finish(how: "sigterm" | "ctrl-c"): Promise<void>;
}

async function startDemo(extra: string[], env: Record<string, string> = {}): Promise<Demo> {
  const d = tempDir("up-demo-standby");
  const [aggPort, agentPort] = [await freePort(), await freePort()];
  const up = startUp(["--state-dir", d.path, "--aggregator-listen", `127.0.0.1:${aggPort}`, "--agent-listen", `127.0.0.1:${agentPort}`,
    "--agent-metrics-listen", "off", "--aggregator-metrics-listen", "off", "--refresh", "1s", "--duration", "150s", "--demo-network", ...extra], env);
  const transport = createGrpcJsTransport(`127.0.0.1:${agentPort}`);
  try {
    const hostNs = (await up.waitFor(/the agent runs in network namespace (fl-demo-host-\d+)/, 60_000))[1]!;
    await up.waitFor(/demo-idle at /, 5000);
    const ips = Object.fromEntries([...up.stdout().matchAll(/ (demo-\w+) at ([\d.]+):7000 /g)].map((m) => [m[1]!, m[2]!]));
    const standby = createClient(StandbyService, transport);
    const inventory = createClient(InventoryService, transport);
    const pids: Record<string, number> = {};
    let refused: string | undefined;
    for (const id of ["demo-web", "demo-idle"]) {
      const pid = (await inventory.getInstance({ instanceId: id })).instance!.pid;
      assert.ok(pid !== undefined && pid > 0, `${id} registered with its pid`);
      pids[id] = pid;
      // An agent that finds conntrack blind refuses policy changes (the demos keep the 10 s
      // policy `up` registered them with): only that refusal is accepted here.
      await standby.setStandbyPolicy({ instanceId: id, policy: POLICY }).catch((e: unknown) => {
        if (!(e instanceof ConnectError && e.code === Code.FailedPrecondition)) throw e;
        refused = e.rawMessage;
      });
    }
    return {
      up, refused, hostNs, ips, pids, standby, inventory,
      status: async (id) => (await standby.getStandbyStatus({ instanceId: id })).status!,
      async finish(how) {
        transport.close();
        if (how === "ctrl-c") up.interrupt();
        const code = await up.stop();
        d.remove();
        assert.equal(code, 0, up.stderr());
        assert.match(up.stdout(), /fleetlet up: stopped/);
        const pid = hostNs.slice("fl-demo-host-".length);
        assert.doesNotMatch(namespaces(), new RegExp(`^fl-demo\\S*-${pid}\\b`, "m"), "every namespace of the run removed");
        for (const [id, p] of Object.entries(pids)) assert.equal(existsSync(`/proc/${p}`), false, `${id} (pid ${p}) stopped, even from standby`);
      },
    };
  } catch (e) {
    transport.close();
    await up.stop();
    d.remove();
    throw e;
  }
}

/**
 * Watches both demos for at least `ms`, then until demo-idle meets `until`: demo-web must never be
 * IN_STANDBY or stopped meanwhile. Returns demo-idle's last status and demo-web's highest active
 * inbound count.
 */
async function watch(demo: Demo, ms: number, until: (idle: StandbyStatus) => boolean): Promise<{ idle: StandbyStatus; webActiveMax: number }> {
  const end = Date.now() + ms;
  let webActiveMax = 0;
  for (;;) {
    const [web, idle] = [await demo.status("demo-web"), await demo.status("demo-idle")];
    assert.notEqual(web.status, StandbyState.IN_STANDBY, `busy demo-web put on standby: ${JSON.stringify(web, (_k, x: unknown) => (typeof x === "bigint" ? String(x) : x))}`);
    assert.notEqual(procState(demo.pids["demo-web"]!), "T", "busy demo-web never stopped");
    webActiveMax = Math.max(webActiveMax, web.activeInboundCount);
    if (Date.now() > end && until(idle)) return { idle, webActiveMax };
    if (Date.now() > end + 20_000) assert.fail(`demo-idle: condition not reached (last: ${StandbyState[idle.status]}, ${idle.unsupportedReason})`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

describe.skipIf(skip)("fleetlet up --demo-network: standby and wake for real", () => {
  it("with conntrack on in its namespace: the busy demo never sleeps, the idle one does, a new connection wakes it", async () => {
    const rootBefore = rootRuleset();
    // A name left by an `up` that was killed (its pid is gone): removed when the next one starts.
    let deadPid = 4_000_000;
    while (existsSync(`/proc/${deadPid}`)) deadPid--;
    const stale = `fl-demo-host-${deadPid}`;
    execFileSync("ip", ["netns", "add", stale]);
    let demo: Demo;
    try {
      demo = await startDemo([]);
    } finally {
      if (namespaces().includes(stale)) {
        execFileSync("ip", ["netns", "del", stale]);
        assert.fail(`${stale} of a dead pid not removed`);
      }
    }
    try {
      assert.match(demo.up.stdout(), /conntrack on there \(nftables table inet fleetlet-demo, in that namespace only\)/);
      const rule = execFileSync("ip", ["netns", "exec", demo.hostNs, "nft", "list", "ruleset"], { encoding: "utf8" });
      assert.match(rule, /ct state established,related accept/, "the rule is in the demo's host namespace");
      assert.equal(rootRuleset(), rootBefore, "the root namespace's firewall is untouched");

      // Three 5 s windows and more: demo-web (traffic every second) stays awake; demo-idle sleeps.
      const { idle } = await watch(demo, 16_000, (s) => s.status === StandbyState.IN_STANDBY);
      assert.equal(idle.status, StandbyState.IN_STANDBY);
      const idlePid = demo.pids["demo-idle"]!;
      assert.equal(procState(idlePid), "T", "demo-idle really is stopped");
      assert.equal((await demo.inventory.getInstance({ instanceId: "demo-idle" })).instance!.state, InstanceState.STANDBY);
      await demo.up.waitFor(/local\s+demo-idle\s+IN_STANDBY\s/, 5000);
      // And in the fleet table: still listed, with its state (it has no stats while stopped).
      await demo.up.waitFor(/local\s+demo-idle\s+idle\s+STANDBY\s/, 5000);

      // A new TCP connection from the demo's host namespace: its SYN wakes demo-idle, and it is served.
      const started = Date.now();
      assert.equal(await connectFrom(demo.hostNs, demo.ips["demo-idle"]!, "hello"), "hello");
      assert.ok(Date.now() - started < 5000, `served ${Date.now() - started} ms after connecting`);
      assert.notEqual(procState(idlePid), "T", "woken");
      assert.notEqual((await demo.status("demo-idle")).status, StandbyState.IN_STANDBY);
      assert.equal((await demo.inventory.getInstance({ instanceId: "demo-idle" })).instance!.state, InstanceState.RUNNING);
    } finally {
      await demo.finish("sigterm");
    }
    assert.equal(rootRuleset(), rootBefore, "the root namespace's firewall is untouched after the run");
  });

  it("without a conntrack rule (the kernel tracks nothing there): the busy demo still never sleeps", async () => {
    const demo = await startDemo(["--no-demo-conntrack-rule"]);
    try {
      assert.match(demo.up.stdout(), /WITHOUT a conntrack rule \(--no-demo-conntrack-rule\)/);
      const rules = execFileSync("ip", ["netns", "exec", demo.hostNs, "nft", "list", "ruleset"], { encoding: "utf8" });
      assert.doesNotMatch(rules, /\bct\b/, "no rule uses conntrack in the demo's host namespace");
      // Conntrack is blind here. Either the agent says so (UNSUPPORTED with the reason, policy
      // changes refused) or it counts down, and then only the interface counters can keep the
      // busy demo awake. Over more than two windows of the longest policy (10 s), it never sleeps.
      const { idle, webActiveMax } = await watch(demo, 22_000, (s) => s.status === StandbyState.IN_STANDBY || !s.supported);
      assert.equal(webActiveMax, 0, "conntrack saw none of demo-web's connections: the case under test");
      if (idle.supported) {
        assert.equal(demo.refused, undefined);
        assert.equal(procState(demo.pids["demo-idle"]!), "T", "the quiet demo does sleep");
      } else {
        assert.match(idle.unsupportedReason, /conntrack/, "says why");
        assert.match(demo.refused ?? "", /conntrack/, "SetStandbyPolicy refused, naming the reason");
        await demo.up.waitFor(/local\s+demo-web\s+UNSUPPORTED\s.*conntrack/, 5000);
      }
    } finally {
      await demo.finish("sigterm");
    }
  });

  it("with conntrack on but every conntrack event lost (fault injection): the busy demo never sleeps, the idle one does", async () => {
    const demo = await startDemo([], { FLEETLET_FAULT_DROP_CONNTRACK_EVENTS: "1", FLEETLET_ENABLE_FAULT_INJECTION: "1" });
    try {
      assert.equal(demo.refused, undefined, "tracking works: only the events are lost");
      const { idle } = await watch(demo, 16_000, (s) => s.status === StandbyState.IN_STANDBY);
      assert.equal(idle.status, StandbyState.IN_STANDBY);
      assert.equal(procState(demo.pids["demo-idle"]!), "T");
    } finally {
      // Ctrl-C while demo-idle is on standby (stopped): everything still stops and is removed.
      await demo.finish("ctrl-c");
    }
  });
});
