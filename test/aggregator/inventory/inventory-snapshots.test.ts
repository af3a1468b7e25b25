import { afterEach, beforeEach, describe, it } from "vitest";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import {
  InstanceKind,
  InstanceSchema,
  InstanceState,
  ListInstancesRequestSchema,
  SnapshotSchema,
  WatchInstancesRequestSchema,
  type Instance,
  type Snapshot,
} from "../../../gen/fleetlet/agent/v1/inventory_pb.js";
import { FleetEventType, FleetService, HostSyncState, type WatchInstancesResponse } from "../../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { createFleetService } from "../../../aggregator/fleet-service.js";
import { InstanceRegistry } from "../../../agent/inventory/instance-registry.js";
import { createInventoryService } from "../../../agent/inventory/inventory-service.js";
import { validateInstance } from "../../../agent/inventory/instance-validation.js";
import { watchInventory } from "../../../agent/inventory/inventory-watch.js";
import type { HostConnection } from "../../../aggregator/hosts/host-connection.js";
import type { HostRegistry } from "../../../aggregator/hosts/host-registry.js";
import { InventoryFollower } from "../../../aggregator/inventory/inventory-follower.js";
import { InventoryStore } from "../../../aggregator/inventory/inventory-store.js";
import { MergedView, type SnapshotFilter, type InstanceFilter } from "../../../aggregator/inventory/merged-view.js";
import { watchFleetInventory } from "../../../aggregator/inventory/fleet-inventory-watch.js";
import { inventoryDigest } from "../../../lib/inventory-digest.js";
import { parseHostPort } from "../../../lib/listen-address.js";
import { readAllPages } from "../../../lib/paging/read-all-pages.js";
import { startGrpcServer } from "../../../lib/rpc/grpc-server.js";
import { createGrpcJsTransport } from "../../../lib/rpc/grpc-transport.js";
import { createLogger } from "../../../lib/rpc/logger.js";
import { serviceRegistration } from "../../../lib/rpc/service-adapter.js";
import { prng } from "../../helpers/random-message.js";
import { tempDir } from "../../helpers/temp-dir.js";

// Seed 003's inventory is more than its VMs: snapshots are versioned in the agent's feed and
// part of the aggregator's merged view (list, watch, filters, store, digest), and an operator
// can force a host's relist.

let dir: ReturnType<typeof tempDir>;
beforeEach(() => (dir = tempDir("inventory-snapshots")));
afterEach(() => dir.remove());

const inst = (id: string, version: number, extra: object = {}): Instance => create(InstanceSchema, { id, resourceVersion: BigInt(version), state: InstanceState.RUNNING, kind: InstanceKind.VM, ...extra });
const snap = (id: string, instanceId: string, version: number): Snapshot => create(SnapshotSchema, { id, instanceId, hypervisor: "firecracker", storageBytes: 4096n, resourceVersion: BigInt(version) });

/** Events of a fleet watch until `n` were seen, as "TYPE:host/id" ("snap:" for snapshots). */
async function fleetEvents(view: MergedView, cursor: string, filter: InstanceFilter, snapshots: SnapshotFilter | undefined, n: number): Promise<string[]> {
  const abort = new AbortController();
  const out: string[] = [];
  const it = watchFleetInventory(view, cursor, filter, abort.signal, snapshots);
  try {
    while (out.length < n) {
      const next = await it.next();
      if (next.done) break;
      for (const e of (next.value as WatchInstancesResponse).events) {
        out.push(`${FleetEventType[e.type]}${e.instance ? `:${e.instance.host}/${e.instance.id}` : ""}${e.snapshot ? `:snap:${e.snapshot.host}/${e.snapshot.id}` : ""}`);
      }
    }
  } finally {
    abort.abort();
    await it.return(undefined);
  }
  return out;
}

