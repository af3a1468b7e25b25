import { describe, it } from "vitest";
import assert from "node:assert/strict";
import net from "node:net";
import { FLEETLET_BIN, runFleetlet } from "../helpers/daemon-process.js";
import { tempDir } from "../helpers/temp-dir.js";
import { mustRunInCi, rootSkipReason } from "../helpers/root.js";
import { execFileSync, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { createClient } from "@connectrpc/connect";
import { InventoryService } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { createGrpcJsTransport } from "../../lib/rpc/grpc-transport.js";

// `fleetlet up`, the main job: both daemons start, demo instances are registered (this machine
// runs no hypervisors), the live table shows the host and real measurements, and Ctrl-C
// (here: --duration) stops everything it started.

function freePort(): Promise<number> {
  return new Promise((res) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => res(port));
    });
  });
}

describe("fleetlet up", () => {
  it("a second `fleetlet up` on the same state dir and ports refuses, says why, and touches nothing of the running one", async () => {
    const d = tempDir("up-twice");
    const [aggPort, agentPort] = [await freePort(), await freePort()];
    const args = ["up", "--state-dir", d.path, "--aggregator-listen", `127.0.0.1:${aggPort}`, "--agent-listen", `127.0.0.1:${agentPort}`,
      "--agent-metrics-listen", "off", "--aggregator-metrics-listen", "off", "--refresh", "1s"];
    const first = spawn(process.execPath, [FLEETLET_BIN, ...args, "--duration", "14s"], { stdio: ["ignore", "pipe", "pipe"] });
    let firstErr = "";
    first.stderr!.on("data", (b: Buffer) => (firstErr += b.toString()));
    const firstExit = new Promise<number | null>((r) => first.once("exit", (code) => r(code)));
    try {
      const transport = createGrpcJsTransport(`127.0.0.1:${agentPort}`);
      const inventory = createClient(InventoryService, transport);
      const demos = async () => {
        const l = await inventory.listInstances({});
        return l.instances.filter((i) => i.labels["fleetlet.dev/demo"] === "true").map((i) => `${i.id}@${i.pid}:${i.resourceVersion}`).sort();
      };
      let before: string[] = [];
      for (let k = 0; k < 100 && before.length < 3; k++) {
        await new Promise((r) => setTimeout(r, 200));
        before = await demos().catch(() => []);
      }
      assert.equal(before.length, 3, "the first fleetlet up registered its demos");
      const second = await runFleetlet([...args, "--duration", "3s"], 60_000);
      assert.equal(second.code, 1, second.stdout + second.stderr);
      assert.match(second.stderr, /agent exited with code 2: fleetlet agent: state dir .* is in use by another agent \(pid \d+\)/);
      assert.doesNotMatch(second.stdout, /demo instances/, "it started nothing");
      assert.deepEqual(await demos(), before, "the running fleet's demos: same pids, not one change");
      transport.close();
      assert.equal(await firstExit, 0, firstErr);
    } finally {
      // Also when an assertion failed: the first up stops its daemons on SIGTERM; anything still
      // holding the state dir after that is killed by the pid in its claim file.
      if (first.exitCode === null) first.kill("SIGTERM");
      await firstExit;
      for (const daemon of ["agent", "aggregator"]) {
        try {
          // A daemon that stopped cleanly removed its claim; one still claiming is re-identified
          // by its command line (this test's state dir) before it is killed.
          const pid = Number.parseInt(readFileSync(`${d.path}/${daemon}/${daemon}.pid`, "utf8").split(" ")[0] ?? "", 10);
          if (pid > 0 && readFileSync(`/proc/${pid}/cmdline`, "latin1").includes(`${d.path}/${daemon}`)) process.kill(pid, "SIGKILL");
        } catch {
          // no claim, or the process is gone: nothing left behind
        }
      }
      d.remove();
    }
  });


  it("shows the fleet with the local host and its demo instances, then stops cleanly", async () => {
    const d = tempDir("up");
    const [aggPort, agentPort] = [await freePort(), await freePort()];
    const r = await runFleetlet(
      ["up", "--state-dir", d.path, "--aggregator-listen", `127.0.0.1:${aggPort}`, "--agent-listen", `127.0.0.1:${agentPort}`,
        "--agent-metrics-listen", "off", "--aggregator-metrics-listen", "off", "--duration", "4s", "--refresh", "1s"],
      60_000,
    );
    d.remove();
    assert.equal(r.code, 0, r.stderr + r.stdout);
    assert.match(r.stdout, /started 3 demo instances/);
    const frames = r.stdout.split("fleetlet fleet").slice(1);
    assert.ok(frames.length >= 2, `at least two refreshes, got ${frames.length}`);
    const last = frames[frames.length - 1]!;
    // The host row: connected, and its part of the merged inventory in sync.
    assert.match(last, new RegExp(`local\\s+127\\.0\\.0\\.1:${agentPort}\\s+READY\\s+SYNCED\\s`));
    for (const id of ["demo-batch", "demo-idle", "demo-web"]) assert.match(last, new RegExp(`local\\s+${id}\\s`));
    // The busy demo shows real CPU use by the last frame.
    const batch = last.split("\n").find((l) => l.includes("demo-batch"))!;
    assert.match(batch, /\d+\.\d%/, `cpu% shown: ${batch}`);
    assert.match(last, /1\/1 hosts answered/);
    assert.match(r.stdout, /fleetlet up: stopped/);
  });

  it.skipIf(mustRunInCi(rootSkipReason()))("--demo-network puts the demos behind veth pairs in namespaces of their own: real network counters, nothing in the root namespace, all removed afterwards", async () => {
    const d = tempDir("up-net");
    const [aggPort, agentPort] = [await freePort(), await freePort()];
    const r = await runFleetlet(
      ["up", "--state-dir", d.path, "--aggregator-listen", `127.0.0.1:${aggPort}`, "--agent-listen", `127.0.0.1:${agentPort}`,
        "--agent-metrics-listen", "off", "--aggregator-metrics-listen", "off", "--duration", "3s", "--refresh", "1s", "--demo-network"],
      60_000,
    );
    d.remove();
    assert.equal(r.code, 0, r.stderr + r.stdout);
    const frames = r.stdout.split("fleetlet fleet").slice(1);
    const web = frames[frames.length - 1]!.split("\n").find((l) => l.includes("demo-web"))!;
    // NET-RX and NET-TX are the 8th and 9th columns after HOST (after STATE): sizes, not "-".
    const cols = web.trim().split(/\s{2,}/);
    assert.equal(cols[3], "RUNNING", web);
    assert.match(cols[8] ?? "", /^\d+(\.\d)?(Ki|Mi)$/, web);
    assert.match(cols[9] ?? "", /^\d+(\.\d)?(Ki|Mi)$/, web);
    // The veths live in the demo's host namespace, never in the root namespace.
    assert.equal(execFileSync("ip", ["-o", "link"], { encoding: "utf8" }).includes("fl-demo"), false, "no veth in the root namespace");
    const pid = /network namespace fl-demo-host-(\d+)/.exec(r.stdout)?.[1];
    assert.ok(pid, r.stdout);
    assert.doesNotMatch(execFileSync("ip", ["netns", "list"], { encoding: "utf8" }), new RegExp(`^fl-demo\\S*-${pid}\\b`, "m"), "its namespaces removed");
  });
});
