import { afterAll, beforeAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { createInterface } from "node:readline";
import { createClient, type Client } from "@connectrpc/connect";
import { InstanceState, InventoryService } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { StandbyService, StandbyState } from "../../gen/fleetlet/agent/v1/standby_pb.js";
import { createGrpcJsTransport, type GrpcJsTransport } from "../../lib/rpc/grpc-transport.js";
import { FLEETLET_BIN } from "../helpers/daemon-process.js";
import { TEST_IMAGE, TestDockerd, dockerdSkipReason } from "../helpers/dockerd.js";
import { mustRunInCi, rootSkipReason } from "../helpers/root.js";
import { tempDir } from "../helpers/temp-dir.js";

// The docker standby driver end to end, on real traffic (runtime.md, standby.md): a "host"
// namespace with conntrack active runs dockerd (its bridge network lives there, not on this
// machine) and the agent; a container serves HTTP on the bridge. Idle past its timeout, the
// container is paused by the engine; a client connecting to it wakes it (unpause) and is served;
// WakeInstance wakes it too. The test reaches the agent over a veth pair it creates.

const skip = mustRunInCi(rootSkipReason() || dockerdSkipReason());
const sh = (...args: string[]) => execFileSync(args[0]!, args.slice(1), { stdio: ["ignore", "pipe", "pipe"], encoding: "utf8" });
const tag = randomBytes(2).toString("hex");
const hostNs = `flt-dsh-${tag}`;
const o = 1 + (parseInt(tag, 16) % 250);
const subnet = `10.216.${o}.0/24`;
const agentIp = `10.217.${o}.2`;
const children: ChildProcess[] = [];
const state = tempDir("docker-standby");
let dockerd: TestDockerd | undefined;
let transport: GrpcJsTransport | undefined;
let inventory: Client<typeof InventoryService>;
let standby: Client<typeof StandbyService>;

beforeAll(async () => {
  if (skip) return;
  sh("ip", "netns", "add", hostNs);
  sh("ip", "-n", hostNs, "link", "set", "lo", "up");
  sh("ip", "link", "add", `vdr-${tag}`, "type", "veth", "peer", "name", `vda-${tag}`, "netns", hostNs);
  sh("ip", "addr", "add", `10.217.${o}.1/30`, "dev", `vdr-${tag}`);
  sh("ip", "link", "set", `vdr-${tag}`, "up");
  sh("ip", "-n", hostNs, "addr", "add", `${agentIp}/30`, "dev", `vda-${tag}`);
  sh("ip", "-n", hostNs, "link", "set", `vda-${tag}`, "up");
  // Conntrack active in the host namespace (testing.md); locally originated flows included.
  sh("ip", "netns", "exec", hostNs, "iptables", "-A", "INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT");
  sh("ip", "netns", "exec", hostNs, "sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_timeout_time_wait=1");
  dockerd = await TestDockerd.start({ netns: hostNs });
  dockerd.docker("network", "create", "--driver", "bridge", "--subnet", subnet, `fltnet-${tag}`);

  const agent = spawn("ip", ["netns", "exec", hostNs, process.execPath, FLEETLET_BIN, "agent", "--listen", `${agentIp}:0`, "--insecure", "--state-dir", state.path, "--metrics-listen", "off", "--runtime", "docker", "--docker-host", dockerd.host], {
    stdio: ["ignore", "pipe", "inherit"],
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
  inventory = createClient(InventoryService, transport);
  standby = createClient(StandbyService, transport);
});

afterAll(async () => {
  transport?.close();
  for (const c of children) c.kill("SIGKILL");
  await dockerd?.stop();
  for (const args of [["link", "del", `vdr-${tag}`], ["netns", "del", hostNs]]) {
    try {
      sh("ip", ...args);
    } catch {
      // never created
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

/** One HTTP GET from the host namespace; the body, or "ERR ...". */
function get(ip: string): Promise<string> {
  const script = `require("http").get("http://${ip}:8080/hello.txt", (r) => { let b = ""; r.on("data", (d) => (b += d)); r.on("end", () => { console.log(b.trim()); process.exit(0); }); }).on("error", (e) => { console.log("ERR " + e.message); process.exit(1); }).setTimeout(10000);`;
  const c = spawn("ip", ["netns", "exec", hostNs, process.execPath, "-e", script], { stdio: ["ignore", "pipe", "inherit"] });
  children.push(c);
  return new Promise((res) => {
    let out = "";
    c.stdout!.on("data", (d: Buffer) => (out += d.toString()));
    c.on("exit", () => res(out.trim()));
  });
}

describe.skipIf(skip)("docker standby driver in a namespace", () => {
  it("pauses an idle container, wakes it on a connection (served), and on WakeInstance", async () => {
    const id = dockerd!.docker("run", "-d", "--network", `fltnet-${tag}`, "--name", "sleepy", TEST_IMAGE, "sh", "-c", "mkdir -p /www && echo hello-from-sleepy > /www/hello.txt && exec httpd -f -p 8080 -h /www");
    const instanceId = `docker-${id.slice(0, 12)}`;
    const ip = dockerd!.docker("inspect", "-f", `{{(index .NetworkSettings.Networks "fltnet-${tag}").IPAddress}}`, id);
    const inst = await until("the container in the inventory with its address", async () => (await inventory.listInstances({})).instances.find((i) => i.id === instanceId), (i) => i?.ip === ip && i.networkEnabled, 15_000);
    assert.match(inst!.tapDevice, /^veth/, "host-side veth found");
    assert.equal(await get(ip), "hello-from-sleepy");
    await standby.setStandbyPolicy({ instanceId, policy: { enabled: true, idleTimeout: "5s", driver: "docker", wakeOnTraffic: true } });

    const status = () => standby.getStandbyStatus({ instanceId }).then((r) => r.status!);
    await until("IN_STANDBY", status, (s) => s.status === StandbyState.IN_STANDBY, 25_000);
    assert.equal(dockerd!.docker("inspect", "-f", "{{.State.Status}}", id), "paused", "the engine paused it");
    assert.equal((await inventory.getInstance({ instanceId })).instance?.state, InstanceState.STANDBY);

    // A client connecting wakes it: the SYN's flow event unpauses, the request is served.
    assert.equal(await get(ip), "hello-from-sleepy");
    assert.equal(dockerd!.docker("inspect", "-f", "{{.State.Status}}", id), "running");
    await until("RUNNING after the wake", () => inventory.getInstance({ instanceId }).then((r) => r.instance?.state), (s) => s === InstanceState.RUNNING, 5000);

    // Idle again → paused again; WakeInstance wakes it without traffic.
    await until("IN_STANDBY again", status, (s) => s.status === StandbyState.IN_STANDBY, 25_000);
    assert.equal(dockerd!.docker("inspect", "-f", "{{.State.Status}}", id), "paused");
    await standby.wakeInstance({ instanceId });
    assert.equal(dockerd!.docker("inspect", "-f", "{{.State.Status}}", id), "running");
    assert.equal(await get(ip), "hello-from-sleepy");
  });
});
