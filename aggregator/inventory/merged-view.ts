import { randomBytes } from "node:crypto";
import { create, equals, toBinary } from "@bufbuild/protobuf";
import { BinaryWriter, WireType } from "@bufbuild/protobuf/wire";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import type { HostInfo, Instance, InstanceKind, InstanceState, Snapshot } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import {
  FleetEventType,
  FleetInstanceSchema,
  FleetSnapshotSchema,
  HostSyncSchema,
  HostSyncState,
  ConcernSchema,
  type Concern,
  type FleetInstance,
  type PolicySeverity,
  type FleetSnapshot,
  type HostSync,
} from "../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { EventRing } from "../../lib/event-ring.js";
import { inventoryDigest } from "../../lib/inventory-digest.js";
import type { InventoryStore } from "./inventory-store.js";

/** One host's part of the merged view. */
export interface HostView {
  readonly name: string;
  state: HostSyncState;
  /** The agent incarnation and resource_version the instances below reflect ("" = none yet). */
  incarnation: string;
  version: number;
  lastSeenMs: number | undefined;
  lastError: string;
  relists: number;
  digestMismatches: number;
  readonly instances: Map<string, FleetInstance>;
  sorted: FleetInstance[] | undefined;
  readonly snapshots: Map<string, FleetSnapshot>;
  sortedSnapshots: FleetSnapshot[] | undefined;
  /** What the agent last reported of its host (GetHostInfo); undefined before, or from an agent without it. */
  info: HostInfo | undefined;
}

/** One change of the merged view, as kept for WatchInstances. */
export interface FleetChange {
  type: FleetEventType;
  instance?: FleetInstance;
  /** MODIFIED / DELETED: what it was (a filtered watch turns a move out of its filter into DELETED). */
  previous?: FleetInstance;
  hostSync?: HostSync;
  /** A snapshot's change (instead of `instance`): seen only by watches with include_snapshots. */
  snapshot?: FleetSnapshot;
  /** MODIFIED by the policy loop: only the instance's concerns changed (not the agent's data). */
  concernsOnly?: boolean;
}

/** The snapshots applied with a batch or a list: upserted ones, removed ids. */
export interface SnapshotChanges {
  put: Snapshot[];
  del: string[];
}

export interface SnapshotFilter {
  hosts?: ReadonlySet<string>;
  /** The instances the snapshots were taken of (undefined / empty = any). */
  instanceIds?: ReadonlySet<string>;
}

export interface InstanceFilter {
  hosts?: ReadonlySet<string>;
  labels?: Record<string, string>;
  states?: ReadonlySet<InstanceState>;
  kinds?: ReadonlySet<InstanceKind>;
  /** Only instances failing one of these rules. */
  failingRules?: ReadonlySet<string>;
  /** Only instances with a concern of one of these severities. */
  concernSeverities?: ReadonlySet<PolicySeverity>;
}

export const DEFAULT_FLEET_WATCH_BUFFER = 65_536;

/**
 * The aggregator's merged inventory (inventory.md "The aggregator's merged view"): per host,
 * the instances at the agent version they reflect, the host's sync state, and every change
 * numbered in one fleet sequence for WatchInstances (a bounded ring; cursors are
 * "<view incarnation>.<seq>"). Each change is written to the store with the host's cursor
 * first (when there is a store), then applied here: what is served never runs ahead of what a
 * restart would load. Answers come from memory at once; nothing here waits for a host.
 */
export class MergedView {
  readonly incarnation = randomBytes(8).toString("hex");
  private readonly views = new Map<string, HostView>();
  private sortedHosts: HostView[] | undefined;
  private readonly ring: EventRing<FleetChange>;
  private seq = 0;
  private readonly listeners = new Set<() => void>();
  private readonly hostListeners = new Set<(host: string) => void>();

  constructor(
    private readonly store: InventoryStore | undefined,
    capacity = DEFAULT_FLEET_WATCH_BUFFER,
  ) {
    this.ring = new EventRing(capacity);
    // The last-known view of every host, STALE until its follower hears from it again.
    for (const stored of store?.load() ?? []) {
      const view = this.newView(stored.host, HostSyncState.STALE);
      view.incarnation = stored.incarnation;
      view.version = stored.resourceVersion;
      view.lastSeenMs = stored.lastSeenMs;
      view.lastError = "not heard from since the aggregator started";
      for (const i of stored.instances) view.instances.set(i.id, fleetInstance(i, stored.host));
      for (const s of stored.snapshots) view.snapshots.set(s.id, fleetSnapshot(s, stored.host));
    }
  }

