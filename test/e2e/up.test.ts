import { describe, it } from "vitest";
import assert from "node:assert/strict";
import net from "node:net";
import { runFleetlet } from "../helpers/daemon-process.js";
import { tempDir } from "../helpers/temp-dir.js";
import { mustRunInCi, rootSkipReason } from "../helpers/root.js";
import { execFileSync } from "node:child_process";

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

  it.skipIf(mustRunInCi(rootSkipReason()))("--demo-network puts the demos behind veth pairs: real network counters, all removed afterwards", async () => {
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
    // NET-RX and NET-TX are the 7th and 8th columns after HOST: sizes, not "-".
    const cols = web.trim().split(/\s{2,}/);
    assert.match(cols[7] ?? "", /^\d+(\.\d)?(Ki|Mi)$/, web);
    assert.match(cols[8] ?? "", /^\d+(\.\d)?(Ki|Mi)$/, web);
    assert.equal(execFileSync("ip", ["-o", "link"], { encoding: "utf8" }).includes("fl-demo"), false, "veths removed");
    assert.equal(execFileSync("ip", ["netns", "list"], { encoding: "utf8" }).includes("fleetlet-demo"), false, "namespaces removed");
  });
});
