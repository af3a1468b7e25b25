import { afterAll, beforeAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import net from "node:net";
import { startDaemon, type DaemonProcess } from "../helpers/daemon-process.js";
import { agentClients } from "../helpers/clients.js";
import { tempDir } from "../helpers/temp-dir.js";
import { mustRunInCi, rootSkipReason } from "../helpers/root.js";

// metrics.md check 8 (network): a server in its own network namespace behind a veth pair
// (testing.md recipe) carries real traffic; the agent's counters for the host-side end must
// equal `ip -s link`'s, swapped to the instance view.

const skip = mustRunInCi(rootSkipReason());
const tag = randomBytes(3).toString("hex");
const ns = `flt-${tag}`;
const hostIf = `vh-${tag}`;
const guestIf = `vg-${tag}`;
// A /30 picked per run inside a range only our namespaces use.
const octet = 1 + (parseInt(tag.slice(0, 2), 16) % 250);
const hostIp = `10.213.${octet}.1`;
const guestIp = `10.213.${octet}.2`;

let agent: DaemonProcess | undefined;
let server: ChildProcess | undefined;
const state = tempDir("veth");

function ip(...args: string[]): string {
  return execFileSync("ip", args, { encoding: "utf8" });
}

function linkBytes(dev: string): { rx: bigint; tx: bigint } {
  const [link] = JSON.parse(ip("-s", "-j", "link", "show", "dev", dev)) as { stats64: { rx: { bytes: number }; tx: { bytes: number } } }[];
  return { rx: BigInt(link!.stats64.rx.bytes), tx: BigInt(link!.stats64.tx.bytes) };
}

beforeAll(async () => {
  if (skip) return;
  ip("netns", "add", ns);
  ip("link", "add", hostIf, "type", "veth", "peer", "name", guestIf);
  ip("link", "set", guestIf, "netns", ns);
  // No IPv6 on the pair: router/neighbour solicitations would move the counters on their own.
  execFileSync("sysctl", ["-qw", `net.ipv6.conf.${hostIf}.disable_ipv6=1`]);
  execFileSync("ip", ["netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
  ip("addr", "add", `${hostIp}/30`, "dev", hostIf);
  ip("link", "set", hostIf, "up");
  ip("-n", ns, "addr", "add", `${guestIp}/30`, "dev", guestIf);
  ip("-n", ns, "link", "set", guestIf, "up");
  ip("-n", ns, "link", "set", "lo", "up");
  // An echo server inside the namespace: the "instance".
  const script = `require("net").createServer((s) => s.pipe(s)).listen(7000, "${guestIp}", () => console.log("ready"));`;
  server = spawn("ip", ["netns", "exec", ns, process.execPath, "-e", script], { stdio: ["ignore", "pipe", "inherit"] });
  await new Promise<void>((res, rej) => {
    server!.stdout!.once("data", () => res());
    server!.once("exit", (c) => rej(new Error(`echo server exited ${c}`)));
  });
  agent = await startDaemon(["agent", "--listen", "127.0.0.1:0", "--state-dir", state.path, "--metrics-listen", "off"]);
});

afterAll(async () => {
  server?.kill("SIGKILL");
  await agent?.stop();
  if (!skip) {
    try {
      ip("link", "del", hostIf);
    } catch {
      // already gone with the namespace
    }
    try {
      ip("netns", "del", ns);
    } catch {
      // never created
    }
  }
  state.remove();
});

function echoTraffic(bytes: number): Promise<void> {
  return new Promise((res, rej) => {
    const sock = net.connect(7000, guestIp);
    let got = 0;
    sock.on("data", (d) => {
      got += d.length;
      if (got >= bytes) sock.end();
    });
    sock.on("close", () => res());
    sock.on("error", rej);
    sock.write(Buffer.alloc(bytes, 0x61));
  });
}

describe.skipIf(skip)("a veth pair carrying traffic", () => {
  it("net_rx/net_tx equal the host side's tx/rx from ip -s link", async () => {
    const clients = agentClients(agent!.address);
    try {
      await clients.inventory.registerInstance({
        instance: { id: `veth-${tag}`, pid: server!.pid, tapDevice: hostIf, networkEnabled: true, ip: guestIp },
      });
      const before = (await clients.metrics.getInstanceStats({ instanceId: `veth-${tag}` })).stats!;
      await echoTraffic(3 * 1024 * 1024);
      // Let the last FIN/ACKs pass so the counters are still while we compare.
      await new Promise((r) => setTimeout(r, 300));
      let stats = (await clients.metrics.getInstanceStats({ instanceId: `veth-${tag}` })).stats!;
      let link = linkBytes(hostIf);
      for (let i = 0; i < 5 && (stats.netRxBytes !== link.tx || stats.netTxBytes !== link.rx); i++) {
        await new Promise((r) => setTimeout(r, 200));
        stats = (await clients.metrics.getInstanceStats({ instanceId: `veth-${tag}` })).stats!;
        link = linkBytes(hostIf);
      }
      assert.deepEqual(stats.unavailable, []);
      assert.equal(stats.netRxBytes, link.tx, "instance received = host side transmitted");
      assert.equal(stats.netTxBytes, link.rx, "instance sent = host side received");
      // 3 MiB each way went through.
      assert.ok(stats.netRxBytes! - before.netRxBytes! >= 3n * 1024n * 1024n);
      assert.ok(stats.netTxBytes! - before.netTxBytes! >= 3n * 1024n * 1024n);
      assert.ok(stats.cpuUsec !== undefined, "the server process inside the namespace is measured too");
    } finally {
      clients.close();
    }
  });
});
