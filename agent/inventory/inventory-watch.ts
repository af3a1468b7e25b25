import { create } from "@bufbuild/protobuf";
import { durationMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  InstanceEventSchema,
  InstanceEventType,
  type InstanceEvent,
  type WatchInstancesRequest,
  type WatchInstancesResponse,
  WatchInstancesResponseSchema,
} from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { invalidArgument } from "../../lib/rpc/field-error.js";
import { followSource } from "../../lib/rpc/follow-source.js";
import type { InventoryFeed } from "./inventory-feed.js";

const DEFAULT_BOOKMARK_MS = 5000;
const MIN_BOOKMARK_MS = 100;
const MAX_BOOKMARK_MS = 3_600_000;
/** Events per message: far below gRPC's 4 MiB default limit even for large instances. */
const PAGE = 1000;

/**
 * WatchInstances (inventory.md): changes after the client's version, in order, paged, then live
 * ones, with a BOOKMARK (version, incarnation, digest) whenever the stream has caught up and
 * none was sent for `bookmark_interval` — also at the end of the first message, so a client
 * knows at once where it stands. Reads from the feed's ring with its own cursor (no queue per
 * stream): a client slower than the ring is ended with OUT_OF_RANGE, never skipped ahead.
 */
export async function* watchInventory(feed: InventoryFeed, req: WatchInstancesRequest, signal: AbortSignal): AsyncGenerator<WatchInstancesResponse> {
  let bookmarkMs = DEFAULT_BOOKMARK_MS;
  if (req.bookmarkInterval) {
    bookmarkMs = durationMs(req.bookmarkInterval);
    if (!(bookmarkMs >= MIN_BOOKMARK_MS && bookmarkMs <= MAX_BOOKMARK_MS)) throw invalidArgument("bookmark_interval", `must be between 100ms and 1h, got ${bookmarkMs} ms`);
  }
  let cursor: number;
  // The current state first (a watch without version): sent as ADDED events, paged.
  let initial: InstanceEvent[] = [];
  if (req.resourceVersion === 0n && req.incarnation === "") {
    cursor = feed.version;
    initial = feed.list().map((instance) => create(InstanceEventSchema, { type: InstanceEventType.ADDED, instance, resourceVersion: instance.resourceVersion }));
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
    const events = initial.slice(0, PAGE);
    initial = initial.slice(events.length);
    if (initial.length > 0) return create(WatchInstancesResponseSchema, { events });
    const changes = feed.changesAfter(cursor, PAGE - events.length);
    if (!changes) throw new ConnectError(`this watch fell behind: changes after resource_version ${cursor} are no longer kept (oldest ${feed.oldestResumable}): relist`, Code.OutOfRange);
    for (const { seq, item } of changes) {
      events.push(create(InstanceEventSchema, { type: item.type, instance: item.instance, resourceVersion: BigInt(seq) }));
      cursor = seq;
    }
    const now = performance.now();
    // A bookmark describes the state at `cursor`: only once the stream has caught up.
    if (cursor === feed.version && (lastBookmark === undefined || now - lastBookmark >= bookmarkMs)) {
      events.push(create(InstanceEventSchema, { type: InstanceEventType.BOOKMARK, resourceVersion: BigInt(cursor), incarnation: feed.incarnation, digest: feed.digest() }));
      lastBookmark = now;
    }
    if (events.length === 0) return undefined;
    return create(WatchInstancesResponseSchema, { events });
  });
}