describe("MergedView with snapshots", () => {
  it("lists, filters, watches and stores snapshots; a relist diffs them; the digest covers them", async () => {
    const store = InventoryStore.open(dir.path);
    const view = new MergedView(store);
    view.replace("h1", "i1", 4, [inst("a", 1), inst("b", 2)], 1000, [snap("s1", "a", 3), snap("s2", "b", 4)]);
    view.replace("h2", "i2", 2, [inst("a", 1)], 1000, [snap("s9", "a", 2)]);
    assert.deepEqual(view.listSnapshots({}).map((s) => `${s.host}/${s.id}@${s.resourceVersion}`), ["h1/s1@3", "h1/s2@4", "h2/s9@2"]);
    assert.deepEqual(view.listSnapshots({ hosts: new Set(["h1"]) }).map((s) => s.id), ["s1", "s2"]);
    assert.deepEqual(view.listSnapshots({ instanceIds: new Set(["a"]) }).map((s) => `${s.host}/${s.id}`), ["h1/s1", "h2/s9"]);
    assert.equal(view.hostSyncs().find((h) => h.host === "h1")!.snapshotCount, 2);
    // The digest is the agent's function over instances and snapshots.
    assert.deepEqual(view.digest("h1"), inventoryDigest([inst("a", 1), inst("b", 2)], [snap("s1", "a", 3), snap("s2", "b", 4)]));
    assert.notDeepEqual(view.digest("h1"), inventoryDigest([inst("a", 1), inst("b", 2)]));

    const cursor = view.cursor;
    view.applyChanges("h1", "i1", 6, [], [], 2000, { put: [snap("s3", "b", 5)], del: ["s1"] });
    // A watch without include_snapshots sees nothing of it; one with a filter sees its part.
    assert.deepEqual(await fleetEvents(view, cursor, {}, undefined, 0), []);
    assert.deepEqual(await fleetEvents(view, cursor, {}, {}, 2), ["ADDED:snap:h1/s3", "DELETED:snap:h1/s1"]);
    assert.deepEqual(await fleetEvents(view, cursor, {}, { instanceIds: new Set(["a"]) }, 1), ["DELETED:snap:h1/s1"]);
    // The current state first: instances, then snapshots, then SYNCED.
    assert.deepEqual(await fleetEvents(view, "", { hosts: new Set(["h2"]) }, { hosts: new Set(["h2"]) }, 4), ["HOST_SYNC", "ADDED:h2/a", "ADDED:snap:h2/s9", "SYNCED"]);

    // A relist: s2 vanished on the agent, s3 renumbered (silently), s4 new.
    const counts = view.replace("h1", "i1b", 9, [inst("a", 7), inst("b", 8)], 3000, [snap("s3", "b", 8), snap("s4", "a", 9)]);
    assert.deepEqual(counts, { added: 1, modified: 0, deleted: 1 });
    assert.deepEqual(view.listSnapshots({ hosts: new Set(["h1"]) }).map((s) => `${s.id}@${s.resourceVersion}`), ["s3@8", "s4@9"]);

    // A restart serves the stored snapshots (STALE with their host).
    view.removeHost("h2");
    store.close();
    const again = InventoryStore.open(dir.path);
    const reloaded = new MergedView(again);
    assert.deepEqual(reloaded.listSnapshots({}).map((s) => `${s.host}/${s.id}@${s.resourceVersion}`), ["h1/s3@8", "h1/s4@9"]);
    assert.deepEqual(reloaded.digest("h1"), view.digest("h1"));
    again.close();
  });
});

/** A host whose agent is the real InventoryService over `registry`, called in process. */
function hostOf(registry: InstanceRegistry, calls: { lists: number }): HostRegistry {
  const service = createInventoryService(registry, { tapPrefix: "fl-" });
  const conn = {
    config: { name: "h1" },
    incarnation: "",
    recordSuccess() {},
    inventory: {
      async listInstances(req: object) {
        calls.lists++;
        return service.listInstances!(create(ListInstancesRequestSchema, req), {} as never);
      },
      watchInstances(req: object, opts: { signal: AbortSignal }) {
        return watchInventory(registry.feed, create(WatchInstancesRequestSchema, req), opts.signal);
      },
    },
  } as unknown as HostConnection;
  return { list: () => [conn], get: (name: string) => (name === "h1" ? conn : undefined) } as unknown as HostRegistry;
}

