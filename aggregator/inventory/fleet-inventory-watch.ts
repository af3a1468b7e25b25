import { create } from "@bufbuild/protobuf";
import {
  type FleetInstance,
  FleetInstanceSchema,
  type FleetSnapshot,
  FleetSnapshotSchema,
  FleetEventType,
  FleetInstanceEventSchema,
  WatchInstancesResponseSchema,
  type FleetInstanceEvent,
  type WatchInstancesResponse,
} from "../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { splitCursor } from "../../lib/event-ring.js";
import { invalidArgument } from "../../lib/rpc/field-error.js";
import { encodedSize, WATCH_PAGE } from "../../lib/rpc/encoded-size.js";
import { followSource } from "../../lib/rpc/follow-source.js";
import { matches, snapshotMatches, type FleetChange, type InstanceFilter, type MergedView, type SnapshotFilter } from "./merged-view.js";

/** A cursor of another aggregator incarnation, older than what is kept, or malformed. */
export interface CursorProblem {
  reason: string;
}

/** The fleet seq a cursor stands for, or why it cannot be served; INVALID_ARGUMENT if it is not one. */
export function parseFleetCursor(view: MergedView, cursor: string): number | CursorProblem {
  const parsed = splitCursor(cursor);
  if (!parsed) throw invalidArgument("cursor", `${JSON.stringify(cursor.slice(0, 80))} is not a fleet cursor ("<incarnation>.<seq>" from ListInstances or an event)`);
  const { incarnation, seq } = parsed;
  if (incarnation !== view.incarnation) return { reason: "the cursor is from another aggregator incarnation (it restarted): relist" };
  if (seq > view.lastSeq) return { reason: `the cursor ${seq} is ahead of the newest change ${view.lastSeq}: relist` };
  return seq;
}

/**
 * FleetService.WatchInstances: the current state first when there is no cursor (HOST_SYNC per
 * host, ADDED per matching instance, then SYNCED with the cursor), then every change after the
 * cursor, paged, each with its own cursor. Reads the view's ring with its own position (no
 * queue per client): a client that falls behind the ring, or brings a cursor the ring cannot
 * serve, gets RESYNC with the reason and the stream ends. Filters apply per event; an instance
 * that moves out of the filter is DELETED for this client, one that moves in is ADDED.
 * Pages are cut by count and bytes (WATCH_PAGE); the state is turned into events a page at a
 * time as the client takes them (the stream holds the matching instances' references only).
 * Snapshots (`snapshots` given: the request's include_snapshots) come the same way, after the
 * instances in the current state, filtered by their own filter; a watch without them never
 * sees a snapshot's change (an older client gets no event without `instance`).
 */
