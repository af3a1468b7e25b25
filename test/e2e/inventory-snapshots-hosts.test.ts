import { until } from "../helpers/until.js";
import { afterAll, beforeAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { join } from "node:path";
import { FleetEventType, HostSyncState, type FleetInstanceEvent } from "../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { runFleetlet, startDaemon, type DaemonProcess } from "../helpers/daemon-process.js";
import { agentClients, fleetClient } from "../helpers/clients.js";
import { tempDir } from "../helpers/temp-dir.js";

// Seed 003's inventory edges, end to end with an agent and an aggregator as processes:
// snapshots registered on the agent appear in the fleet view (list and watch); `fleetlet hosts
// resync` relists a host now (its relist counter moves, a drifted view is repaired); `fleetlet
// hosts add --dry-run` reports what it reached at a live agent, a refused port and a silent
// one, and adds nothing.

const DROPPED = "dropped-by-the-aggregator";
const dirs = [tempDir("invsnap-agent"), tempDir("invsnap-agg")];
let agent: DaemonProcess;
let aggregator: DaemonProcess;
let silent: Server;
const sockets = new Set<Socket>();

beforeAll(async () => {
  agent = await startDaemon(["agent", "--listen", "127.0.0.1:0", "--state-dir", dirs[0]!.path, "--metrics-listen", "off", "--runtime", "none", "--standby", "off"]);
  // Digests compared once an hour: only a resync repairs the injected drift within the test.
  aggregator = await startDaemon(
    ["aggregator", "--listen", "127.0.0.1:0", "--state-dir", dirs[1]!.path, "--metrics-listen", "off", "--digest-interval", "1h", "--hosts", `h1=${agent.address}`],
    15_000,
    { FLEETLET_TEST_DROP_INVENTORY_EVENT: DROPPED, FLEETLET_ENABLE_FAULT_INJECTION: "1" },
  );
  // Accepts TCP connections and never answers: a dial that costs the whole timeout.
  silent = createServer((s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  await new Promise<void>((r) => silent.listen(0, "127.0.0.1", r));
});

afterAll(async () => {
  await Promise.all([agent?.stop(), aggregator?.stop()]);
  for (const s of sockets) s.destroy();
  await new Promise((r) => silent?.close(r));
  for (const d of dirs) d.remove();
});


/** The agent's own inventory and the fleet's view of h1, as comparable text. */
async function bothSides(): Promise<{ agent: string[]; fleet: string[]; version: bigint; sync: { state: HostSyncState; version: bigint; relists: number } }> {
  const a = agentClients(agent.address);
  const f = fleetClient(aggregator.address);
  try {
    const list = await a.inventory.listInstances({ includeSnapshots: true });
    const view = await f.fleet.listInstances({ hosts: ["h1"] });
    const snaps = await f.fleet.listSnapshots({ hosts: ["h1"] });
    const h = view.hosts.find((x) => x.host === "h1")!;
    return {
      agent: [...list.instances.map((i) => `i:${i.id}@${i.resourceVersion}`), ...list.snapshots.map((s) => `s:${s.id}/${s.instanceId}@${s.resourceVersion}`)],
      fleet: [...view.instances.map((i) => `i:${i.id}@${i.resourceVersion}`), ...snaps.snapshots.map((s) => `s:${s.id}/${s.instanceId}@${s.resourceVersion}`)],
      version: list.resourceVersion,
      sync: { state: h.state, version: h.resourceVersion, relists: h.relists },
    };
  } finally {
    a.close();
    f.close();
  }
}

describe("snapshots in the fleet view", () => {
  it("a snapshot registered on the agent appears in ListSnapshots and as a watch event; removed, it goes", async () => {
    const a = agentClients(agent.address);
    const f = fleetClient(aggregator.address);
    const abort = new AbortController();
    let watching: Promise<unknown> = Promise.resolve();
    try {
      await a.inventory.registerInstance({ instance: { id: "vm-snap", name: "snappy" } });
      await until("h1 SYNCED", async () => ((await f.fleet.listHosts({})).hosts[0]?.syncState === HostSyncState.SYNCED ? true : undefined));
      const start = await f.fleet.listSnapshots({});
      // A watch from the list's cursor with snapshots; filtered to the instance's snapshots.
      const events: FleetInstanceEvent[] = [];
      watching = (async () => {
        for await (const m of f.fleet.watchInstances({ cursor: start.cursor, includeSnapshots: true, snapshotInstanceIds: ["vm-snap"] }, { signal: abort.signal })) events.push(...m.events);
      })().catch(() => undefined);
      const registered = (await a.inventory.registerSnapshot({ snapshot: { id: "snap-1", instanceId: "vm-snap", hypervisor: "firecracker", storageBytes: 1n << 20n } })).snapshot!;
      assert.ok(registered.resourceVersion > 0n, "the agent versions the snapshot");
      await a.inventory.registerSnapshot({ snapshot: { id: "snap-other", instanceId: "someone-else" } });
      const listed = await until("the snapshot in the fleet view", async () => {
        const r = await f.fleet.listSnapshots({ instanceIds: ["vm-snap"] });
        return r.snapshots.length > 0 ? r : undefined;
      });
      assert.deepEqual(listed.snapshots.map((s) => [s.host, s.id, s.instanceId, s.hypervisor, s.storageBytes, s.resourceVersion]), [["h1", "snap-1", "vm-snap", "firecracker", 1n << 20n, registered.resourceVersion]]);
      assert.equal(listed.hosts.find((h) => h.host === "h1")!.snapshotCount, 2);
      await a.inventory.removeSnapshot({ snapshotId: "snap-1" });
      await until("ADDED then DELETED of snap-1 in the watch", async () => (events.filter((e) => e.snapshot).length >= 2 ? true : undefined));
      assert.deepEqual(
        events.filter((e) => e.snapshot).map((e) => `${FleetEventType[e.type]}:${e.snapshot!.host}/${e.snapshot!.id}`),
        ["ADDED:h1/snap-1", "DELETED:h1/snap-1"],
        "only the filtered instance's snapshots",
      );
      assert.ok(events.every((e) => e.type === FleetEventType.HOST_SYNC || e.snapshot || e.instance), "no empty events");
      const settled = await until("the view at the agent's version", async () => {
        const b = await bothSides();
        return b.sync.version === b.version ? b : undefined;
      });
      assert.deepEqual(settled.fleet, settled.agent);
    } finally {
      abort.abort();
      await watching;
      a.close();
      f.close();
    }
  });
});

describe("fleetlet hosts resync", () => {
  it("relists the host now: its relist counter moves, and a view that lost a change matches the agent again", async () => {
    const a = agentClients(agent.address);
    try {
      // The aggregator drops this change (fault injection) and compares digests only hourly.
      await a.inventory.registerInstance({ instance: { id: DROPPED, name: "lost" } });
      await a.inventory.registerSnapshot({ snapshot: { id: "snap-after", instanceId: DROPPED } });
    } finally {
      a.close();
    }
    const before = await until("the view at the agent's version, short of the dropped instance", async () => {
      const b = await bothSides();
      return b.sync.version === b.version ? b : undefined;
    });
    assert.ok(!before.fleet.some((x) => x.startsWith(`i:${DROPPED}@`)), "the drift is there");
    assert.notDeepEqual(before.fleet, before.agent);
    const r = await runFleetlet(["hosts", "resync", "h1", "--aggregator", aggregator.address]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^HOST\s+STATE\s+VERSION\s+INSTANCES\s+SNAPSHOTS\s+RELISTS\s+ADDED\s+MODIFIED\s+DELETED$/m);
    const row = r.stdout.split("\n").find((l) => l.startsWith("h1 "))!.trim().split(/\s+/);
    assert.equal(Number(row[5]), before.sync.relists + 1, `the relist counter moved by one: ${r.stdout}`);
    assert.deepEqual(row.slice(6), ["1", "0", "0"], "the relist added the lost instance");
    const after = await bothSides();
    assert.equal(after.sync.relists, before.sync.relists + 1);
    assert.deepEqual(after.fleet, after.agent, "the view matches the agent");
    const unknown = await runFleetlet(["hosts", "resync", "nope", "--aggregator", aggregator.address]);
    assert.equal(unknown.code, 1);
    assert.match(unknown.stderr, /host "nope" not found/);
  });
});

describe("fleetlet hosts add --dry-run", () => {
  const hostsFile = () => join(dirs[1]!.path, "hosts.json");
  const hostNames = async () => {
    const f = fleetClient(aggregator.address);
    try {
      return (await f.fleet.listHosts({})).hosts.map((h) => h.name);
    } finally {
      f.close();
    }
  };

  it("a live agent: reports its version, incarnation and instance count, adds nothing", async () => {
    const r = await runFleetlet(["hosts", "add", "probe-live", agent.address, "--dry-run", "--aggregator", aggregator.address, "-o", "json"]);
    assert.equal(r.code, 0, r.stderr);
    const doc = JSON.parse(r.stdout) as { host: { name: string }; probe: { reachable: boolean; code: string; healthStatus: string; agentVersion: string; agentIncarnation: string; instanceCount?: number } };
    const a = agentClients(agent.address);
    const list = await a.inventory.listInstances({});
    a.close();
    assert.equal(doc.probe.reachable, true);
    assert.equal(doc.probe.code, "OK");
    assert.equal(doc.probe.healthStatus, "SERVING");
    assert.equal(doc.probe.agentVersion, (JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as { version: string }).version);
    assert.equal(doc.probe.agentIncarnation, list.incarnation);
    assert.equal(doc.probe.instanceCount, list.instances.length);
    assert.deepEqual(await hostNames(), ["h1"], "nothing added");
    assert.equal(existsSync(hostsFile()), false, "nothing persisted");
    const table = await runFleetlet(["hosts", "add", "probe-live", agent.address, "--dry-run", "--aggregator", aggregator.address]);
    assert.equal(table.code, 0, table.stderr);
    assert.match(table.stdout, new RegExp(`^probe-live\\s+${agent.address.replace(/\./g, "\\.")}\\s+yes\\s+SERVING\\s+\\S+\\s+${list.incarnation}\\s`, "m"));
    assert.match(table.stdout, /dry run: nothing was added$/m);
  });

  it("a refused port and a silent one: the error with its code, exit 1, nothing added", async () => {
    const refused = await runFleetlet(["hosts", "add", "probe-dead", "127.0.0.1:1", "--dry-run", "--aggregator", aggregator.address]);
    assert.equal(refused.code, 1, refused.stderr);
    assert.match(refused.stdout, /^probe-dead\s+127\.0\.0\.1:1\s+no\s+-\s+-\s+-\s+-\s+-\s+[\d.]+ms\s+UNAVAILABLE: /m);
    assert.match(refused.stdout, /dry run: nothing was added \(the host did not answer\)$/m);
    const port = (silent.address() as { port: number }).port;
    const quiet = await runFleetlet(["hosts", "add", "probe-silent", `127.0.0.1:${port}`, "--dry-run", "--per-host-timeout", "700ms", "--aggregator", aggregator.address, "-o", "json"]);
    assert.equal(quiet.code, 1, quiet.stderr);
    const doc = JSON.parse(quiet.stdout) as { probe: { reachable?: boolean; code: string; latencyMs: number } };
    assert.equal(doc.probe.reachable ?? false, false);
    assert.equal(doc.probe.code, "DEADLINE_EXCEEDED", "the dial waited for the host's timeout, then gave up");
    assert.deepEqual(await hostNames(), ["h1"], "nothing added");
    assert.equal(existsSync(hostsFile()), false, "nothing persisted");
    // A name taken by another address is refused as the real add would.
    const taken = await runFleetlet(["hosts", "add", "h1", "127.0.0.1:1", "--dry-run", "--aggregator", aggregator.address]);
    assert.equal(taken.code, 1);
    assert.match(taken.stderr, /already exists with address/);
  });
});