  get cursor(): string {
    return `${this.incarnation}.${this.seq}`;
  }

  get lastSeq(): number {
    return this.seq;
  }

  host(name: string): HostView | undefined {
    return this.views.get(name);
  }

  hostNames(): string[] {
    return [...this.views.keys()];
  }

  /** The view of a host, created (LOADING, empty) on first use. */
  ensureHost(name: string): HostView {
    const existing = this.views.get(name);
    if (existing) return existing;
    const view = this.newView(name, HostSyncState.LOADING);
    this.emit([{ type: FleetEventType.HOST_SYNC, hostSync: this.hostSync(view) }]);
    return view;
  }

  /** A host removed from the fleet: its instances leave the view (DELETED each). */
  removeHost(name: string): void {
    const view = this.views.get(name);
    if (!view) return;
    this.store?.removeHost(name);
    this.views.delete(name);
    this.sortedHosts = undefined;
    const changes: FleetChange[] = [...view.instances.values()].map((i) => ({ type: FleetEventType.DELETED, instance: i, previous: i }));
    for (const s of view.snapshots.values()) changes.push({ type: FleetEventType.DELETED, snapshot: s });
    view.state = HostSyncState.UNSPECIFIED;
    view.lastError = "host removed";
    changes.push({ type: FleetEventType.HOST_SYNC, hostSync: this.hostSync(view) });
    this.emit(changes);
    this.hostChanged(name);
  }

  /** Changes a host's sync state (and its reason); a HOST_SYNC event when either changed. */
  setState(name: string, state: HostSyncState, lastError = ""): void {
    const view = this.views.get(name);
    if (!view || (view.state === state && view.lastError === lastError)) return;
    const stateChanged = view.state !== state;
    view.state = state;
    view.lastError = lastError;
    this.emit([{ type: FleetEventType.HOST_SYNC, hostSync: this.hostSync(view) }]);
    if (stateChanged) this.hostChanged(name);
  }

  /** What the agent reported of its host (GetHostInfo), kept in memory; host listeners are told. */
  setHostInfo(name: string, info: HostInfo | undefined): void {
    const view = this.views.get(name);
    if (!view || (view.info === info)) return;
    view.info = info;
    this.hostChanged(name);
  }

  /**
   * The policy loop's findings on an instance (issue 14): a new object with `concerns` (same
   * resource_version, the agent's data untouched), announced as MODIFIED with concernsOnly.
   * Nothing is written to the inventory store (results have their own). False when the instance
   * is no longer there or is not the object the concerns were computed for.
   */
  setConcerns(name: string, id: string, expected: FleetInstance, concerns: Concern[]): boolean {
    const view = this.views.get(name);
    const previous = view?.instances.get(id);
    if (!view || previous !== expected) return false;
    // A shallow copy is a whole message (protobuf-es messages are plain objects); its wire form is
    // the agent's part, already encoded, plus the concerns: only those are encoded here.
    const next: FleetInstance = { ...previous, concerns };
    framedWithConcerns(previous, next);
    view.instances.set(id, next);
    view.sorted = undefined;
    this.emit([{ type: FleetEventType.MODIFIED, instance: next, previous, concernsOnly: true }]);
    return true;
  }

  /** Called with a host's name when its sync state, facts or instances changed, or it was removed. */
  onHostChange(listener: (host: string) => void): () => void {
    this.hostListeners.add(listener);
    return () => this.hostListeners.delete(listener);
  }

  private hostChanged(name: string): void {
    for (const l of this.hostListeners) l(name);
  }

  touch(name: string, nowMs: number): void {
    const view = this.views.get(name);
    if (view) view.lastSeenMs = nowMs;
  }

