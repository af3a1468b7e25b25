import { afterAll, beforeAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import { performance } from "node:perf_hooks";
import { startDaemon, type DaemonProcess } from "../helpers/daemon-process.js";
import { agentClients, fleetClient } from "../helpers/clients.js";
import { tempDir } from "../helpers/temp-dir.js";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { ConnectionState } from "../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { standInProcess } from "../helpers/stand-in-process.js";

// The instances' pid: not the agent's, nor the test process (an ancestor of the agent).
const standIn = standInProcess();

// An aggregator and 3 agents as separate processes; one agent SIGSTOP'd (accepts TCP, never
// answers) and one killed: the healthy host's stats come back within its deadline + 100 ms,
// with DEADLINE_EXCEEDED and UNAVAILABLE for the other two.

const dirs = [tempDir("fo-a"), tempDir("fo-b"), tempDir("fo-c"), tempDir("fo-agg")];
let agents: DaemonProcess[] = [];
let aggregator: DaemonProcess;

beforeAll(async () => {
  agents = await Promise.all(
    ["a", "b", "c"].map((_, i) => startDaemon(["agent", "--listen", "127.0.0.1:0", "--state-dir", dirs[i]!.path, "--metrics-listen", "off"])),
  );
  for (const [i, a] of agents.entries()) {
    const c = agentClients(a.address);
    await c.inventory.registerInstance({ instance: { id: `vm-${i}`, pid: standIn.pid, allocatedVcpus: 1 } });
    c.close();
  }
  const hosts = agents.map((a, i) => `host-${"abc"[i]}=${a.address}`).join(",");
  aggregator = await startDaemon(["aggregator", "--listen", "127.0.0.1:0", "--state-dir", dirs[3]!.path, "--metrics-listen", "off", "--hosts", hosts]);
});

afterAll(async () => {
  for (const a of agents) a.child.kill("SIGCONT");
  await Promise.all([...agents.map((a) => a.stop()), aggregator.stop()]);
  for (const d of dirs) d.remove();
});

describe("fan-out with a hung and a dead host", () => {
  it("answers with every host while all are healthy", async () => {
    const { fleet, close } = fleetClient(aggregator.address);
    const res = await fleet.listInstanceStats({});
    close();
    assert.deepEqual(res.hostResults.map((h) => [h.host, h.code]), [["host-a", "OK"], ["host-b", "OK"], ["host-c", "OK"]]);
    assert.deepEqual(res.stats.map((s) => [s.host, s.instanceId]), [["host-a", "vm-0"], ["host-b", "vm-1"], ["host-c", "vm-2"]]);
  });

  it("reports the stopped host as DEADLINE_EXCEEDED and the dead one as UNAVAILABLE, within deadline + 100 ms", async () => {
    agents[1]!.child.kill("SIGSTOP");
    agents[2]!.child.kill("SIGKILL");
    await agents[2]!.exited;
    const { fleet, close } = fleetClient(aggregator.address);
    try {
      for (const deadlineMs of [1000, 500]) {
        const started = performance.now();
        const res = await fleet.listInstanceStats({ perHostTimeout: { seconds: 0n, nanos: deadlineMs * 1e6 } });
        const elapsed = performance.now() - started;
        const byHost = Object.fromEntries(res.hostResults.map((h) => [h.host, h]));
        assert.equal(byHost["host-a"]?.code, "OK");
        assert.equal(byHost["host-b"]?.code, "DEADLINE_EXCEEDED", byHost["host-b"]?.message);
        assert.equal(byHost["host-c"]?.code, "UNAVAILABLE", byHost["host-c"]?.message);
        assert.match(byHost["host-b"]?.message ?? "", new RegExp(`no answer within ${deadlineMs} ms`));
        assert.ok(elapsed <= deadlineMs + 100, `answer took ${elapsed.toFixed(0)} ms for a ${deadlineMs} ms deadline`);
        assert.ok(byHost["host-b"]!.latencyMs >= deadlineMs - 5, "the hung host cost its deadline");
        assert.deepEqual(res.stats.map((s) => [s.host, s.instanceId]), [["host-a", "vm-0"]]);
      }
      // Per-host override (AddHost) and the aggregator default (2 s), with no per-call override.
      await fleet.addHost({ name: "b-short", address: agents[1]!.address, perHostTimeout: { seconds: 0n, nanos: 300e6 } });
      const short = (await fleet.listInstanceStats({ hosts: ["b-short", "host-b"] })).hostResults;
      assert.deepEqual(short.map((h) => [h.host, h.code]), [["b-short", "DEADLINE_EXCEEDED"], ["host-b", "DEADLINE_EXCEEDED"]]);
      assert.ok(short[0]!.latencyMs >= 295 && short[0]!.latencyMs < 600, `b-short took ${short[0]!.latencyMs} ms`);
      assert.ok(short[1]!.latencyMs >= 1995 && short[1]!.latencyMs < 2300, `host-b took ${short[1]!.latencyMs} ms`);
      await fleet.removeHost({ name: "b-short" });

      const hosts = (await fleet.listHosts({})).hosts;
      const a = hosts.find((h) => h.name === "host-a")!;
      const c = hosts.find((h) => h.name === "host-c")!;
      assert.match(c.lastError, /^UNAVAILABLE: /);
      assert.equal(ConnectionState[a.connectionState], "READY");
      assert.notEqual(ConnectionState[c.connectionState], "READY", "the dead host's channel is not ready");
      assert.ok(a.lastSeen && Date.now() - timestampMs(a.lastSeen) < 5000, "the healthy host was seen just now");
    } finally {
      close();
    }
  });

  it("sees the stopped host again once it continues", async () => {
    agents[1]!.child.kill("SIGCONT");
    const { fleet, close } = fleetClient(aggregator.address);
    try {
      let code = "";
      for (let i = 0; i < 20 && code !== "OK"; i++) {
        const res = await fleet.listInstanceStats({ hosts: ["host-b"] });
        code = res.hostResults[0]!.code;
        if (code !== "OK") await new Promise((r) => setTimeout(r, 200));
      }
      assert.equal(code, "OK");
    } finally {
      close();
    }
  });
});
