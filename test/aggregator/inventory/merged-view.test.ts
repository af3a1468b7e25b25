import { afterEach, beforeEach, describe, it } from "vitest";
import assert from "node:assert/strict";
import { create, equals, fromBinary, toBinary } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { InstanceKind, InstanceSchema, InstanceState, type Instance } from "../../../gen/fleetlet/agent/v1/inventory_pb.js";
import { ConcernSchema, FleetEventType, FleetInstanceSchema, HostSyncState, ListInstancesResponseSchema, PolicySeverity, WatchInstancesResponseSchema, type WatchInstancesResponse } from "../../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { framedInstance, MergedView } from "../../../aggregator/inventory/merged-view.js";
import { InventoryStore } from "../../../aggregator/inventory/inventory-store.js";
import { watchFleetInventory } from "../../../aggregator/inventory/fleet-inventory-watch.js";
import { tempDir } from "../../helpers/temp-dir.js";

let dir: ReturnType<typeof tempDir>;
beforeEach(() => (dir = tempDir("merged-view")));
afterEach(() => dir.remove());

const inst = (id: string, version: number, extra: object = {}): Instance => create(InstanceSchema, { id, resourceVersion: BigInt(version), state: InstanceState.RUNNING, kind: InstanceKind.VM, ...extra });

/** Messages of a watch until `n` events were seen (or the stream ends). */
async function events(view: MergedView, cursor: string, filter: Parameters<typeof watchFleetInventory>[2], n: number): Promise<string[]> {
  const abort = new AbortController();
  const out: string[] = [];
  const it = watchFleetInventory(view, cursor, filter, abort.signal);
  try {
    while (out.length < n) {
      const next = await it.next();
      if (next.done) break;
      for (const e of (next.value as WatchInstancesResponse).events) out.push(`${FleetEventType[e.type]}${e.instance ? `:${e.instance.host}/${e.instance.id}` : ""}${e.hostSync ? `:${e.hostSync.host}=${HostSyncState[e.hostSync.state]}` : ""}${e.reason ? `:${e.reason}` : ""}`);
    }
  } finally {
    abort.abort();
    await it.return(undefined);
  }
  return out;
}