const until = async (what: () => boolean, ms: number, label: string) => {
  const end = performance.now() + ms;
  while (!what()) {
    if (performance.now() > end) throw new Error(`timed out waiting for ${label}`);
    await new Promise((r) => setTimeout(r, 10));
  }
};

describe("InventoryFollower with snapshots", () => {
  it("the view of a host, instances and snapshots, has the agent's digest under churn: no digest mismatch", async () => {
    const registry = InstanceRegistry.open(dir.path);
    const view = new MergedView(undefined);
    const calls = { lists: 0 };
    const follower = new InventoryFollower(view, hostOf(registry, calls), createLogger("test", "silent"), { staleAfterMs: 30_000, digestIntervalMs: 100 });
    const rand = prng(3);
    try {
      for (let step = 0; step < 120; step++) {
        const id = `vm${Math.floor(rand() * 8)}`;
        const sid = `snap-${id}-${Math.floor(rand() * 2)}`;
        if (!registry.get(id)) await registry.upsert(validateInstance(create(InstanceSchema, { id }), { tapPrefix: "fl-" }));
        else if (rand() < 0.5) {
          if (registry.feed.getSnapshot(sid)) await registry.removeSnapshot(sid);
          else await registry.registerSnapshot(create(SnapshotSchema, { id: sid, instanceId: id, storageBytes: 1n }));
        } else await registry.setState(id, rand() < 0.5 ? InstanceState.RUNNING : InstanceState.STOPPED);
        if (step % 20 === 0) await new Promise((r) => setTimeout(r, 20));
      }
      assert.ok(registry.feed.listSnapshots().length > 0, "some snapshots left to compare");
      const h = () => view.host("h1");
      await until(() => h()?.state === HostSyncState.SYNCED && h()!.version === registry.feed.version, 5000, "the view at the agent's version");
      assert.deepEqual(view.digest("h1"), registry.feed.digest(true), "the aggregator's digest equals the agent's");
      assert.deepEqual(view.listSnapshots({}).map((s) => `${s.id}@${s.resourceVersion}`), registry.feed.listSnapshots().map((s) => `${s.id}@${s.resourceVersion}`));
      // Several digest comparisons (every 100 ms) later: all agreed, nothing was relisted.
      await new Promise((r) => setTimeout(r, 500));
      assert.equal(h()!.digestMismatches, 0);
      assert.equal(calls.lists, 1, "listed once, followed by watch since");
    } finally {
      await follower.close();
      registry.close();
    }
  });

  it("resync relists the host now and says what it changed; a drifted view is repaired", async () => {
    const registry = InstanceRegistry.open(dir.path);
    await registry.upsert(validateInstance(create(InstanceSchema, { id: "a" }), { tapPrefix: "fl-" }));
    await registry.registerSnapshot(create(SnapshotSchema, { id: "s1", instanceId: "a", storageBytes: 1n }));
    const view = new MergedView(undefined);
    const calls = { lists: 0 };
    // Digests compared rarely: only the resync can repair the drift below within the test.
    const follower = new InventoryFollower(view, hostOf(registry, calls), createLogger("test", "silent"), { staleAfterMs: 30_000, digestIntervalMs: 3_600_000 });
    try {
      await until(() => view.host("h1")?.state === HostSyncState.SYNCED, 5000, "SYNCED");
      assert.deepEqual(await follower.resync("h1"), { added: 0, modified: 0, deleted: 0 });
      assert.equal(calls.lists, 2);
      assert.equal(view.host("h1")!.relists, 2);
      // Drift: the view lost a snapshot and holds one the agent never had.
      view.host("h1")!.snapshots.delete("s1");
      view.applyChanges("h1", view.host("h1")!.incarnation, view.host("h1")!.version, [], [], Date.now(), { put: [snap("ghost", "a", 1)], del: [] });
      assert.deepEqual(await follower.resync("h1"), { added: 1, modified: 0, deleted: 1 });
      assert.deepEqual(view.listSnapshots({}).map((s) => s.id), ["s1"]);
      assert.deepEqual(view.digest("h1"), registry.feed.digest(true));
      await until(() => view.host("h1")?.state === HostSyncState.SYNCED, 5000, "SYNCED again");
      await assert.rejects(follower.resync("nope"), /not followed yet/);
    } finally {
      await follower.close();
      registry.close();
    }
  });
});

