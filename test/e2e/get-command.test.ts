import { afterAll, beforeAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import { runFleetlet, startDaemon, type DaemonProcess } from "../helpers/daemon-process.js";
import { fleetletVersion } from "../../lib/fleetlet-version.js";
import { parse as parseYaml } from "yaml";
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
  await c.inventory.registerInstance({ instance: { id: "vm-other", name: "other", pid: standIn.pid, allocatedVcpus: 1, allocatedMemoryBytes: 1n << 29n, labels: { team: "b", legacy: "yes" } } });
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
    assert.match(lines[0]!, /^HOST\s+ADDRESS\s+VERSION\s+CONNECTION\s+INVENTORY\s+METERING\s+LAST-SEEN\s+LAST-ERROR$/);
    assert.match(r.stdout, new RegExp(`live\\s+${agent.address.replace(/\./g, "\\.")}\\s+(${fleetletVersion().replace(/\./g, "\\.")}|\\?)\\s+(READY|CONNECTING|IDLE)\\s+(LOADING|SYNCED)\\s+(caught-up|\\?|lag \\d+)\\s`));
    assert.match(r.stdout, /gone\s+127\.0\.0\.1:1\s+\?\s+\S+\s+(LOADING|DEGRADED)\s+\?\s/);
  });
  it("stats: the live host's instance, why the other host did not answer, and exit 3 for the partial answer (0 with --allow-partial)", async () => {
    const r = await runFleetlet(["get", "stats", "--aggregator", aggregator.address]);
    assert.equal(r.code, 3, r.stderr);
    assert.match(r.stdout, /^HOST\s+ID\s+NAME\s+CPU-SEC/m);
    assert.match(r.stdout, /^live\s+vm-get\s+getter\s+\d+\.\d\d\s/m);
    assert.match(r.stdout, /^1\/2 hosts answered$/m);
    assert.match(r.stdout, /^ {2}gone: UNAVAILABLE after \d+ ms: /m);
    assert.equal(r.stderr, "fleetlet get stats: 1 of 2 hosts did not answer (gone: UNAVAILABLE); --allow-partial to exit 0\n");
    const allowed = await runFleetlet(["get", "stats", "--aggregator", aggregator.address, "--allow-partial", "-o", "json"]);
    assert.equal(allowed.code, 0, allowed.stderr);
    assert.equal(allowed.stderr, "");
    const doc = JSON.parse(allowed.stdout) as { hostResults: { host: string; code: string }[] };
    assert.deepEqual(doc.hostResults.map((h) => `${h.host}=${h.code}`).sort(), ["gone=UNAVAILABLE", "live=OK"]);
  });
  it("instances -o json from one agent is the protobuf JSON of ListInstancesResponse", async () => {
    const r = await runFleetlet(["get", "instances", "--agent", agent.address, "-o", "json"]);
    assert.equal(r.code, 0, r.stderr);
    const doc = JSON.parse(r.stdout) as { instances: { id: string; allocatedMemoryBytes: string; labels: Record<string, string> }[]; incarnation: string };
    assert.deepEqual(doc.instances.map((i) => [i.id, i.allocatedMemoryBytes, i.labels.team]), [["vm-get", "1073741824", "a"], ["vm-other", "536870912", "b"]]);
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
    assert.match(r.stdout, /^live\s+SYNCED\s+2\s+2\s+\S+ ago\s+-$/m);
  });
  it("standby: each instance's status row, through the aggregator and from one agent", async () => {
    const r = await runFleetlet(["get", "standby", "--aggregator", aggregator.address]);
    assert.equal(r.code, 3, r.stderr);
    assert.match(r.stdout, /^HOST\s+ID\s+STATUS\s+REASON\s+ACTIVE/m);
    assert.match(r.stdout, /^live\s+vm-get\s+(DISABLED\s+POLICY_MISSING|UNSUPPORTED\s+UNSUPPORTED_PLATFORM)\s/m);
    assert.match(r.stdout, /^1\/2 hosts answered$/m);
    const j = await runFleetlet(["get", "standby", "--agent", agent.address, "-o", "json"]);
    const doc = JSON.parse(j.stdout) as { statuses: { instanceId: string; trackingMode: string }[] };
    assert.equal(doc.statuses[0]?.instanceId, "vm-get");
  });
  it("--version and -V print the version (the daemons put it on every log line)", async () => {
    for (const flag of ["--version", "-V"]) {
      const r = await runFleetlet([flag]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, `${fleetletVersion()}\n`);
    }
    assert.match(fleetletVersion(), /^\d+\.\d+\.\d+/);
  });
  it("names, -l selectors, --host, --no-headers and -o yaml pick and print what kubectl users expect", async () => {
    const ids = (stdout: string) => stdout.trim().split("\n").filter(Boolean).map((l) => l.split(/\s+/)[0]);
    const agentArgs = ["get", "instances", "--agent", agent.address];
    // By id or by name; a name that picks nothing: the rest printed, one stderr line, exit 1.
    let r = await runFleetlet([...agentArgs, "vm-get", "other", "--no-headers"]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(ids(r.stdout), ["vm-get", "vm-other"]);
    r = await runFleetlet([...agentArgs, "getter", "nope", "--no-headers"]);
    assert.equal(r.code, 1);
    assert.deepEqual(ids(r.stdout), ["vm-get"]);
    assert.equal(r.stderr, "fleetlet get instances: not found: nope\n");
    // Selectors: equality, inequality, presence, absence.
    for (const [selector, want] of [["team=a", ["vm-get"]], ["team!=a", ["vm-other"]], ["legacy", ["vm-other"]], ["!legacy,team", ["vm-get"]], ["team=c", []]] as const) {
      r = await runFleetlet([...agentArgs, "-l", selector, "--no-headers"]);
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(ids(r.stdout), want, selector);
    }
    r = await runFleetlet([...agentArgs, "-l", "a b=c"]);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /^fleetlet get: .*-l, --selector.*"a b=c": expected key=value/);
    r = await runFleetlet(["get", "stats", "--agent", agent.address, "-l", "team=a"]);
    assert.equal(r.code, 2);
    // -o yaml is the same document as -o json (the proto JSON mapping).
    const yaml = await runFleetlet([...agentArgs, "vm-get", "-o", "yaml"]);
    const json = await runFleetlet([...agentArgs, "vm-get", "-o", "json"]);
    assert.equal(yaml.code, 0, yaml.stderr);
    const fromYaml = parseYaml(yaml.stdout) as { instances: { id: string; allocatedMemoryBytes: string }[] };
    assert.deepEqual(fromYaml, JSON.parse(json.stdout));
    assert.deepEqual(fromYaml.instances.map((i) => [i.id, i.allocatedMemoryBytes]), [["vm-get", "1073741824"]]);
    // Through the aggregator: host/name, --host, and a selector the aggregator filters on.
    const fleetArgs = ["get", "instances", "--aggregator", aggregator.address, "--no-headers"];
    for (let i = 0; i < 100; i++) {
      r = await runFleetlet([...fleetArgs, "live/other"]);
      if (r.code === 0) break;
      await new Promise((res) => setTimeout(res, 100));
    }
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^live\s+vm-other\s+other\s/);
    assert.equal(r.stdout.split("\n\n")[0]!.trim().split("\n").length, 1, r.stdout);
    r = await runFleetlet([...fleetArgs, "gone/other"]);
    assert.equal(r.code, 1);
    r = await runFleetlet([...fleetArgs, "--host", "live", "-l", "team=a", "-o", "json"]);
    assert.deepEqual((JSON.parse(r.stdout) as { instances: { id: string }[] }).instances.map((i) => i.id), ["vm-get"]);
    r = await runFleetlet(["get", "hosts", "--aggregator", aggregator.address, "live", "--no-headers"]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(ids(r.stdout), ["live"]);
  });
  it("logs through the aggregator: an answer about the host names the target, a connection that failed names the aggregator", async () => {
    let r = await runFleetlet(["logs", "live/nope", "--aggregator", aggregator.address]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^fleetlet logs live\/nope: /);
    assert.doesNotMatch(r.stderr, new RegExp(aggregator.address.replace(/\./g, "\\.")));
    assert.equal(r.stderr.trim().split("\n").length, 1);
    r = await runFleetlet(["logs", "live/nope", "--aggregator", "127.0.0.1:1"]);
    assert.equal(r.code, 1);
    assert.equal(r.stderr, "fleetlet logs live/nope: aggregator 127.0.0.1:1: connection refused — is the aggregator running (and listening there)?\n");
  });
  it("an aggregator that is not there: one line on stderr, exit 1", async () => {
    const r = await runFleetlet(["get", "hosts", "--aggregator", "127.0.0.1:1", "--timeout", "2s"]);
    assert.equal(r.code, 1);
    assert.equal(r.stderr, "fleetlet get hosts: aggregator 127.0.0.1:1: connection refused — is the aggregator running (and listening there)?\n");
    assert.equal(r.stderr.trim().split("\n").length, 1);
  });
});
