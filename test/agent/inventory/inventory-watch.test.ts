import { afterEach, beforeEach, describe, it } from "vitest";
import assert from "node:assert/strict";
import { mkdirSync, rmSync } from "node:fs";
import { create, equals, toBinary } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  InstanceEventType,
  InstanceSchema,
  InstanceState,
  SnapshotSchema,
  WatchInstancesRequestSchema,
  WatchInstancesResponseSchema,
  type Instance,
  type InstanceEvent,
  type Snapshot,
  type WatchInstancesResponse,
} from "../../../gen/fleetlet/agent/v1/inventory_pb.js";
import { InstanceRegistry } from "../../../agent/inventory/instance-registry.js";
import { validateInstance } from "../../../agent/inventory/instance-validation.js";
import { watchInventory } from "../../../agent/inventory/inventory-watch.js";
import { inventoryDigest } from "../../../lib/inventory-digest.js";
import { prng } from "../../helpers/random-message.js";
import { tempDir } from "../../helpers/temp-dir.js";

let dir: ReturnType<typeof tempDir>;
beforeEach(() => (dir = tempDir("inventory-watch")));
afterEach(() => dir.remove());

const inst = (id: string, extra: object = {}) => validateInstance(create(InstanceSchema, { id, ...extra }), { tapPrefix: "fl-" });

/** Events of a watch until (and including) the first BOOKMARK at `untilVersion`. */
async function watchUntil(r: InstanceRegistry, req: object, untilVersion: bigint): Promise<InstanceEvent[]> {
  const abort = new AbortController();
  const events: InstanceEvent[] = [];
  try {
    for await (const m of watchInventory(r.feed, create(WatchInstancesRequestSchema, req), abort.signal)) {
      events.push(...m.events);
      if (m.events.some((e) => e.type === InstanceEventType.BOOKMARK && e.resourceVersion === untilVersion)) return events;
    }
  } finally {
    abort.abort();
  }
  return events;
}

function applyEvents(view: Map<string, Instance>, events: InstanceEvent[], snapshots?: Map<string, Snapshot>): void {
  for (const e of events) {
    if (e.type === InstanceEventType.BOOKMARK) continue;
    if (e.snapshot) {
      assert.ok(snapshots, `a snapshot event (${e.snapshot.id}) in a watch that did not ask for snapshots`);
      assert.equal(e.instance, undefined, "a snapshot event carries no instance");
      if (e.type === InstanceEventType.DELETED) snapshots.delete(e.snapshot.id);
      else snapshots.set(e.snapshot.id, e.snapshot);
      continue;
    }
    if (e.type === InstanceEventType.ADDED || e.type === InstanceEventType.MODIFIED) view.set(e.instance!.id, e.instance!);
    else if (e.type === InstanceEventType.DELETED) view.delete(e.instance!.id);
  }
}

const snapshot = (r: InstanceRegistry) => new Map(r.feed.list().map((i) => [i.id, i]));
const snapshotsOf = (r: InstanceRegistry) => new Map(r.feed.listSnapshots().map((s) => [s.id, s]));

function assertSameView(a: Map<string, Instance>, b: Map<string, Instance>, what: string): void {
  assert.deepEqual([...a.keys()].sort(), [...b.keys()].sort(), `${what}: ids`);
  for (const [id, i] of a) assert.ok(equals(InstanceSchema, i, b.get(id)!), `${what}: ${id} differs`);
}

function assertSameSnapshots(a: Map<string, Snapshot>, b: Map<string, Snapshot>, what: string): void {
  assert.deepEqual([...a.keys()].sort(), [...b.keys()].sort(), `${what}: snapshot ids`);
  for (const [id, s] of a) assert.ok(equals(SnapshotSchema, s, b.get(id)!), `${what}: snapshot ${id} differs`);
}