  /**
   * Applies a host's watched changes (in order; instances and snapshots as their net effect)
   * and moves its cursor to `version`: stored in one transaction, then in memory, then announced.
   */
  applyChanges(name: string, incarnation: string, version: number, upserts: Instance[], deletes: string[], nowMs: number, snapshots: SnapshotChanges = { put: [], del: [] }): void {
    const view = this.ensureHost(name);
    // Concerns stay with the instance until the policy loop validates its new revision.
    const put = upserts.map((i) => fleetInstance(i, name, view.instances.get(i.id)?.concerns));
    this.store?.apply(name, { incarnation, resourceVersion: version, lastSeenMs: nowMs }, upserts, deletes, snapshots);
    const changes: FleetChange[] = [];
    for (const i of put) {
      const previous = view.instances.get(i.id);
      view.instances.set(i.id, i);
      changes.push({ type: previous ? FleetEventType.MODIFIED : FleetEventType.ADDED, instance: i, previous });
    }
    for (const id of deletes) {
      const previous = view.instances.get(id);
      if (!previous) continue;
      view.instances.delete(id);
      changes.push({ type: FleetEventType.DELETED, instance: previous, previous });
    }
    if (changes.length > 0) view.sorted = undefined;
    changes.push(...this.applySnapshots(view, snapshots));
    view.incarnation = incarnation;
    view.version = version;
    view.lastSeenMs = nowMs;
    this.emit(changes);
    if (put.length > 0 || deletes.length > 0) this.hostChanged(name);
  }

  /**
   * A complete list of a host replaces its part (inventory.md "Relist diffs, including
   * deletes"): what is missing from the list is deleted, what changed is put; an instance whose
   * content is equal except for its version (an agent restart renumbers every instance) is
   * updated silently, without an event. The same for its snapshots (an agent from before
   * snapshots lists none: the host has none). The counts are of instances and snapshots.
   */
  replace(name: string, incarnation: string, version: number, instances: Instance[], nowMs: number, snapshots: Snapshot[] = []): { added: number; modified: number; deleted: number } {
    const view = this.ensureHost(name);
    const listed = new Map(instances.map((i) => [i.id, i]));
    const put: Instance[] = [];
    const changes: FleetChange[] = [];
    const silent: FleetInstance[] = [];
    const counts = { added: 0, modified: 0, deleted: 0 };
    for (const [id, i] of listed) {
      const previous = view.instances.get(id);
      if (previous && previous.resourceVersion === i.resourceVersion && view.incarnation === incarnation) continue;
      const next = fleetInstance(i, name, previous?.concerns);
      put.push(i);
      if (previous && equals(FleetInstanceSchema, { ...next, resourceVersion: previous.resourceVersion }, previous)) {
        silent.push(next);
        continue;
      }
      changes.push({ type: previous ? FleetEventType.MODIFIED : FleetEventType.ADDED, instance: next, previous });
      counts[previous ? "modified" : "added"]++;
    }
    const deletes: string[] = [];
    for (const [id, previous] of view.instances) {
      if (listed.has(id)) continue;
      deletes.push(id);
      changes.push({ type: FleetEventType.DELETED, instance: previous, previous });
      counts.deleted++;
    }
    // Snapshots: the same diff (their content never changes without their version).
    const listedSnapshots = new Map(snapshots.map((s) => [s.id, s]));
    const snapshotChanges: SnapshotChanges = { put: [], del: [] };
    for (const [id, s] of listedSnapshots) {
      const previous = view.snapshots.get(id);
      if (previous && equals(FleetSnapshotSchema, { ...fleetSnapshot(s, name), resourceVersion: previous.resourceVersion }, previous)) {
        if (previous.resourceVersion !== s.resourceVersion) snapshotChanges.put.push(s);
        continue;
      }
      snapshotChanges.put.push(s);
      counts[previous ? "modified" : "added"]++;
    }
    for (const id of view.snapshots.keys()) {
      if (listedSnapshots.has(id)) continue;
      snapshotChanges.del.push(id);
      counts.deleted++;
    }
    this.store?.apply(name, { incarnation, resourceVersion: version, lastSeenMs: nowMs }, put, deletes, snapshotChanges);
    for (const i of silent) view.instances.set(i.id, i);
    for (const c of changes) {
      if (c.type === FleetEventType.DELETED) view.instances.delete(c.instance!.id);
      else view.instances.set(c.instance!.id, c.instance!);
    }
    changes.push(...this.applySnapshots(view, snapshotChanges, true));
    view.sorted = undefined;
    view.incarnation = incarnation;
    view.version = version;
    view.lastSeenMs = nowMs;
    this.emit(changes);
    this.hostChanged(name);
    return counts;
  }