describe("FleetService.ListSnapshots and the snapshot watch, over the wire", () => {
  it("pages the merged view's snapshots with filters; bad filters are INVALID_ARGUMENT naming the field", async () => {
    const view = new MergedView(undefined);
    view.replace("h1", "i1", 9, [inst("a", 1)], 0, Array.from({ length: 7 }, (_, k) => snap(`s${k}`, k % 2 ? "a" : "b", k + 2)));
    view.replace("h2", "i2", 2, [], 0, [snap("x", "a", 2)]);
    const hostNames = new Set(["h1", "h2"]);
    const hosts = { get: (name: string) => (hostNames.has(name) ? { config: { name } } : undefined), list: () => [] } as unknown as HostRegistry;
    const server = await startGrpcServer({
      listen: parseHostPort("127.0.0.1:0"),
      logger: createLogger("test", "silent"),
      services: [serviceRegistration(FleetService, createFleetService(hosts, { defaultPerHostTimeoutMs: 1000, fanOutConcurrency: 4, inventory: { view } }))],
    });
    const transport = createGrpcJsTransport(server.address);
    const fleet = createClient(FleetService, transport);
    try {
      const pages = await readAllPages((pageToken) => fleet.listSnapshots({ pageSize: 3, pageToken }));
      assert.equal(pages.length, 3);
      assert.deepEqual(pages.flatMap((p) => p.snapshots.map((s) => `${s.host}/${s.id}`)), [...Array.from({ length: 7 }, (_, k) => `h1/s${k}`), "h2/x"]);
      assert.ok(pages.every((p) => p.cursor === view.cursor && p.hosts.length === 2));
      const ofA = await fleet.listSnapshots({ instanceIds: ["a"], hosts: ["h1"] });
      assert.deepEqual(ofA.snapshots.map((s) => s.id), ["s1", "s3", "s5"]);
      const invalid = (field: RegExp) => (e: unknown) => e instanceof ConnectError && e.code === Code.InvalidArgument && field.test(e.rawMessage);
      await assert.rejects(fleet.listSnapshots({ instanceIds: ["ok", "not ok"] }), invalid(/^instance_ids\[1\]: /));
      await assert.rejects(fleet.listSnapshots({ pageSize: -1 }), invalid(/^page_size: /));
      await assert.rejects(fleet.listSnapshots({ hosts: ["nope"] }), (e: unknown) => e instanceof ConnectError && e.code === Code.NotFound);
      const watch = async (req: object) => {
        for await (const _ of fleet.watchInstances(req)) return;
      };
      await assert.rejects(watch({ snapshotInstanceIds: ["a"] }), invalid(/^snapshot_instance_ids: applies to snapshots: set include_snapshots too/));
      await assert.rejects(watch({ includeSnapshots: true, snapshotInstanceIds: ["bad id"] }), invalid(/^snapshot_instance_ids\[0\]: /));
      await assert.rejects(fleet.resyncHost({ name: "" }), invalid(/^name: /));
      await assert.rejects(fleet.resyncHost({ name: "h1" }), (e: unknown) => e instanceof ConnectError && e.code === Code.FailedPrecondition, "no follower: nothing to relist with");
    } finally {
      transport.close();
      await server.close(1000);
    }
  });
});
