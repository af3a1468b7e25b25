import { afterAll, beforeAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createClient, type Client } from "@connectrpc/connect";
import { InstanceKind, InstanceSource, InstanceState } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { ContainerState, LogEndReason, RuntimeService, WatchRuntimeEventsResponseType } from "../../gen/fleetlet/agent/v1/runtime_pb.js";
import { createGrpcJsTransport } from "../../lib/rpc/grpc-transport.js";
import { agentClients, fleetClient } from "../helpers/clients.js";
import { FLEETLET_BIN, startDaemon, type DaemonProcess } from "../helpers/daemon-process.js";
import { TEST_IMAGE, TestDockerd, dockerdSkipReason } from "../helpers/dockerd.js";
import { mustRunInCi } from "../helpers/root.js";
import { tempDir } from "../helpers/temp-dir.js";

// The runtime side end to end: a real dockerd, a real agent process using it (and one agent
// without runtimes), an aggregator over both. Containers show up in RuntimeService, in the
// inventory as instances, in the fleet's ListContainers and `fleetlet get containers`; logs are
// routed through the aggregator (`fleetlet logs HOST/NAME`). The docker standby driver has its
// own test in network namespaces (docker-standby-netns.test.ts).

const skip = mustRunInCi(dockerdSkipReason());
const dirs = [tempDir("rf-a"), tempDir("rf-b"), tempDir("rf-agg")];
let dockerd: TestDockerd;
let agent: DaemonProcess;
let bare: DaemonProcess;
let aggregator: DaemonProcess;
let transport: ReturnType<typeof createGrpcJsTransport>;
let runtime: Client<typeof RuntimeService>;

async function until<T>(what: string, read: () => Promise<T | undefined>, ms = 15_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await read();
    if (v !== undefined) return v;
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function cli(...args: string[]): { stdout: string; stderr: string } {
  try {
    const stdout = execFileSync(process.execPath, [FLEETLET_BIN, ...args], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], timeout: 20_000 });
    return { stdout, stderr: "" };
  } catch (e) {
    const err = e as { stdout: string; stderr: string; status: number };
    assert.fail(`fleetlet ${args.join(" ")} exited ${err.status}: ${err.stderr}`);
  }
}

beforeAll(async () => {
  if (skip) return;
  dockerd = await TestDockerd.start();
  agent = await startDaemon(["agent", "--listen", "127.0.0.1:0", "--state-dir", dirs[0]!.path, "--metrics-listen", "off", "--runtime", "docker", "--docker-host", dockerd.host]);
  bare = await startDaemon(["agent", "--listen", "127.0.0.1:0", "--state-dir", dirs[1]!.path, "--metrics-listen", "off", "--runtime", "none"]);
  aggregator = await startDaemon(["aggregator", "--listen", "127.0.0.1:0", "--state-dir", dirs[2]!.path, "--metrics-listen", "off", "--hosts", `dock=${agent.address},bare=${bare.address}`]);
  transport = createGrpcJsTransport(agent.address);
  runtime = createClient(RuntimeService, transport);
});

afterAll(async () => {
  if (skip) return;
  transport?.close();
  await Promise.all([agent?.stop(), bare?.stop(), aggregator?.stop()]);
  await dockerd?.stop();
  for (const d of dirs) d.remove();
});

describe.skipIf(skip)("containers through agent, inventory and aggregator", () => {
  it("a started container is listed, watched, and in the inventory as an instance", async () => {
    const ac = new AbortController();
    const stream = runtime.watchRuntimeEvents({ runtime: "docker" }, { signal: ac.signal })[Symbol.asyncIterator]();
    const snap = (await stream.next()).value!;
    assert.equal(snap.type, WatchRuntimeEventsResponseType.SNAPSHOT);
    const id = dockerd.docker("run", "-d", "--network", "none", "--name", "web1", "--label", "tier=front", TEST_IMAGE, "sh", "-c", "echo hello-out; sleep 0.2; echo hello-err >&2; exec sleep 1000");
    let sawStart = false;
    while (!sawStart) {
      const m = (await stream.next()).value!;
      if (m.type === WatchRuntimeEventsResponseType.EVENT && m.event?.externalId === id && m.event.action === "start") sawStart = true;
    }
    ac.abort();
    const listed = await until("web1 listed as running", async () =>
      (await runtime.listContainers({ runtime: "docker" })).containers.find((c) => c.externalId === id && c.state === ContainerState.RUNNING),
    );
    assert.equal(listed.name, "web1");
    assert.equal(listed.labels.tier, "front");
    assert.equal(listed.id, `docker-${id.slice(0, 12)}`);
    const { inventory, close } = agentClients(agent.address);
    try {
      const inst = await until("web1 in the inventory", async () => (await inventory.listInstances({})).instances.find((i) => i.id === listed.id));
      assert.deepEqual([inst.kind, inst.source, inst.state, inst.runtimeRef, inst.name], [InstanceKind.CONTAINER, InstanceSource.RUNTIME, InstanceState.RUNNING, `docker/${id}`, "web1"]);
      assert.equal(inst.pid, listed.pid);
      assert.ok(inst.pid && inst.pid > 1, "the container's init pid on this host");
    } finally {
      close();
    }
  });

  it("the fleet lists containers per host (the host without runtimes answers with none)", async () => {
    const { fleet, close } = fleetClient(aggregator.address);
    try {
      const res = await fleet.listContainers({});
      assert.deepEqual(res.hostResults.map((h) => [h.host, h.code]), [["bare", "OK"], ["dock", "OK"]]);
      assert.ok(res.containers.some((c) => c.host === "dock" && c.container?.name === "web1"));
      assert.ok(res.containers.every((c) => c.host === "dock"));
    } finally {
      close();
    }
    const table = cli("get", "containers", "--aggregator", aggregator.address).stdout;
    assert.match(table, /^HOST\s+RUNTIME\s+ID\s+NAME/m);
    assert.match(table, /dock\s+docker\s+[0-9a-f]{12}\s+web1\s+fleetlet-test\/busybox:1\s+running/);
    assert.match(table, /2\/2 hosts answered/);
  });

  it("logs are routed to the container's host: RPC and `fleetlet logs HOST/NAME`", async () => {
    const { fleet, close } = fleetClient(aggregator.address);
    try {
      const lines: [number, string][] = [];
      let end: LogEndReason | undefined;
      for await (const m of fleet.streamContainerLogs({ host: "dock", runtime: "docker", externalId: "web1" })) {
        lines.push(...m.lines.map((l) => [l.stream, l.text] as [number, string]));
        if (m.endReason) end = m.endReason;
      }
      assert.deepEqual(lines.map(([, t]) => t), ["hello-out", "hello-err"]);
      assert.equal(end, LogEndReason.END_OF_LOG);
      await assert.rejects(
        (async () => {
          for await (const _ of fleet.streamContainerLogs({ host: "nope", externalId: "web1" })) void _;
        })(),
        /host "nope" not found/,
      );
    } finally {
      close();
    }
    const out = execFileSync(process.execPath, [FLEETLET_BIN, "logs", "--aggregator", aggregator.address, "dock/web1"], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
    assert.equal(out, "hello-out\n", "stdout lines on stdout (stderr lines go to stderr)");
  });
});
