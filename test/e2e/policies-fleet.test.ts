import { afterAll, beforeAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import { renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { InstanceKind, InstanceState, InventoryService } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { FleetEventType, FleetService, PolicySeverity, type FleetInstance } from "../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { createGrpcJsTransport } from "../../lib/rpc/grpc-transport.js";
import { runFleetlet, startDaemon, type DaemonProcess } from "../helpers/daemon-process.js";
import { tempDir } from "../helpers/temp-dir.js";
import { until } from "../helpers/until.js";

// Fleet policies with real daemons (issue 14 acceptance): an instance registered without a
// standby policy shows the concern within a second and loses it when it gets one; a rules-file
// edit re-evaluates the fleet; a host whose agent stops raises host-stale-running on its RUNNING
// instances past --stale-after; a watch sees concerns come as MODIFIED events; the host's facts
// (CPUs, memory, labels, agent version) reach ListHosts.

const dir = tempDir("policies-fleet");
const d = (...p: string[]) => join(dir.path, ...p);
let agent: DaemonProcess;
let aggregator: DaemonProcess;
const closers: (() => void)[] = [];

const rulesFile = (limit: number) => `rules:\n  - name: big-vm\n    severity: critical\n    description: more than ${limit} vCPUs\n    fails_when: instance.allocated_vcpus > ${limit}\n`;

beforeAll(async () => {
  writeFileSync(d("policies.yaml"), rulesFile(16));
  agent = await startDaemon(["agent", "--listen", "127.0.0.1:0", "--state-dir", d("agent"), "--metrics-listen", "off", "--runtime", "none", "--standby", "off", "--host-label", "zone=eu", "--host-label", "rack=r7"]);
  aggregator = await startDaemon([
    "aggregator", "--listen", "127.0.0.1:0", "--state-dir", d("aggregator"), "--metrics-listen", "off", "--hosts", `h1=${agent.address}`,
    "--policies", d("policies.yaml"), "--policy-sweep-interval", "1s", "--stale-after", "3s",
  ]);
});

afterAll(async () => {
  for (const c of closers) c();
  await Promise.all([agent?.stop(), aggregator?.stop()]);
  dir.remove();
});

function clients() {
  const a = createGrpcJsTransport(agent.address);
  const g = createGrpcJsTransport(aggregator.address);
  closers.push(() => a.close(), () => g.close());
  return { inventory: createClient(InventoryService, a), fleet: createClient(FleetService, g) };
}

async function instance(id: string): Promise<FleetInstance | undefined> {
  const { fleet } = clients();
  return (await fleet.listInstances({})).instances.find((i) => i.id === id);
}

const rulesOf = (i: FleetInstance | undefined) => (i?.concerns ?? []).map((c) => c.rule);

describe("fleet policies with a real agent and aggregator", () => {
  it("the host's facts reach ListHosts", async () => {
    const { fleet } = clients();
    const info = await until("host facts", async () => (await fleet.listHosts({})).hosts.find((h) => h.name === "h1")?.info);
    assert.ok(info.cpuCount >= 1);
    assert.ok(info.memoryBytes > 0n);
    assert.deepEqual(info.labels, { zone: "eu", rack: "r7" });
    assert.match(info.agentVersion, /^\d+\.\d+\.\d+/);
    assert.equal(info.standbySupported, false);
    assert.equal(info.standbyUnsupportedReason, "--standby off");
  });

  it("no standby policy: the concern within a second, cleared by a policy; a watch sees both as MODIFIED", async () => {
    const { inventory, fleet } = clients();
    // A watch from the current state: every later event of vm-1 is collected.
    const seen: { type: FleetEventType; rules: string[] }[] = [];
    const stop = new AbortController();
    let synced = false;
    const watching = (async () => {
      for await (const res of fleet.watchInstances({}, { signal: stop.signal })) {
        for (const ev of res.events) {
          if (ev.type === FleetEventType.SYNCED) synced = true;
          if (synced && ev.instance?.id === "vm-1") seen.push({ type: ev.type, rules: ev.instance.concerns.map((x) => x.rule) });
        }
      }
    })().catch(() => undefined);
    await until("the watch's current state", async () => (synced ? true : undefined), 5000);
    const start = performance.now();
    await inventory.registerInstance({ instance: { id: "vm-1", kind: InstanceKind.VM, state: InstanceState.RUNNING, allocatedVcpus: 2 } });
    const concerned = await until("no-standby-policy on vm-1", async () => (rulesOf(await instance("vm-1")).includes("no-standby-policy") ? true : undefined), 5000);
    const elapsed = performance.now() - start;
    assert.ok(concerned);
    console.log(`policies-fleet: registration -> concern visible in ListInstances after ${elapsed.toFixed(0)} ms`);
    // "Within a second" is measured (printed here, p99 in bench/policies), not asserted: a loaded
    // CI machine must not fail the suite on time alone.
    const c = (await instance("vm-1"))!.concerns.find((x) => x.rule === "no-standby-policy")!;
    assert.equal(c.severity, PolicySeverity.INFO);
    assert.ok(c.since);

    await inventory.registerInstance({ instance: { id: "vm-1", kind: InstanceKind.VM, state: InstanceState.RUNNING, allocatedVcpus: 2, standbyPolicy: { enabled: false } } });
    await until("the concern cleared", async () => (rulesOf(await instance("vm-1")).includes("no-standby-policy") ? undefined : true), 5000);

    // The watch: ADDED (the registration), a MODIFIED carrying the concern, a MODIFIED without it.
    const withConcern = () => seen.findIndex((e) => e.type === FleetEventType.MODIFIED && e.rules.includes("no-standby-policy"));
    await until("both MODIFIED events", async () => (withConcern() >= 0 && seen.slice(withConcern() + 1).some((e) => e.type === FleetEventType.MODIFIED && !e.rules.includes("no-standby-policy")) ? true : undefined), 5000).catch(() => undefined);
    stop.abort();
    await watching;
    assert.equal(seen[0]?.type, FleetEventType.ADDED, `events: ${JSON.stringify(seen)}`);
    assert.ok(withConcern() >= 0, `events: ${JSON.stringify(seen)}`);
    assert.ok(seen.slice(withConcern() + 1).some((e) => e.type === FleetEventType.MODIFIED && !e.rules.includes("no-standby-policy")), `events: ${JSON.stringify(seen)}`);
  });

  it("a rules-file edit re-evaluates the fleet; failing_rules filters", async () => {
    const { inventory, fleet } = clients();
    await inventory.registerInstance({ instance: { id: "vm-big", kind: InstanceKind.VM, state: InstanceState.RUNNING, allocatedVcpus: 8, standbyPolicy: { enabled: false } } });
    await until("vm-big validated", async () => ((await fleet.listPolicies({})).unvalidated === 0 ? true : undefined), 5000);
    assert.ok(!rulesOf(await instance("vm-big")).includes("big-vm"), "8 vCPUs pass a limit of 16");
    const before = (await fleet.listPolicies({})).version;
    writeFileSync(d("policies.yaml.new"), rulesFile(4));
    renameSync(d("policies.yaml.new"), d("policies.yaml"));
    await until("big-vm on vm-big", async () => (rulesOf(await instance("vm-big")).includes("big-vm") ? true : undefined), 5000);
    const policies = await fleet.listPolicies({});
    assert.equal(policies.version, before + 1n);
    assert.equal(policies.rules.find((r) => r.name === "big-vm")?.description, "more than 4 vCPUs");
    const failing = await fleet.listInstances({ failingRules: ["big-vm"] });
    assert.deepEqual(failing.instances.map((i) => i.id), ["vm-big"]);
    const critical = await fleet.listInstances({ concernSeverities: [PolicySeverity.CRITICAL] });
    assert.deepEqual(critical.instances.map((i) => i.id), ["vm-big"]);
    assert.equal(policies.summaries.find((s) => s.rule === "big-vm")?.failing, 1);
  });

  it("PutPolicy / DeletePolicy: bad rules named with the CEL position, the file's rules not changeable, versions move", async () => {
    const { fleet } = clients();
    const err = (p: Promise<unknown>) => p.then(() => undefined, (e: unknown) => ConnectError.from(e));
    const bad = await err(fleet.putPolicy({ rule: { name: "typo", severity: PolicySeverity.WARNING, failsWhen: "instance.alocated_vcpus > 2" } }));
    assert.equal(bad?.code, Code.InvalidArgument);
    assert.match(bad!.rawMessage, /^rule\.fails_when: rule typo: <input>:1:9: FleetInstance has no field "alocated_vcpus"/);
    const syntax = await err(fleet.putPolicy({ rule: { name: "typo", severity: PolicySeverity.WARNING, failsWhen: "instance.allocated_vcpus >" } }));
    assert.match(syntax!.rawMessage, /^rule\.fails_when: rule typo: <input>:1:\d+: /);
    assert.equal((await err(fleet.putPolicy({ rule: { name: "big-vm", severity: PolicySeverity.INFO, failsWhen: "true" } })))?.code, Code.FailedPrecondition);
    assert.equal((await err(fleet.deletePolicy({ name: "nope" })))?.code, Code.NotFound);
    const v0 = (await fleet.listPolicies({})).version;
    const put = await fleet.putPolicy({ rule: { name: "labelled-db", severity: PolicySeverity.WARNING, description: "a db", failsWhen: 'instance.labels.exists(k, k == "team") && instance.labels["team"] == "db"' } });
    assert.equal(put.version, v0 + 1n);
    assert.equal((await fleet.deletePolicy({ name: "labelled-db" })).version, v0 + 2n);
    // A file edit that does not parse keeps the rules in force and says why.
    writeFileSync(d("policies.yaml"), "rules: [");
    const broken = await until("file_error", async () => ((await fleet.listPolicies({})).fileError || undefined), 5000);
    assert.match(broken, /policies\.yaml: not YAML or JSON: .*; keeping the rules read before/);
    assert.equal((await fleet.listPolicies({})).rules.find((r) => r.name === "big-vm")?.description, "more than 4 vCPUs");
    writeFileSync(d("policies.yaml"), rulesFile(4));
    await until("file_error cleared", async () => ((await fleet.listPolicies({})).fileError === "" ? true : undefined), 5000);
  });

  it("a rules file that does not check stops the start with one line", async () => {
    writeFileSync(d("bad.yaml"), 'rules:\n  - name: x\n    fails_when: "instance.nope > 1"\n');
    const r = await runFleetlet(["aggregator", "--listen", "127.0.0.1:0", "--state-dir", d("agg-bad"), "--metrics-listen", "off", "--policies", d("bad.yaml")]);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /^fleetlet aggregator: \S+bad\.yaml: rules\[0\]\.fails_when: rule x: <input>:1:9: FleetInstance has no field "nope"/);
    assert.equal(r.stderr.trim().split("\n").length, 1);
  });

  it("a host whose agent stops: host-stale-running on its RUNNING instances past --stale-after", async () => {
    await until("validated", async () => (((await clients().fleet.listPolicies({})).unvalidated === 0) ? true : undefined), 5000);
    assert.ok(!rulesOf(await instance("vm-1")).includes("host-stale-running"));
    await agent.stop();
    const stale = await until("host-stale-running", async () => (rulesOf(await instance("vm-1")).includes("host-stale-running") ? await instance("vm-1") : undefined), 15_000);
    assert.equal(stale!.concerns.find((c) => c.rule === "host-stale-running")?.severity, PolicySeverity.CRITICAL);
  }, 30_000);
});
