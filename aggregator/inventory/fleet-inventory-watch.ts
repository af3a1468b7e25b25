import { create } from "@bufbuild/protobuf";
import {
  FleetEventType,
  FleetInstanceEventSchema,
  WatchInstancesResponseSchema,
  type FleetInstanceEvent,
  type WatchInstancesResponse,
} from "../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { splitCursor } from "../../lib/event-ring.js";
import { invalidArgument } from "../../lib/rpc/field-error.js";
import { followSource } from "../../lib/rpc/follow-source.js";
import { matches, type FleetChange, type InstanceFilter, type MergedView } from "./merged-view.js";

/** Events per message (well below gRPC's 4 MiB default even for large instances). */
const PAGE = 1000;

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
 */
export async function* watchFleetInventory(view: MergedView, cursorText: string, filter: InstanceFilter, signal: AbortSignal): AsyncGenerator<WatchInstancesResponse> {
  const cursorOf = (seq: number) => `${view.incarnation}.${seq}`;
  let seq: number;
  let initial: FleetInstanceEvent[] = [];
  if (cursorText === "") {
    seq = view.lastSeq;
    const cursor = cursorOf(seq);
    for (const hostSync of view.hostSyncs(filter.hosts as ReadonlySet<string> | undefined)) initial.push(create(FleetInstanceEventSchema, { type: FleetEventType.HOST_SYNC, hostSync, cursor }));
    for (const instance of view.list(filter)) initial.push(create(FleetInstanceEventSchema, { type: FleetEventType.ADDED, instance, cursor }));
    initial.push(create(FleetInstanceEventSchema, { type: FleetEventType.SYNCED, cursor }));
  } else {
    const parsed = parseFleetCursor(view, cursorText);
    if (typeof parsed !== "number") {
      yield resync(parsed.reason);
      return;
    }
    seq = parsed;
  }
  const pages = followSource(signal, (notify) => view.subscribe(notify), (): { response: WatchInstancesResponse; end?: true } | undefined => {
    const events = initial.slice(0, PAGE);
    initial = initial.slice(events.length);
    if (initial.length > 0) return { response: create(WatchInstancesResponseSchema, { events }) };
    const changes = view.changesAfter(seq, PAGE);
    if (!changes) return { response: resync(`this watch fell behind: the changes after ${cursorOf(seq)} are no longer kept (--watch-buffer): relist`), end: true };
    for (const { seq: s, item } of changes) {
      seq = s;
      const e = toEvent(item, filter);
      if (e) events.push(create(FleetInstanceEventSchema, { ...e, cursor: cursorOf(s) }));
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
function toEvent(c: FleetChange, filter: InstanceFilter): Omit<FleetInstanceEvent, "$typeName" | "cursor"> | undefined {
  if (c.type === FleetEventType.HOST_SYNC) {
    if (filter.hosts && !filter.hosts.has(c.hostSync!.host)) return undefined;
    return { type: c.type, hostSync: c.hostSync, reason: "" };
  }
  const now = c.type !== FleetEventType.DELETED && matches(c.instance!, filter);
  const before = c.previous !== undefined && matches(c.previous, filter);
  if (c.type === FleetEventType.DELETED) return before ? { type: FleetEventType.DELETED, instance: c.instance, reason: "" } : undefined;
  if (now && before) return { type: FleetEventType.MODIFIED, instance: c.instance, reason: "" };
  if (now) return { type: FleetEventType.ADDED, instance: c.instance, reason: "" };
  if (before) return { type: FleetEventType.DELETED, instance: c.instance, reason: "" };
  return undefined;
}
