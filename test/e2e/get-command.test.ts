import { afterAll, beforeAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import { runFleetlet, startDaemon, type DaemonProcess } from "../helpers/daemon-process.js";
import { agentClients } from "../helpers/clients.js";
import { tempDir } from "../helpers/temp-dir.js";
import { standInProcess } from "../helpers/stand-in-process.js";

// The instances' pid: not the agent's, nor the test process (an ancestor of the agent).
const standIn = standInProcess();

// `fleetlet get`: tables by default, -o json, and the hosts that did not answer with the reason.

const dirs = [tempDir("get-agent"), tempDir("get-agg")];
let agent: DaemonProcess;
let aggregator: DaemonProcess;

beforeAll(async () => {
  agent = await startDaemon(["agent", "--listen", "127.0.0.1:0", "--state-dir", dirs[0]!.path, "--metrics-listen", "off"]);
  const c = agentClients(agent.address);
  await c.inventory.registerInstance({ instance: { id: "vm-get", name: "getter", pid: standIn.pid, allocatedVcpus: 2, allocatedMemoryBytes: 1n << 30n, labels: { team: "a" } } });
  c.close();
  // One live host and one that refuses connections.
  aggregator = await startDaemon(["aggregator", "--listen", "127.0.0.1:0", "--state-dir", dirs[1]!.path, "--metrics-listen", "off", "--hosts", `live=${agent.address},gone=127.0.0.1:1`]);
});

afterAll(async () => {
  await Promise.all([agent.stop(), aggregator.stop()]);
  for (const d of dirs) d.remove();
});

describe("fleetlet get", () => {
  it("hosts: a table with connection state", async () => {
    const r = await runFleetlet(["get", "hosts", "--aggregator", aggregator.address]);
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trim().split("\n");
    assert.match(lines[0]!, /^HOST\s+ADDRESS\s+CONNECTION\s+INVENTORY\s+METERING\s+LAST-SEEN\s+LAST-ERROR$/);
    assert.match(r.stdout, new RegExp(`live\\s+${agent.address.replace(/\./g, "\\.")}\\s+(READY|CONNECTING|IDLE)\\s+(LOADING|SYNCED)\\s+(caught-up|\\?|lag \\d+)\\s`));
    assert.match(r.stdout, /gone\s+127\.0\.0\.1:1\s+\S+\s+(LOADING|DEGRADED)\s+\?\s/);
  });
  it("stats: the live host's instance, and why the other host did not answer", async () => {
    const r = await runFleetlet(["get", "stats", "--aggregator", aggregator.address]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^HOST\s+ID\s+NAME\s+CPU-SEC/m);
    assert.match(r.stdout, /^live\s+vm-get\s+getter\s+\d+\.\d\d\s/m);
    assert.match(r.stdout, /^1\/2 hosts answered$/m);
    assert.match(r.stdout, /^ {2}gone: UNAVAILABLE after \d+ ms: /m);
  });
  it("instances -o json from one agent is the protobuf JSON of ListInstancesResponse", async () => {
    const r = await runFleetlet(["get", "instances", "--agent", agent.address, "-o", "json"]);
    assert.equal(r.code, 0, r.stderr);
    const doc = JSON.parse(r.stdout) as { instances: { id: string; allocatedMemoryBytes: string; labels: Record<string, string> }[]; incarnation: string };
    assert.deepEqual(doc.instances.map((i) => [i.id, i.allocatedMemoryBytes, i.labels.team]), [["vm-get", "1073741824", "a"]]);
    assert.match(doc.incarnation, /^[0-9a-f]{16}$/);
  });
  it("instances through the aggregator: a host column and each host's sync state", async () => {
    // The merged view follows the hosts: give it a moment to list "live".
    let r = await runFleetlet(["get", "instances", "--aggregator", aggregator.address]);
    for (let i = 0; i < 100 && !/^live\s+SYNCED/m.test(r.stdout); i++) {
      await new Promise((res) => setTimeout(res, 100));
      r = await runFleetlet(["get", "instances", "--aggregator", aggregator.address]);
    }
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^HOST\s+SYNC\s+INSTANCES\s+VERSION\s+LAST-SEEN\s+WHY$/m);
    assert.match(r.stdout, /^live\s+vm-get\s+getter\s+VM\s+RUNNING\s/m);
    assert.match(r.stdout, /^gone\s+DEGRADED\s+0\s+0\s+never\s+UNAVAILABLE: list failed: /m);
    assert.match(r.stdout, /^live\s+SYNCED\s+1\s+1\s+\S+ ago\s+-$/m);
  });
  it("standby: each instance's status row, through the aggregator and from one agent", async () => {
    const r = await runFleetlet(["get", "standby", "--aggregator", aggregator.address]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^HOST\s+ID\s+STATUS\s+REASON\s+ACTIVE/m);
    assert.match(r.stdout, /^live\s+vm-get\s+(DISABLED\s+POLICY_MISSING|UNSUPPORTED\s+UNSUPPORTED_PLATFORM)\s/m);
    assert.match(r.stdout, /^1\/2 hosts answered$/m);
    const j = await runFleetlet(["get", "standby", "--agent", agent.address, "-o", "json"]);
    const doc = JSON.parse(j.stdout) as { statuses: { instanceId: string; trackingMode: string }[] };
    assert.equal(doc.statuses[0]?.instanceId, "vm-get");
  });
  it("an aggregator that is not there: one line on stderr, exit 1", async () => {
    const r = await runFleetlet(["get", "hosts", "--aggregator", "127.0.0.1:1", "--timeout", "2s"]);
    assert.equal(r.code, 1);
    assert.match(r.stderr.trim(), /^fleetlet get hosts: 127\.0\.0\.1:1: /);
    assert.equal(r.stderr.trim().split("\n").length, 1);
  });
});
