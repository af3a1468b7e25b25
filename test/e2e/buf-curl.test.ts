import { afterAll, beforeAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { startDaemon, type DaemonProcess } from "../helpers/daemon-process.js";
import { tempDir } from "../helpers/temp-dir.js";
import { TEST_IMAGE, TestDockerd, dockerdSkipReason } from "../helpers/dockerd.js";
import { mustRunInCi } from "../helpers/root.js";
import { repoPath } from "../helpers/paths.js";
import { standInProcess } from "../helpers/stand-in-process.js";

// The instances' pid: not the agent's, nor the test process (an ancestor of the agent).
const standIn = standInProcess();

// A client that is not ours checks the wire: the buf CLI (from node_modules) with server
// reflection, exactly as the README tells operators to call the daemons.

const BUF = repoPath("node_modules", ".bin", "buf");
let agent: DaemonProcess;
let aggregator: DaemonProcess;
const agentState = tempDir("bufcurl-agent");
const aggState = tempDir("bufcurl-agg");
// The agent uses a private dockerd when one can run (always in CI), so RuntimeService is called too.
const dockerSkip = mustRunInCi(dockerdSkipReason());
let dockerd: TestDockerd | undefined;
let containerId = "";

function bufCurl(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((res) => {
    execFile(BUF, ["curl", "--protocol", "grpc", "--http2-prior-knowledge", ...args], { timeout: 30_000 }, (err, stdout, stderr) => {
      res({ code: err ? (typeof err.code === "number" ? err.code : 1) : 0, stdout, stderr });
    });
  });
}

async function call(address: string, method: string, body: object): Promise<Record<string, unknown>> {
  const r = await bufCurl(["-d", JSON.stringify(body), `http://${address}/${method}`]);
  assert.equal(r.code, 0, `${method}: ${r.stderr}${r.stdout}`);
  return JSON.parse(r.stdout || "{}") as Record<string, unknown>;
}

beforeAll(async () => {
  let runtime = ["--runtime", "none"];
  if (!dockerSkip) {
    dockerd = await TestDockerd.start();
    containerId = dockerd.docker("run", "-d", "--network", "none", "--name", "bc1", TEST_IMAGE, "sh", "-c", "echo line-1; sleep 0.2; echo line-2 >&2; exec sleep 1000");
    runtime = ["--runtime", "docker", "--docker-host", dockerd.host];
  }
  agent = await startDaemon(["agent", "--listen", "127.0.0.1:0", "--state-dir", agentState.path, "--metrics-listen", "off", ...runtime]);
  aggregator = await startDaemon(["aggregator", "--listen", "127.0.0.1:0", "--state-dir", aggState.path, "--metrics-listen", "off", "--hosts", `local=${agent.address}`]);
});

afterAll(async () => {
  await Promise.all([agent.stop(), aggregator.stop()]);
  await dockerd?.stop();
  agentState.remove();
  aggState.remove();
});

describe("buf curl against the agent", () => {
  it("lists the services through reflection", async () => {
    const r = await bufCurl(["--list-services", `http://${agent.address}`]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.stdout.trim().split("\n").sort(), [
      "fleetlet.agent.v1.InventoryService",
      "fleetlet.agent.v1.MeteringService",
      "fleetlet.agent.v1.MetricsService",
      "fleetlet.agent.v1.RuntimeService",
      "fleetlet.agent.v1.StandbyService",
      "grpc.health.v1.Health",
      "grpc.reflection.v1.ServerReflection",
      "grpc.reflection.v1alpha.ServerReflection",
    ]);
  });
  it("calls every method with JSON", async () => {
    const inv = "fleetlet.agent.v1.InventoryService";
    const met = "fleetlet.agent.v1.MetricsService";
    const reg = await call(agent.address, `${inv}/RegisterInstance`, { instance: { id: "vm-1", name: "one", pid: standIn.pid, allocatedVcpus: 2 } });
    assert.equal((reg.instance as { state: string }).state, "INSTANCE_STATE_RUNNING");
    const got = await call(agent.address, `${inv}/GetInstance`, { instanceId: "vm-1" });
    assert.equal((got.instance as { name: string }).name, "one");
    const list = await call(agent.address, `${inv}/ListInstances`, {});
    // (plus the dockerd's container, an instance of source RUNTIME, when the agent has one)
    assert.deepEqual((list.instances as { id: string }[]).map((i) => i.id).filter((id) => !id.startsWith("docker-")), ["vm-1"]);
    assert.match(String(list.incarnation), /^[0-9a-f]{16}$/);
    const stats = await call(agent.address, `${met}/GetInstanceStats`, { instanceId: "vm-1" });
    assert.ok(Number((stats.stats as { cpuUsec: string }).cpuUsec) > 0);
    const all = await call(agent.address, `${met}/ListInstanceStats`, {});
    assert.ok((all.stats as { instanceId: string }[]).some((x) => x.instanceId === "vm-1"));
    // A server stream: buf curl prints one JSON document per message; take the first two.
    const watch = await bufCurl(["--timeout", "1.5s", "-d", '{"intervalMs":200}', `http://${agent.address}/${met}/WatchInstanceStats`]);
    assert.ok((watch.stdout.match(/"instanceId": "vm-1"/g) ?? []).length >= 2, watch.stdout + watch.stderr);
    const health = await call(agent.address, "grpc.health.v1.Health/Check", { service: inv });
    assert.equal(health.status, "SERVING");
    const sb = "fleetlet.agent.v1.StandbyService";
    // Where the kernel tracks no flows in the agent's namespace (a host without a conntrack
    // rule, as CI's), standby is UNSUPPORTED and the mutating calls say so on the wire.
    const before = await call(agent.address, `${sb}/GetStandbyStatus`, { instanceId: "vm-1" });
    const supported = (before.status as { supported?: boolean }).supported === true;
    const mutating: [string, object][] = [
      [`${sb}/SetStandbyPolicy`, { instanceId: "vm-1", policy: { enabled: true, idleTimeout: "300s", ignoreDestinationPorts: [22, 22] } }],
      [`${sb}/ResetIdle`, { instanceId: "vm-1" }],
      [`${sb}/HoldStandby`, { instanceId: "vm-1", duration: "60s" }],
    ];
    if (supported) {
      const policy = await call(agent.address, mutating[0]![0], mutating[0]![1]);
      assert.deepEqual(policy.policy, { enabled: true, idleTimeout: "5m0s", ignoreDestinationPorts: [22] });
      await call(agent.address, mutating[1]![0], mutating[1]![1]);
      const held = await call(agent.address, mutating[2]![0], mutating[2]![1]);
      assert.ok(held.holdUntil);
    } else {
      assert.match(String((before.status as { unsupportedReason?: string }).unsupportedReason), /conntrack/);
      for (const [method, body] of mutating) {
        const r = await bufCurl(["-d", JSON.stringify(body), `http://${agent.address}/${method}`]);
        assert.match(r.stdout + r.stderr, /failed_precondition[\s\S]*standby is not supported/, `${method}: ${r.stdout}${r.stderr}`);
      }
    }
    const st = await call(agent.address, `${sb}/GetStandbyStatus`, { instanceId: "vm-1" });
    assert.match(String((st.status as { status: string }).status), /^STANDBY_STATE_/);
    const sts = await call(agent.address, `${sb}/ListStandbyStatus`, {});
    assert.ok((sts.statuses as { instanceId: string }[]).some((x) => x.instanceId === "vm-1"));
    const wake = await bufCurl(["-d", '{"instanceId":"vm-1"}', `http://${agent.address}/${sb}/WakeInstance`]);
    assert.match(wake.stdout + wake.stderr, /failed_precondition/, "a running instance cannot be woken");
    const sw = await bufCurl(["--timeout", "1s", "-d", '{"instanceIds":["vm-1"]}', `http://${agent.address}/${sb}/WatchStandbyStatus`]);
    assert.match(sw.stdout, /"instanceId": "vm-1"/);
    const dereg = await call(agent.address, `${inv}/DeregisterInstance`, { instanceId: "vm-1" });
    assert.equal((dereg.instance as { id: string }).id, "vm-1");
  });
  it("answers bad input with invalid_argument naming the field, and unknown ids with not_found", async () => {
    const bad = await bufCurl(["-d", '{"instance":{"id":"a/b"}}', `http://${agent.address}/fleetlet.agent.v1.InventoryService/RegisterInstance`]);
    assert.notEqual(bad.code, 0);
    assert.match(bad.stdout + bad.stderr, /invalid_argument/);
    assert.match(bad.stdout + bad.stderr, /instance\.id: \\?"a\/b\\?" must match/);
    const missing = await bufCurl(["-d", '{"instanceId":"nope"}', `http://${agent.address}/fleetlet.agent.v1.MetricsService/GetInstanceStats`]);
    assert.match(missing.stdout + missing.stderr, /not_found/);
  });
});

describe("buf curl against the aggregator", () => {
  it("lists the services through reflection", async () => {
    const r = await bufCurl(["--list-services", `http://${aggregator.address}`]);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(r.stdout.includes("fleetlet.aggregator.v1.FleetService"), r.stdout);
    assert.ok(r.stdout.includes("grpc.health.v1.Health"));
  });
  it("calls every method with JSON", async () => {
    const fleet = "fleetlet.aggregator.v1.FleetService";
    await call(agent.address, "fleetlet.agent.v1.InventoryService/RegisterInstance", { instance: { id: "vm-2", pid: standIn.pid } });
    const hosts = await call(aggregator.address, `${fleet}/ListHosts`, {});
    assert.equal((hosts.hosts as { name: string }[])[0]?.name, "local");
    const added = await call(aggregator.address, `${fleet}/AddHost`, { name: "extra", address: agent.address, perHostTimeout: "1s" });
    assert.equal((added.host as { origin: string }).origin, "HOST_ORIGIN_API");
    const stats = await call(aggregator.address, `${fleet}/ListInstanceStats`, { perHostTimeout: "3s" });
    assert.deepEqual((stats.hostResults as { host: string; code: string }[]).map((h) => [h.host, h.code]), [["extra", "OK"], ["local", "OK"]]);
    assert.ok((stats.stats as { host: string; instanceId: string }[]).some((s) => s.host === "local" && s.instanceId === "vm-2"));
    const sbs = await call(aggregator.address, `${fleet}/ListStandbyStatus`, {});
    assert.ok((sbs.statuses as { host: string; status: { instanceId: string } }[]).some((s) => s.host === "local" && s.status.instanceId === "vm-2"));
    const inst = await call(aggregator.address, `${fleet}/ListInstances`, { hosts: ["local"] });
    assert.ok((inst.instances as { host: string; id: string }[]).some((i) => i.host === "local" && i.id === "vm-2"));
    await call(aggregator.address, `${fleet}/RemoveHost`, { name: "extra" });
    const after = await call(aggregator.address, `${fleet}/ListHosts`, {});
    assert.deepEqual((after.hosts as { name: string }[]).map((h) => h.name), ["local"]);
  });
});

describe.skipIf(dockerSkip)("buf curl against RuntimeService (a private dockerd)", () => {
  const rt = "fleetlet.agent.v1.RuntimeService";
  it("calls every method with JSON, agent and aggregator", async () => {
    const info = await call(agent.address, `${rt}/GetRuntimeInfo`, {});
    assert.deepEqual((info.runtimes as { name: string; connected: boolean }[]).map((r) => [r.name, r.connected]), [["docker", true]]);
    const list = await call(agent.address, `${rt}/ListContainers`, { runningOnly: true });
    const c = (list.containers as { externalId: string; name: string; state: string }[]).find((x) => x.externalId === containerId);
    assert.deepEqual([c?.name, c?.state], ["bc1", "CONTAINER_STATE_RUNNING"]);
    const stats = await call(agent.address, `${rt}/GetContainerStats`, { runtime: "docker", externalId: "bc1" });
    assert.ok(Number((stats.stats as { memoryUsageBytes: string }).memoryUsageBytes) > 0, JSON.stringify(stats));
    const all = await call(agent.address, `${rt}/ListContainerStats`, { perContainerTimeout: "5s" });
    assert.ok((all.stats as { externalId: string }[]).some((s) => s.externalId === containerId));
    const logs = await call(agent.address, `${rt}/FetchContainerLogs`, { runtime: "docker", externalId: "bc1" });
    assert.deepEqual((logs.lines as { stream: string; text: string }[]).map((l) => [l.stream, l.text]), [["LOG_STREAM_STDOUT", "line-1"], ["LOG_STREAM_STDERR", "line-2"]]);
    const streamed = await bufCurl(["-d", JSON.stringify({ runtime: "docker", externalId: "bc1", tail: 1 }), `http://${agent.address}/${rt}/StreamContainerLogs`]);
    assert.match(streamed.stdout, /"text": "line-2"/);
    assert.match(streamed.stdout, /"endReason": "LOG_END_REASON_END_OF_LOG"/);
    const health = await call(agent.address, `${rt}/GetContainerHealth`, { runtime: "docker", externalId: containerId.slice(0, 12) });
    assert.equal((health.health as { status: string }).status, "HEALTH_STATUS_NONE");
    const watch = await bufCurl(["--timeout", "1.5s", "-d", '{"runtime":"docker"}', `http://${agent.address}/${rt}/WatchRuntimeEvents`]);
    assert.match(watch.stdout, /"type": "WATCH_RUNTIME_EVENTS_RESPONSE_TYPE_SNAPSHOT"/);
    assert.match(watch.stdout, /"cursor": "[0-9a-f]{16}\.\d+"/);
    const bad = await bufCurl(["-d", '{"runtime":"podman","externalId":"x"}', `http://${agent.address}/${rt}/GetContainerHealth`]);
    assert.match(bad.stdout + bad.stderr, /invalid_argument[\s\S]*runtime: must be one of docker, kubernetes/);

    const fleet = "fleetlet.aggregator.v1.FleetService";
    const fl = await call(aggregator.address, `${fleet}/ListContainers`, {});
    assert.ok((fl.containers as { host: string; container: { name: string } }[]).some((x) => x.host === "local" && x.container.name === "bc1"));
    const routed = await bufCurl(["-d", JSON.stringify({ host: "local", runtime: "docker", externalId: "bc1" }), `http://${aggregator.address}/${fleet}/StreamContainerLogs`]);
    assert.match(routed.stdout, /"text": "line-1"/);
  });
});