export async function* watchFleetInventory(
  view: MergedView,
  cursorText: string,
  filter: InstanceFilter,
  signal: AbortSignal,
  snapshots?: SnapshotFilter,
): AsyncGenerator<WatchInstancesResponse> {
  const cursorOf = (seq: number) => `${view.incarnation}.${seq}`;
  let seq: number;
  // The state first, when there is no cursor: HOST_SYNCs, then ADDED per instance (and
  // snapshot), then SYNCED.
  let initial: { hostSyncs: FleetInstanceEvent[]; instances: readonly FleetInstance[]; at: number; snapshots: readonly FleetSnapshot[]; snapshotAt: number; cursor: string } | undefined;
  if (cursorText === "") {
    seq = view.lastSeq;
    const cursor = cursorOf(seq);
    const hostSyncs = view.hostSyncs(filter.hosts as ReadonlySet<string> | undefined).map((hostSync) => create(FleetInstanceEventSchema, { type: FleetEventType.HOST_SYNC, hostSync, cursor }));
    initial = { hostSyncs, instances: view.list(filter), at: 0, snapshots: snapshots ? view.listSnapshots(snapshots) : [], snapshotAt: 0, cursor };
  } else {
    const parsed = parseFleetCursor(view, cursorText);
    if (typeof parsed !== "number") {
      yield resync(parsed.reason);
      return;
    }
    seq = parsed;
  }
  const pages = followSource(signal, (notify) => view.subscribe(notify), (): { response: WatchInstancesResponse; end?: true } | undefined => {
    const events: FleetInstanceEvent[] = [];
    let bytes = 0;
    const full = () => events.length >= WATCH_PAGE.events || bytes >= WATCH_PAGE.bytes;
    if (initial) {
      // Host syncs are one per host, small: all in the first page.
      events.push(...initial.hostSyncs);
      initial.hostSyncs = [];
      while (initial.at < initial.instances.length && !full()) {
        const instance = initial.instances[initial.at++]!;
        bytes += encodedSize(FleetInstanceSchema, instance);
        events.push(create(FleetInstanceEventSchema, { type: FleetEventType.ADDED, instance, cursor: initial.cursor }));
      }
      if (initial.at < initial.instances.length) return { response: create(WatchInstancesResponseSchema, { events }) };
      while (initial.snapshotAt < initial.snapshots.length && !full()) {
        const snapshot = initial.snapshots[initial.snapshotAt++]!;
        bytes += encodedSize(FleetSnapshotSchema, snapshot);
        events.push(create(FleetInstanceEventSchema, { type: FleetEventType.ADDED, snapshot, cursor: initial.cursor }));
      }
      if (initial.snapshotAt < initial.snapshots.length) return { response: create(WatchInstancesResponseSchema, { events }) };
      events.push(create(FleetInstanceEventSchema, { type: FleetEventType.SYNCED, cursor: initial.cursor }));
      initial = undefined;
    }
    if (!full()) {
      const changes = view.changesAfter(seq, WATCH_PAGE.events - events.length);
      // What this page already holds goes out first; the next call says RESYNC.
      if (!changes && events.length > 0) return { response: create(WatchInstancesResponseSchema, { events }) };
      if (!changes) return { response: resync(`this watch fell behind: the changes after ${cursorOf(seq)} are no longer kept (--watch-buffer): relist`), end: true };
      for (const { seq: s, item } of changes) {
        if (full()) break;
        seq = s;
        const e = toEvent(item, filter, snapshots);
        if (!e) continue;
        if (e.instance) bytes += encodedSize(FleetInstanceSchema, e.instance);
        if (e.snapshot) bytes += encodedSize(FleetSnapshotSchema, e.snapshot);
        events.push(create(FleetInstanceEventSchema, { ...e, cursor: cursorOf(s) }));
      }
    }
    return events.length > 0 ? { response: create(WatchInstancesResponseSchema, { events }) } : undefined;
  });
  for await (const page of pages) {
    yield page.response;
    if (page.end) return;
  }
}

function resync(reason: string): WatchInstancesResponse {
  return create(WatchInstancesResponseSchema, { events: [create(FleetInstanceEventSchema, { type: FleetEventType.RESYNC, reason })] });
}

/** What a filtered client sees of one change (undefined: nothing). */
function toEvent(c: FleetChange, filter: InstanceFilter, snapshots: SnapshotFilter | undefined): Omit<FleetInstanceEvent, "$typeName" | "cursor"> | undefined {
  if (c.type === FleetEventType.HOST_SYNC) {
    if (filter.hosts && !filter.hosts.has(c.hostSync!.host)) return undefined;
    return { type: c.type, hostSync: c.hostSync, reason: "" };
  }
  if (c.snapshot) {
    // A snapshot's host and instance never change: it matches for its whole life or never.
    if (!snapshots || !snapshotMatches(c.snapshot, snapshots)) return undefined;
    return { type: c.type, snapshot: c.snapshot, reason: "" };
  }
  const now = c.type !== FleetEventType.DELETED && matches(c.instance!, filter);
  const before = c.previous !== undefined && matches(c.previous, filter);
  if (c.type === FleetEventType.DELETED) return before ? { type: FleetEventType.DELETED, instance: c.instance, reason: "" } : undefined;
  if (now && before) return { type: FleetEventType.MODIFIED, instance: c.instance, reason: "" };
  if (now) return { type: FleetEventType.ADDED, instance: c.instance, reason: "" };
  if (before) return { type: FleetEventType.DELETED, instance: c.instance, reason: "" };
  return undefined;
}