describe("MergedView", () => {
  it("a relist deletes what vanished, puts what changed, and is silent for a renumbered but equal instance", () => {
    const view = new MergedView(undefined);
    view.replace("h", "inc1", 3, [inst("a", 1), inst("b", 2), inst("c", 3)], 1000);
    const counts = view.replace("h", "inc2", 9, [inst("a", 7), inst("b", 8, { state: InstanceState.STOPPED })], 2000);
    assert.deepEqual(counts, { added: 0, modified: 1, deleted: 1 });
    assert.deepEqual(view.list({}).map((i) => `${i.id}@${i.resourceVersion}:${i.state}`), ["a@7:2", "b@8:4"]);
    const changes = view.changesAfter(0)!.map((c) => `${FleetEventType[c.item.type]}${c.item.instance ? `:${c.item.instance.id}` : ""}`);
    // HOST_SYNC (created LOADING), 3 ADDED, then b MODIFIED and c DELETED — nothing for a.
    assert.deepEqual(changes, ["HOST_SYNC", "ADDED:a", "ADDED:b", "ADDED:c", "MODIFIED:b", "DELETED:c"]);
    assert.deepEqual(view.digest("h"), { count: 2, hash: view.digest("h").hash });
  });

  it("the stored view comes back STALE with its cursor after a restart; a removed host's rows go", () => {
    const store = InventoryStore.open(dir.path);
    const view = new MergedView(store);
    view.replace("h1", "i1", 5, [inst("a", 4, { labels: { team: "x" } }), inst("b", 5)], 1000);
    view.applyChanges("h1", "i1", 6, [inst("c", 6)], ["b"], 2000);
    view.replace("h2", "i2", 1, [inst("z", 1)], 1000);
    view.removeHost("h2");
    store.close();
    const again = InventoryStore.open(dir.path);
    const reloaded = new MergedView(again);
    const h1 = reloaded.host("h1")!;
    assert.deepEqual([h1.state, h1.incarnation, h1.version, h1.lastSeenMs], [HostSyncState.STALE, "i1", 6, 2000]);
    assert.deepEqual(reloaded.list({}).map((i) => `${i.host}/${i.id}@${i.resourceVersion}`), ["h1/a@4", "h1/c@6"]);
    assert.equal(reloaded.list({})[0]!.labels.team, "x");
    assert.equal(reloaded.host("h2"), undefined);
    again.close();
  });

  it("filters: list by host, label, state, kind; a watch turns a move out of its filter into DELETED and a move in into ADDED", async () => {
    const view = new MergedView(undefined);
    view.replace("h1", "i", 2, [inst("a", 1, { labels: { team: "x" } }), inst("b", 2, { kind: InstanceKind.CONTAINER })], 0);
    view.replace("h2", "j", 1, [inst("a", 1)], 0);
    assert.deepEqual(view.list({ labels: { team: "x" } }).map((i) => `${i.host}/${i.id}`), ["h1/a"]);
    assert.deepEqual(view.list({ kinds: new Set([InstanceKind.CONTAINER]) }).map((i) => `${i.host}/${i.id}`), ["h1/b"]);
    assert.deepEqual(view.list({ hosts: new Set(["h2"]) }).map((i) => `${i.host}/${i.id}`), ["h2/a"]);
    const cursor = view.cursor;
    view.applyChanges("h1", "i", 3, [inst("a", 3, { labels: { team: "x" }, state: InstanceState.STOPPED })], [], 0);
    view.applyChanges("h1", "i", 4, [inst("a", 4, { labels: { team: "x" }, state: InstanceState.RUNNING })], [], 0);
    view.applyChanges("h2", "j", 2, [inst("a", 2, { state: InstanceState.STOPPED })], [], 0);
    const running = { states: new Set([InstanceState.RUNNING]) };
    assert.deepEqual(await events(view, cursor, running, 3), ["DELETED:h1/a", "ADDED:h1/a", "DELETED:h2/a"]);
    // From no cursor: the state first (host syncs, matching instances, SYNCED), then live.
    const first = await events(view, "", { hosts: new Set(["h1"]), ...running }, 4);
    assert.deepEqual(first, ["HOST_SYNC:h1=LOADING", "ADDED:h1/a", "ADDED:h1/b", "SYNCED"]);
  });

  it("pages the state by bytes as the client reads: every message at most ~32 KiB, each instance once, then SYNCED", async () => {
    const view = new MergedView(undefined);
    const labels = Object.fromEntries(Array.from({ length: 4 }, (_, k) => [`example.com/l-${k}`, "x".repeat(240)]));
    view.replace("h", "i", 300, Array.from({ length: 300 }, (_, k) => inst(`vm-${String(k).padStart(3, "0")}`, k + 1, { labels })), 0);
    const abort = new AbortController();
    const it = watchFleetInventory(view, "", {}, abort.signal);
    const sizes: number[] = [];
    const seen: string[] = [];
    try {
      while (!seen.includes("SYNCED")) {
        const m = (await it.next()).value as WatchInstancesResponse;
        sizes.push(toBinary(WatchInstancesResponseSchema, m).length);
        for (const e of m.events) seen.push(e.instance ? e.instance.id : FleetEventType[e.type]);
      }
    } finally {
      abort.abort();
      await it.return(undefined);
    }
    assert.deepEqual(seen, ["HOST_SYNC", ...Array.from({ length: 300 }, (_, k) => `vm-${String(k).padStart(3, "0")}`), "SYNCED"]);
    assert.ok(sizes.length >= 10, `${sizes.length} messages`);
    for (const size of sizes) assert.ok(size <= 32 * 1024 + 2048, `a message of ${size} bytes`);
  });

  it("a cursor the ring cannot serve is RESYNC, then the stream ends; a malformed one is INVALID_ARGUMENT", async () => {
    const view = new MergedView(undefined, 4);
    view.replace("h", "i", 1, [inst("a", 1)], 0);
    const old = `${view.incarnation}.0`;
    for (let v = 2; v < 8; v++) view.applyChanges("h", "i", v, [inst("a", v, { name: `n${v}` })], [], 0);
    const got = await events(view, old, {}, 10);
    assert.equal(got.length, 1);
    assert.match(got[0]!, /^RESYNC:this watch fell behind/);
    assert.match((await events(view, "other.1", {}, 10))[0]!, /^RESYNC:the cursor is from another aggregator incarnation/);
    await assert.rejects(events(view, "garbage", {}, 10), /cursor: "garbage" is not a fleet cursor/);
  });
});

describe("MergedView wire form with concerns", () => {
  it("an instance's framed bytes decode to the instance with its concerns, for bodies of 1-, 2- and 3-byte lengths", () => {
    const view = new MergedView(undefined);
    // ~60 bytes, ~300 bytes and ~40,000 bytes of agent data.
    const sizes = [0, 250, 40_000];
    view.applyChanges("h", "inc", 1, sizes.map((n, k) => inst(`i${k}`, 1, { name: "x".repeat(n) })), [], 0);
    sizes.forEach((_, k) => {
      const before = view.host("h")!.instances.get(`i${k}`)!;
      const concerns = Array.from({ length: k + 1 }, (_, c) => create(ConcernSchema, { rule: `rule-${c}`, severity: PolicySeverity.WARNING, message: "m".repeat(c * 100), since: timestampFromMs(1000 + c) }));
      assert.ok(view.setConcerns("h", `i${k}`, before, concerns));
      const after = view.host("h")!.instances.get(`i${k}`)!;
      const decoded = fromBinary(ListInstancesResponseSchema, framedInstance(after));
      assert.equal(decoded.instances.length, 1);
      assert.ok(equals(FleetInstanceSchema, decoded.instances[0]!, after), `instance ${k} decodes to itself`);
      assert.equal(decoded.instances[0]!.concerns.length, k + 1);
    });
  });
});