describe("WatchInstances on the agent", () => {
  it("a watch from every version kept, applied to the list at that version, equals a fresh list (instances and snapshots)", async () => {
    const r = InstanceRegistry.open(dir.path);
    const rand = prng(7);
    const lists = new Map<bigint, { instances: Map<string, Instance>; snapshots: Map<string, Snapshot> }>([[r.resourceVersion, { instances: snapshot(r), snapshots: snapshotsOf(r) }]]);
    let snapshotChanges = 0;
    for (let step = 0; step < 200; step++) {
      const id = `vm${Math.floor(rand() * 12)}`;
      const roll = rand();
      // Sometimes several changes in one tick: one commit, their net effect per instance.
      const burst = roll < 0.2 ? 3 : 1;
      const ops: Promise<unknown>[] = [];
      for (let k = 0; k < burst; k++) {
        const target = k === 0 ? id : `vm${Math.floor(rand() * 12)}`;
        const current = r.get(target);
        const snapshotTurn = rand() < 0.25;
        if (snapshotTurn) {
          // Snapshots of the instance come and go (seed 003: part of the versioned inventory).
          const snapId = `snap-${target}-${Math.floor(rand() * 2)}`;
          if (r.feed.getSnapshot(snapId)) ops.push(r.removeSnapshot(snapId).catch(() => undefined));
          else ops.push(r.registerSnapshot(create(SnapshotSchema, { id: snapId, instanceId: target, hypervisor: "cloud-hypervisor", storageBytes: 1024n })).catch(() => undefined));
          snapshotChanges++;
        } else if (!current) ops.push(r.upsert(inst(target, { name: `n${step}` })));
        else if (rand() < 0.25) ops.push(r.remove(target).catch(() => undefined));
        else if (rand() < 0.5) ops.push(r.setState(target, rand() < 0.5 ? InstanceState.RUNNING : InstanceState.STOPPED));
        else ops.push(r.upsert(inst(target, { name: current.name }))); // identical rewrite
      }
      await Promise.all(ops);
      lists.set(r.resourceVersion, { instances: snapshot(r), snapshots: snapshotsOf(r) });
    }
    const fresh = snapshot(r);
    const freshSnapshots = snapshotsOf(r);
    assert.ok(lists.size > 80, `${lists.size} distinct versions: too little churn to test anything`);
    assert.ok(snapshotChanges > 20 && freshSnapshots.size > 0, `${snapshotChanges} snapshot changes, ${freshSnapshots.size} left`);
    let snapshotEvents = 0;
    for (const [version, list] of lists) {
      // With snapshots: the whole inventory; without: exactly the instances, as before.
      const events = await watchUntil(r, { resourceVersion: version, incarnation: r.incarnation, includeSnapshots: true }, r.resourceVersion);
      const view = new Map(list.instances);
      const snaps = new Map(list.snapshots);
      applyEvents(view, events, snaps);
      assertSameView(view, fresh, `from version ${version}`);
      assertSameSnapshots(snaps, freshSnapshots, `from version ${version}`);
      snapshotEvents += events.filter((e) => e.snapshot).length;
      const versions = events.filter((e) => e.type !== InstanceEventType.BOOKMARK).map((e) => e.resourceVersion);
      assert.deepEqual(versions, [...versions].sort((a, b) => (a < b ? -1 : 1)), "in version order");
      assert.equal(new Set(versions).size, versions.length, "one version per change, instances and snapshots in one sequence");
      assert.ok(versions.every((v) => v > version), "nothing at or before the version asked for");
      const bookmark = events.at(-1)!;
      assert.deepEqual({ count: bookmark.digest!.count, hash: bookmark.digest!.hash }, inventoryDigest(fresh.values(), freshSnapshots.values()), "the bookmark's digest covers the snapshots");
      const old = await watchUntil(r, { resourceVersion: version, incarnation: r.incarnation }, r.resourceVersion);
      const oldView = new Map(list.instances);
      applyEvents(oldView, old);
      assertSameView(oldView, fresh, `from version ${version}, instances only`);
      assert.deepEqual({ count: old.at(-1)!.digest!.count, hash: old.at(-1)!.digest!.hash }, inventoryDigest(fresh.values()), "an instances-only watch keeps the instances-only digest");
    }
    assert.ok(snapshotEvents > 0, "snapshot changes came as events");
    // A watch without version: the current instances, then the current snapshots, as ADDED.
    const initial = await watchUntil(r, { includeSnapshots: true }, r.resourceVersion);
    const view = new Map<string, Instance>();
    const snaps = new Map<string, Snapshot>();
    applyEvents(view, initial, snaps);
    assertSameView(view, fresh, "the current state");
    assertSameSnapshots(snaps, freshSnapshots, "the current state");
  });

  it("snapshot changes take versions in the feed, kept across a restart; an identical re-registration takes none", async () => {
    const r = InstanceRegistry.open(dir.path);
    await r.upsert(inst("a"));
    const registered = await r.registerSnapshot(create(SnapshotSchema, { id: "s1", instanceId: "a", storageBytes: 5n }));
    assert.equal(registered.resourceVersion, 2n);
    assert.equal(r.resourceVersion, 2n);
    await r.registerSnapshot(create(SnapshotSchema, { id: "s1", instanceId: "a", storageBytes: 5n }));
    assert.equal(r.resourceVersion, 2n, "the same snapshot again is no change");
    await r.registerSnapshot(create(SnapshotSchema, { id: "s2", instanceId: "a", storageBytes: 7n }));
    const removed = await r.removeSnapshot("s1");
    assert.equal(removed.resourceVersion, 2n, "the removal answers the snapshot as it was");
    assert.equal(r.resourceVersion, 4n);
    assert.deepEqual(
      r.feed.changesAfter(1)!.map((c) => `${InstanceEventType[c.item.type]}:${c.item.snapshot?.id}@${c.seq}`),
      ["ADDED:s1@2", "ADDED:s2@3", "DELETED:s1@4"],
    );
    r.close();
    const again = InstanceRegistry.open(dir.path);
    assert.equal(again.resourceVersion, 4n);
    assert.deepEqual(again.feed.listSnapshots().map((s) => `${s.id}@${s.resourceVersion}`), ["s2@3"]);
    assert.deepEqual(again.feed.digest(true), inventoryDigest(again.feed.list(), again.feed.listSnapshots()));
    again.close();
  });

  it("without a version: the current state as ADDED events, then a BOOKMARK; then live changes", async () => {
    const r = InstanceRegistry.open(dir.path);
    await r.upsert(inst("a"));
    await r.upsert(inst("b"));
    const abort = new AbortController();
    const it = watchInventory(r.feed, create(WatchInstancesRequestSchema, {}), abort.signal);
    const first = (await it.next()).value as WatchInstancesResponse;
    assert.deepEqual(first.events.map((e: InstanceEvent) => `${InstanceEventType[e.type]}:${e.instance?.id ?? ""}@${e.resourceVersion}`), ["ADDED:a@1", "ADDED:b@2", "BOOKMARK:@2"]);
    await r.setState("a", InstanceState.RUNNING);
    const next = (await it.next()).value as WatchInstancesResponse;
    assert.deepEqual(next.events.map((e: InstanceEvent) => `${InstanceEventType[e.type]}:${e.instance?.id ?? ""}@${e.resourceVersion}`), ["MODIFIED:a@3"]);
    abort.abort();
    await it.return(undefined);
  });

  it("pages the state by bytes, lazily: every page at most ~32 KiB, the state as it was when the watch began, changes during paging after it", async () => {
    const r = InstanceRegistry.open(dir.path);
    const labels = Object.fromEntries(Array.from({ length: 4 }, (_, k) => [`example.com/l-${k}`, "x".repeat(240)]));
    await Promise.all(Array.from({ length: 300 }, (_, k) => r.upsert(inst(`vm-${String(k).padStart(3, "0")}`, { labels }))));
    const startVersion = r.resourceVersion;
    const abort = new AbortController();
    const it = watchInventory(r.feed, create(WatchInstancesRequestSchema, {}), abort.signal);
    const sizes: number[] = [];
    const added: string[] = [];
    const later: string[] = [];
    let first = true;
    try {
      for (;;) {
        const m = (await it.next()).value as WatchInstancesResponse;
        sizes.push(toBinary(WatchInstancesResponseSchema, m).length);
        for (const e of m.events) {
          if (e.type === InstanceEventType.BOOKMARK) continue;
          (e.resourceVersion <= startVersion ? added : later).push(`${InstanceEventType[e.type]}:${e.instance!.id}`);
        }
        if (first) {
          // Changes while the state is being paged: not in the state, delivered after it.
          first = false;
          await r.remove("vm-299");
          await r.upsert(inst("vm-new"));
        }
        if (m.events.some((e) => e.type === InstanceEventType.BOOKMARK && e.resourceVersion === r.resourceVersion)) break;
      }
    } finally {
      abort.abort();
      await it.return(undefined);
    }
    assert.deepEqual(added, Array.from({ length: 300 }, (_, k) => `ADDED:vm-${String(k).padStart(3, "0")}`));
    assert.deepEqual(later, ["DELETED:vm-299", "ADDED:vm-new"]);
    // 300 instances of ~1.1 KB: one page of 1,000 events held all of them (~330 KB) before.
    assert.ok(sizes.length >= 10, `${sizes.length} pages`);
    for (const size of sizes) assert.ok(size <= 32 * 1024 + 2048, `a page of ${size} bytes`);
  });

  it("OUT_OF_RANGE for an expired version, a version ahead, another incarnation; INVALID_ARGUMENT for a bad bookmark_interval", async () => {
    const r = InstanceRegistry.open(dir.path, undefined, { watchHistory: 5 });
    for (let i = 0; i < 10; i++) await r.upsert(inst(`vm${i}`));
    const outOfRange = (e: unknown, re: RegExp) => e instanceof ConnectError && e.code === Code.OutOfRange && re.test(e.rawMessage);
    await assert.rejects(watchUntil(r, { resourceVersion: 4n, incarnation: r.incarnation }, 10n), (e: unknown) => outOfRange(e, /older than the oldest change kept \(5\): relist/));
    assert.equal((await watchUntil(r, { resourceVersion: 5n, incarnation: r.incarnation }, 10n)).length, 6, "5 changes + bookmark: still kept");
    await assert.rejects(watchUntil(r, { resourceVersion: 11n, incarnation: r.incarnation }, 10n), (e: unknown) => outOfRange(e, /ahead of the agent's 10/));
    await assert.rejects(watchUntil(r, { resourceVersion: 9n, incarnation: "0123456789abcdef" }, 10n), (e: unknown) => outOfRange(e, /not the agent's current incarnation .* \(the agent restarted\)/));
    // A restarted agent: same versions, new incarnation.
    const restarted = InstanceRegistry.open(dir.path);
    assert.equal(restarted.resourceVersion, 10n);
    await assert.rejects(watchUntil(restarted, { resourceVersion: 9n, incarnation: r.incarnation }, 10n), (e: unknown) => outOfRange(e, /the agent restarted/));
    await assert.rejects(
      watchUntil(r, { resourceVersion: 9n, incarnation: r.incarnation, bookmarkInterval: durationFromMs(10) }, 10n),
      (e) => e instanceof ConnectError && e.code === Code.InvalidArgument && /^bookmark_interval: must be between 100ms and 1h/.test(e.rawMessage),
    );
  });

  it("identical rewrites produce no event and no new version", async () => {
    const r = InstanceRegistry.open(dir.path);
    await r.upsert(inst("a", { labels: { x: "1" } }));
    const v = r.resourceVersion;
    const abort = new AbortController();
    const seen: InstanceEvent[] = [];
    const done = (async () => {
      for await (const m of watchInventory(r.feed, create(WatchInstancesRequestSchema, { resourceVersion: v, incarnation: r.incarnation, bookmarkInterval: durationFromMs(100) }), abort.signal)) seen.push(...m.events);
    })();
    await r.upsert(inst("a", { labels: { x: "1" } }));
    await r.setState("a", r.get("a")!.state);
    await new Promise((res) => setTimeout(res, 300));
    abort.abort();
    await done;
    assert.equal(r.resourceVersion, v);
    assert.deepEqual(seen.filter((e) => e.type !== InstanceEventType.BOOKMARK), []);
    assert.ok(seen.filter((e) => e.type === InstanceEventType.BOOKMARK).length >= 2, "bookmarks keep coming while nothing changes");
  });

  it("a change that fails to persist is never published", async () => {
    const r = InstanceRegistry.open(dir.path);
    await r.upsert(inst("a"));
    const v = r.resourceVersion;
    rmSync(dir.path, { recursive: true, force: true });
    await assert.rejects(r.upsert(inst("b")));
    assert.equal(r.resourceVersion, v);
    assert.deepEqual(r.feed.list().map((i) => i.id), ["a"]);
    assert.deepEqual(r.feed.changesAfter(Number(v)), []);
    mkdirSync(dir.path);
    await r.upsert(inst("b"));
    assert.deepEqual(r.feed.changesAfter(Number(v))!.map((c) => `${InstanceEventType[c.item.type]}:${c.item.instance!.id}`), ["ADDED:b"]);
  });
});