  /**
   * A host's snapshot changes in memory (already stored); the changes to announce. `silentRenumber`:
   * a snapshot equal but for its version takes the new version without an event (a relist).
   */
  private applySnapshots(view: HostView, changes: SnapshotChanges, silentRenumber = false): FleetChange[] {
    const out: FleetChange[] = [];
    for (const s of changes.put) {
      const next = fleetSnapshot(s, view.name);
      const previous = view.snapshots.get(s.id);
      view.snapshots.set(s.id, next);
      if (silentRenumber && previous && equals(FleetSnapshotSchema, { ...next, resourceVersion: previous.resourceVersion }, previous)) continue;
      out.push({ type: previous ? FleetEventType.MODIFIED : FleetEventType.ADDED, snapshot: next });
    }
    for (const id of changes.del) {
      const previous = view.snapshots.get(id);
      if (!previous) continue;
      view.snapshots.delete(id);
      out.push({ type: FleetEventType.DELETED, snapshot: previous });
    }
    if (changes.put.length > 0 || changes.del.length > 0) view.sortedSnapshots = undefined;
    return out;
  }

  /**
   * The digest of a host's part (instances and snapshots), comparable with the agent's at the
   * same version (lib/inventory-digest.ts: the same function on both sides).
   */
  digest(name: string): { count: number; hash: string } {
    const view = this.views.get(name);
    return inventoryDigest(view?.instances.values() ?? [], view?.snapshots.values() ?? []);
  }

  /** Every host's sync state, sorted by host. */
  hostSyncs(filter?: ReadonlySet<string>): HostSync[] {
    return this.sortedViews()
      .filter((v) => !filter || filter.has(v.name))
      .map((v) => this.hostSync(v));
  }

