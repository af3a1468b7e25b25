import { create } from "@bufbuild/protobuf";
import { durationMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  type Instance,
  InstanceSchema,
  type Snapshot,
  SnapshotSchema,
  InstanceEventSchema,
  InstanceEventType,
  type InstanceEvent,
  type WatchInstancesRequest,
  type WatchInstancesResponse,
  WatchInstancesResponseSchema,
} from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { invalidArgument } from "../../lib/rpc/field-error.js";
import { encodedSize, WATCH_PAGE } from "../../lib/rpc/encoded-size.js";
import { followSource } from "../../lib/rpc/follow-source.js";
import type { InventoryFeed } from "./inventory-feed.js";

const DEFAULT_BOOKMARK_MS = 5000;
const MIN_BOOKMARK_MS = 100;
const MAX_BOOKMARK_MS = 3_600_000;

/**
 * WatchInstances (inventory.md): changes after the client's version, in order, paged, then live
 * ones, with a BOOKMARK (version, incarnation, digest) whenever the stream has caught up and
 * none was sent for `bookmark_interval` — also at the end of the first message, so a client
 * knows at once where it stands. Reads from the feed's ring with its own cursor (no queue per
 * stream): a client slower than the ring is ended with OUT_OF_RANGE, never skipped ahead.
 * The current state is read lazily, a page at a time as the client takes them, from the feed's
 * sorted list at the watch's start (an array the feed never modifies; shared by every watch
 * started at that version): a stream costs one index, not a copy of the inventory.
 * Snapshots (include_snapshots) are part of the same versioned feed: the current ones follow
 * the current instances, their changes come in order with the instances'. A watch without
 * include_snapshots skips them (its cursor still moves past their versions) and its bookmarks
 * carry the instances-only digest, so a client from before snapshots sees what it always did.
 */
export async function* watchInventory(feed: InventoryFeed, req: WatchInstancesRequest, signal: AbortSignal): AsyncGenerator<WatchInstancesResponse> {
  let bookmarkMs = DEFAULT_BOOKMARK_MS;
  if (req.bookmarkInterval) {
    bookmarkMs = durationMs(req.bookmarkInterval);
    if (!(bookmarkMs >= MIN_BOOKMARK_MS && bookmarkMs <= MAX_BOOKMARK_MS)) throw invalidArgument("bookmark_interval", `must be between 100ms and 1h, got ${bookmarkMs} ms`);
  }
  const withSnapshots = req.includeSnapshots;
  let cursor: number;
  // The current state first (a watch without version): sent as ADDED events, paged — the
  // instances, then (include_snapshots) the snapshots, both as they were at the watch's start.
  let snapshot: readonly Instance[] | undefined;
  let snapshots: readonly Snapshot[] | undefined;
  let at = 0;
  let snapshotAt = 0;
  if (req.resourceVersion === 0n && req.incarnation === "") {
    cursor = feed.version;
    snapshot = feed.list();
    if (withSnapshots) snapshots = feed.listSnapshots();
  } else {
    if (req.incarnation !== feed.incarnation) {
      throw new ConnectError(`incarnation ${JSON.stringify(req.incarnation.slice(0, 40))} is not the agent's current incarnation ${feed.incarnation} (the agent restarted): relist`, Code.OutOfRange);
    }
    const v = Number(req.resourceVersion);
    if (v > feed.version) throw new ConnectError(`resource_version ${v} is ahead of the agent's ${feed.version}: relist`, Code.OutOfRange);
    if (v < feed.oldestResumable) throw new ConnectError(`resource_version ${v} is older than the oldest change kept (${feed.oldestResumable}): relist`, Code.OutOfRange);
    cursor = v;
  }
  let lastBookmark: number | undefined;
  const subscribe = (notify: () => void) => {
    const unsubscribe = feed.subscribe(notify);
    // Wakes the loop so a quiet stream still gets its bookmarks.
    const timer = setInterval(notify, Math.max(MIN_BOOKMARK_MS / 4, bookmarkMs / 4));
    return () => {
      unsubscribe();
      clearInterval(timer);
    };
  };
  yield* followSource(signal, subscribe, () => {
    const events: InstanceEvent[] = [];
    let bytes = 0;
    const full = () => events.length >= WATCH_PAGE.events || bytes >= WATCH_PAGE.bytes;
    if (snapshot) {
      while (at < snapshot.length && !full()) {
        const instance = snapshot[at++]!;
        bytes += encodedSize(InstanceSchema, instance);
        events.push(create(InstanceEventSchema, { type: InstanceEventType.ADDED, instance, resourceVersion: instance.resourceVersion }));
      }
      if (at < snapshot.length) return create(WatchInstancesResponseSchema, { events });
      snapshot = undefined;
    }
    if (snapshots) {
      while (snapshotAt < snapshots.length && !full()) {
        const s = snapshots[snapshotAt++]!;
        bytes += encodedSize(SnapshotSchema, s);
        events.push(create(InstanceEventSchema, { type: InstanceEventType.ADDED, snapshot: s, resourceVersion: s.resourceVersion }));
      }
      if (snapshotAt < snapshots.length) return create(WatchInstancesResponseSchema, { events });
      snapshots = undefined;
    }
    // Until the page is full or the stream caught up: changes this watch skips (snapshots, when
    // not asked for) must not leave it short of a page while more are waiting.
    while (!full() && cursor < feed.version) {
      const changes = feed.changesAfter(cursor, WATCH_PAGE.events - events.length);
      if (!changes) throw new ConnectError(`this watch fell behind: changes after resource_version ${cursor} are no longer kept (oldest ${feed.oldestResumable}): relist`, Code.OutOfRange);
      for (const { seq, item } of changes) {
        if (full()) break;
        cursor = seq;
        if (item.snapshot) {
          if (!withSnapshots) continue;
          bytes += encodedSize(SnapshotSchema, item.snapshot);
          events.push(create(InstanceEventSchema, { type: item.type, snapshot: item.snapshot, resourceVersion: BigInt(seq) }));
          continue;
        }
        bytes += encodedSize(InstanceSchema, item.instance);
        events.push(create(InstanceEventSchema, { type: item.type, instance: item.instance, resourceVersion: BigInt(seq) }));
      }
    }
    const now = performance.now();
    // A bookmark describes the state at `cursor`: only once the stream has caught up.
    if (cursor === feed.version && (lastBookmark === undefined || now - lastBookmark >= bookmarkMs)) {
      events.push(create(InstanceEventSchema, { type: InstanceEventType.BOOKMARK, resourceVersion: BigInt(cursor), incarnation: feed.incarnation, digest: feed.digest(withSnapshots) }));
      lastBookmark = now;
    }
    if (events.length === 0) return undefined;
    return create(WatchInstancesResponseSchema, { events });
  });
}
