import { once } from "node:events";
import { afterAll, beforeAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { createInterface } from "node:readline";
import { mustRunInCi, rootSkipReason } from "../helpers/root.js";
import { builtHelper } from "../helpers/paths.js";

// The agent's conntrack reader against the real kernel, in a network namespace of its own
// (testing.md "Conntrack"): subscribe, dump, then live NEW/UPDATE/DESTROY events of real TCP
// connections.

const skip = mustRunInCi(rootSkipReason() || iptablesMissing());
const PROBE = builtHelper("conntrack-probe");
const ns = `flt-ct-${randomBytes(3).toString("hex")}`;
const children: ChildProcess[] = [];

function iptablesMissing(): string | false {
  try {
    execFileSync("iptables", ["--version"], { stdio: "ignore" });
    execFileSync("conntrack", ["--version"], { stdio: "ignore" });
    return false;
  } catch {
    return "needs iptables and conntrack (the project's test command installs them)";
  }
}

function inNs(args: string[]): ChildProcess {
  const c = spawn("ip", ["netns", "exec", ns, ...args], { stdio: ["pipe", "pipe", "inherit"] });
  children.push(c);
  return c;
}

beforeAll(() => {
  if (skip) return;
  execFileSync("ip", ["netns", "add", ns]);
  execFileSync("ip", ["-n", ns, "link", "set", "lo", "up"]);
  // The kernel tracks flows in a namespace only once a rule there uses conntrack.
  execFileSync("ip", ["netns", "exec", ns, "iptables", "-A", "INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"]);
  execFileSync("ip", ["netns", "exec", ns, "sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_timeout_time_wait=1"]);
});

afterAll(() => {
  for (const c of children) c.kill("SIGKILL");
  if (!skip) {
    try {
      execFileSync("ip", ["netns", "del", ns]);
    } catch {
      // never created
    }
  }
});

describe.skipIf(skip)("conntrack source (reader process + decoder) in a namespace", () => {
  it("dumps open flows and streams NEW → ESTABLISHED → TIME_WAIT → DESTROY of a new one", async () => {
    const server = inNs([process.execPath, "-e", `require("net").createServer((s) => s.on("data", () => {}).on("error", () => {})).listen(9000, "127.0.0.1", () => console.log("up"))`]);
    await new Promise((r) => server.stdout!.once("data", r));
    const longLived = inNs([process.execPath, "-e", `const c = require("net").connect(9000, "127.0.0.1", () => console.log("up")); process.stdin.resume();`]);
    await new Promise((r) => longLived.stdout!.once("data", r));

    const probe = inNs([process.execPath, PROBE]);
    const lines: Record<string, unknown>[] = [];
    const waitFor = async (pred: (l: Record<string, unknown>) => boolean, ms = 5000) => {
      const end = Date.now() + ms;
      for (;;) {
        const hit = lines.find(pred);
        if (hit) return hit;
        if (Date.now() > end) assert.fail(`not seen in ${ms} ms; got ${JSON.stringify(lines).slice(0, 2000)}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    };
    createInterface({ input: probe.stdout! }).on("line", (l) => lines.push(JSON.parse(l) as Record<string, unknown>));
    await waitFor((l) => l.ready === true);
    probe.stdin!.write("dump\n");
    const dump = (await waitFor((l) => "dump" in l || "dumpError" in l)) as { dump?: { dstPort: number; tcpState: number }[]; dumpError?: string };
    assert.equal(dump.dumpError, undefined);
    assert.ok(dump.dump!.some((f) => f.dstPort === 9000 && f.tcpState === 3), "the open connection is in the dump, ESTABLISHED");

    // A short connection, after the subscription: its whole life arrives as events.
    inNs([process.execPath, "-e", `const c = require("net").connect(9000, "127.0.0.1", () => setTimeout(() => c.end(), 200)); c.on("close", () => process.exit(0));`]);
    const first = (await waitFor((l) => (l.event as { kind?: string; tcpState?: number } | undefined)?.tcpState === 1)) as { event: { srcPort: number } };
    const port = first.event.srcPort;
    const mine = (l: Record<string, unknown>) => (l.event as { srcPort?: number } | undefined)?.srcPort === port;
    await waitFor((l) => mine(l) && (l.event as { tcpState: number }).tcpState === 3);
    await waitFor((l) => mine(l) && (l.event as { tcpState: number }).tcpState === 7);
    // Expired entries are reaped lazily by the kernel's GC worker (seconds to a minute): delete
    // this one now, as an operator or the kernel would, and expect its DESTROY event.
    execFileSync("ip", ["netns", "exec", ns, "conntrack", "-D", "-p", "tcp", "--orig-port-src", String(port)], { stdio: "ignore" });
    const destroyed = (await waitFor((l) => mine(l) && (l.event as { kind: string }).kind === "destroy")) as { event: { id: number } };
    assert.equal(destroyed.event.id, (first.event as unknown as { id: number }).id, "same conntrack id as its NEW");
    assert.equal(lines.filter((l) => "overflow" in l).length, 0);
    probe.stdin!.end();
    longLived.kill("SIGKILL");
    server.kill("SIGKILL");
  });

  it("an overflow of the event socket is reported (ENOBUFS), and the stream and dumps go on", async () => {
    const server = inNs([process.execPath, "-e", `require("net").createServer((s) => s.end()).listen(9001, "127.0.0.1", () => console.log("up"))`]);
    await new Promise((r) => server.stdout!.once("data", r));
    // A small buffer, and a reader that cannot read for a while: the kernel must drop events.
    const probe = inNs([process.execPath, PROBE, "--rcvbuf", "16384"]);
    const lines: Record<string, unknown>[] = [];
    createInterface({ input: probe.stdout! }).on("line", (l) => lines.push(JSON.parse(l) as Record<string, unknown>));
    const waitFor = async (pred: (l: Record<string, unknown>) => boolean, ms = 5000) => {
      const end = Date.now() + ms;
      for (;;) {
        const hit = lines.find(pred);
        if (hit) return hit;
        if (Date.now() > end) assert.fail(`not seen in ${ms} ms; got ${JSON.stringify(lines.slice(-20)).slice(0, 2000)}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    };
    const ready = (await waitFor((l) => l.ready === true)) as { readerPid: number };
    process.kill(ready.readerPid, "SIGSTOP");
    try {
      const burst = inNs([process.execPath, "-e", `let left = 300; const one = () => require("net").connect(9001, "127.0.0.1").on("close", () => (--left === 0 ? process.exit(0) : one())).on("error", () => process.exit(1)); one();`]);
      const [code] = (await once(burst, "exit")) as [number];
      assert.equal(code, 0, "300 connections made");
    } finally {
      process.kill(ready.readerPid, "SIGCONT");
    }
    const overflow = (await waitFor((l) => "overflow" in l)) as { overflow: number };
    assert.ok(overflow.overflow >= 1);
    // Still alive and streaming: a new connection's SYN_SENT arrives, and a dump answers.
    const before = lines.length;
    inNs([process.execPath, "-e", `require("net").connect(9001, "127.0.0.1").on("close", () => process.exit(0))`]);
    await waitFor((l) => lines.indexOf(l) >= before && (l.event as { dstPort?: number; tcpState?: number } | undefined)?.dstPort === 9001 && (l.event as { tcpState: number }).tcpState === 1);
    probe.stdin!.write("dump\n");
    const dump = (await waitFor((l) => "dump" in l || "dumpError" in l)) as { dumpError?: string };
    assert.equal(dump.dumpError, undefined);
    probe.stdin!.end();
    server.kill("SIGKILL");
  });
});