  /** Matching instances, sorted by host then id. Shared objects: do not modify. */
  list(filter: InstanceFilter): FleetInstance[] {
    const out: FleetInstance[] = [];
    for (const view of this.sortedViews()) {
      if (filter.hosts && !filter.hosts.has(view.name)) continue;
      view.sorted ??= [...view.instances.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
      for (const i of view.sorted) if (matches(i, filter)) out.push(i);
    }
    return out;
  }

  /** Matching snapshots, sorted by host then id. Shared objects: do not modify. */
  listSnapshots(filter: SnapshotFilter): FleetSnapshot[] {
    const out: FleetSnapshot[] = [];
    for (const view of this.sortedViews()) {
      if (filter.hosts && !filter.hosts.has(view.name)) continue;
      view.sortedSnapshots ??= [...view.snapshots.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
      for (const s of view.sortedSnapshots) if (snapshotMatches(s, filter)) out.push(s);
    }
    return out;
  }

  /** Changes after fleet seq `seq` (at most `limit`), undefined when no longer kept. */
  changesAfter(seq: number, limit?: number): { seq: number; item: FleetChange }[] | undefined {
    return this.ring.after(seq, limit);
  }

  subscribe(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  hostSync(view: HostView): HostSync {
    return create(HostSyncSchema, {
      host: view.name,
      state: view.state,
      lastSeen: view.lastSeenMs !== undefined ? timestampFromMs(view.lastSeenMs) : undefined,
      resourceVersion: BigInt(view.version),
      incarnation: view.incarnation,
      instanceCount: view.instances.size,
      snapshotCount: view.snapshots.size,
      lastError: view.lastError,
      relists: view.relists,
      digestMismatches: view.digestMismatches,
    });
  }

  private newView(name: string, state: HostSyncState): HostView {
    const view: HostView = {
      name,
      state,
      incarnation: "",
      version: 0,
      lastSeenMs: undefined,
      lastError: "",
      relists: 0,
      digestMismatches: 0,
      instances: new Map(),
      sorted: undefined,
      snapshots: new Map(),
      sortedSnapshots: undefined,
      info: undefined,
    };
    this.views.set(name, view);
    this.sortedHosts = undefined;
    return view;
  }

  private sortedViews(): HostView[] {
    this.sortedHosts ??= [...this.views.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    return this.sortedHosts;
  }

  private emit(changes: FleetChange[]): void {
    if (changes.length === 0) return;
    for (const c of changes) this.ring.push(++this.seq, c);
    for (const l of this.listeners) l();
  }
}

export function matches(i: FleetInstance, filter: InstanceFilter): boolean {
  if (filter.hosts && !filter.hosts.has(i.host)) return false;
  if (filter.states && filter.states.size > 0 && !filter.states.has(i.state)) return false;
  if (filter.kinds && filter.kinds.size > 0 && !filter.kinds.has(i.kind)) return false;
  if (filter.labels) {
    for (const [k, v] of Object.entries(filter.labels)) if (i.labels[k] !== v) return false;
  }
  if (filter.failingRules && filter.failingRules.size > 0 && !i.concerns.some((c) => filter.failingRules!.has(c.rule))) return false;
  if (filter.concernSeverities && filter.concernSeverities.size > 0 && !i.concerns.some((c) => filter.concernSeverities!.has(c.severity))) return false;
  return true;
}

export function snapshotMatches(s: FleetSnapshot, filter: SnapshotFilter): boolean {
  if (filter.hosts && !filter.hosts.has(s.host)) return false;
  if (filter.instanceIds && filter.instanceIds.size > 0 && !filter.instanceIds.has(s.instanceId)) return false;
  return true;
}

/** Each FleetInstance's wire form as field 1 of ListInstancesResponse, made once (they are immutable). */
const framed = new WeakMap<FleetInstance, Uint8Array>();
/** The encoded fields of an instance other than its concerns (the agent's data and host), shared by its copies. */
const agentPart = new WeakMap<FleetInstance, Uint8Array>();

/**
 * `instances` entry bytes of a ListInstancesResponse: the list of 100,000 instances is the
 * concatenation of these (fleet-service.ts), not a re-encoding of every message per call.
 */
export function framedInstance(i: FleetInstance): Uint8Array {
  let bytes = framed.get(i);
  if (!bytes) {
    bytes = frame(agentPartOf(i), i.concerns);
    framed.set(i, bytes);
  }
  return bytes;
}

function agentPartOf(i: FleetInstance): Uint8Array {
  let part = agentPart.get(i);
  if (!part) {
    part = toBinary(FleetInstanceSchema, i.concerns.length > 0 ? create(FleetInstanceSchema, { ...i, concerns: [] }) : i);
    agentPart.set(i, part);
  }
  return part;
}

/** A concern's field-101 bytes, made once per Concern object (the policy loop reuses unchanged ones). */
const concernField = new WeakMap<Concern, Uint8Array>();

/**
 * Field order does not matter on the wire: the agent's part, then each concern as field 101,
 * framed as field 1 — written into one buffer (this runs for every instance whose concerns a
 * search changed: 100,000 at a fleet's first search).
 */
function frame(part: Uint8Array, concerns: readonly Concern[]): Uint8Array {
  let bodyLength = part.length;
  const fields: Uint8Array[] = [];
  for (const c of concerns) {
    let bytes = concernField.get(c);
    if (!bytes) {
      bytes = new BinaryWriter().tag(101, WireType.LengthDelimited).bytes(toBinary(ConcernSchema, c)).finish();
      concernField.set(c, bytes);
    }
    fields.push(bytes);
    bodyLength += bytes.length;
  }
  const out = new Uint8Array(1 + varintLength(bodyLength) + bodyLength);
  out[0] = (1 << 3) | WireType.LengthDelimited;
  let at = 1;
  for (let n = bodyLength; ; n >>>= 7) {
    if (n < 0x80) {
      out[at++] = n;
      break;
    }
    out[at++] = (n & 0x7f) | 0x80;
  }
  out.set(part, at);
  at += part.length;
  for (const f of fields) {
    out.set(f, at);
    at += f.length;
  }
  return out;
}

function varintLength(n: number): number {
  let length = 1;
  while (n >= 0x80) {
    n >>>= 7;
    length++;
  }
  return length;
}

/** `next` is `previous` with other concerns: it shares the agent's part and frames only its concerns. */
function framedWithConcerns(previous: FleetInstance, next: FleetInstance): void {
  const part = agentPartOf(previous);
  agentPart.set(next, part);
  framed.set(next, frame(part, next.concerns));
}

function fleetSnapshot(s: Snapshot, host: string): FleetSnapshot {
  const { $typeName: _, ...fields } = s;
  return create(FleetSnapshotSchema, { ...fields, host });
}

function fleetInstance(i: Instance, host: string, concerns: Concern[] = []): FleetInstance {
  const { $typeName: _, ...fields } = i;
  const base = create(FleetInstanceSchema, { ...fields, host });
  // Encoded as it enters the view (on the follower's time), so a list only concatenates; the
  // concerns it carries over are framed after the agent's part (policy results replace only them).
  const part = toBinary(FleetInstanceSchema, base);
  if (concerns.length === 0) {
    agentPart.set(base, part);
    framed.set(base, frame(part, concerns));
    return base;
  }
  const out: FleetInstance = { ...base, concerns };
  agentPart.set(out, part);
  framed.set(out, frame(part, concerns));
  return out;
}
