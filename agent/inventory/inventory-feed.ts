import { clone, equals } from "@bufbuild/protobuf";
import { InstanceEventType, InstanceSchema, SnapshotSchema, type Instance, type Snapshot } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { EventRing } from "../../lib/event-ring.js";
import { inventoryDigest } from "../../lib/inventory-digest.js";

type ChangeType = InstanceEventType.ADDED | InstanceEventType.MODIFIED | InstanceEventType.DELETED;

/**
 * One published change: the instance or snapshot after it (for DELETED, its last state), with
 * resource_version set; never modified after publication (shared by every watcher).
 */
export type InventoryChange = { type: ChangeType; instance: Instance; snapshot?: undefined } | { type: ChangeType; snapshot: Snapshot; instance?: undefined };

/** A batch ready to publish once it is durable (see InstanceRegistry.write). */
export interface PreparedChanges {
  version: number;
  changes: { version: number; change: InventoryChange }[];
}

export const DEFAULT_WATCH_HISTORY = 16_384;

/**
 * What watchers and listers of the agent's inventory see (inventory.md "Versions and
 * watches"): only durable state. The registry changes its working copy at once, but publishes
 * a batch here only after the batch is on disk, so a change that fails to persist (and is
 * rolled back) is never seen. Each published change bumps the resource version by one and is
 * kept in a bounded ring for WatchInstances; an instance whose content did not change is not a
 * change (identical rewrites, a rollback that restores what was published). Snapshots are part
 * of the same feed (seed 003: the inventory is more than its VMs): their changes take versions
 * in the same sequence, so one cursor resumes both. Versions survive restarts (persisted with
 * the registry); the incarnation does not.
 */
export class InventoryFeed {
  private readonly published = new Map<string, Instance>();
  private sorted: Instance[] | undefined;
  private readonly publishedSnapshots = new Map<string, Snapshot>();
  private sortedSnapshots: Snapshot[] | undefined;
  private readonly ring: EventRing<InventoryChange>;
  private readonly listeners = new Set<() => void>();
  /** Per version: the instances-only digest and the one covering snapshots too. */
  private digestCache: { version: number; instances?: { count: number; hash: string }; all?: { count: number; hash: string } } | undefined;

  constructor(
    readonly incarnation: string,
    initial: Iterable<Instance>,
    private versionNow: number,
    capacity = DEFAULT_WATCH_HISTORY,
    initialSnapshots: Iterable<Snapshot> = [],
  ) {
    // Loaded instances and snapshots keep the version of their last change (stored with them);
    // one stored before versions were (0) takes the loaded version.
    for (const i of initial) this.published.set(i.id, i.resourceVersion > 0n ? i : withVersion(i, versionNow));
    for (const s of initialSnapshots) this.publishedSnapshots.set(s.id, s.resourceVersion > 0n ? s : snapshotWithVersion(s, versionNow));
    this.ring = new EventRing(capacity, versionNow);
  }

  get version(): number {
    return this.versionNow;
  }

  /** The oldest version a watch may start from. */
  get oldestResumable(): number {
    return this.ring.floor;
  }

  get(id: string): Instance | undefined {
    return this.published.get(id);
  }

  /** Published instances sorted by id. Do not modify. */
  list(): readonly Instance[] {
    this.sorted ??= [...this.published.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    return this.sorted;
  }

  getSnapshot(id: string): Snapshot | undefined {
    return this.publishedSnapshots.get(id);
  }

  /** Published snapshots sorted by id. Do not modify. */
  listSnapshots(): readonly Snapshot[] {
    this.sortedSnapshots ??= [...this.publishedSnapshots.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    return this.sortedSnapshots;
  }

  /**
   * The digest of the published state (lib/inventory-digest.ts): of the instances only, or of
   * instances and snapshots for a client that asked for snapshots (an older client compares
   * the instances-only one with its instances-only view).
   */
  digest(includeSnapshots = false): { count: number; hash: string } {
    if (this.digestCache?.version !== this.versionNow) this.digestCache = { version: this.versionNow };
    const c = this.digestCache;
    if (includeSnapshots) return (c.all ??= inventoryDigest(this.published.values(), this.publishedSnapshots.values()));
    return (c.instances ??= inventoryDigest(this.published.values()));
  }

  /**
   * The changes `current` (id → working value, undefined = removed) and `currentSnapshots`
   * make to what is published, numbered from the next version; nothing is published yet.
   */
  prepare(current: Iterable<[string, Instance | undefined]>, currentSnapshots: Iterable<[string, Snapshot | undefined]> = []): PreparedChanges {
    let version = this.versionNow;
    const changes: PreparedChanges["changes"] = [];
    for (const [id, value] of current) {
      const before = this.published.get(id);
      if (value === undefined) {
        if (!before) continue;
        version++;
        changes.push({ version, change: { type: InstanceEventType.DELETED, instance: withVersion(before, version) } });
      } else {
        if (before && equals(InstanceSchema, withVersion(value, before.resourceVersion), before)) continue;
        version++;
        changes.push({ version, change: { type: before ? InstanceEventType.MODIFIED : InstanceEventType.ADDED, instance: withVersion(value, version) } });
      }
    }
    for (const [id, value] of currentSnapshots) {
      const before = this.publishedSnapshots.get(id);
      if (value === undefined) {
        if (!before) continue;
        version++;
        changes.push({ version, change: { type: InstanceEventType.DELETED, snapshot: snapshotWithVersion(before, version) } });
      } else {
        if (before && equals(SnapshotSchema, snapshotWithVersion(value, before.resourceVersion), before)) continue;
        version++;
        changes.push({ version, change: { type: before ? InstanceEventType.MODIFIED : InstanceEventType.ADDED, snapshot: snapshotWithVersion(value, version) } });
      }
    }
    return { version, changes };
  }

  /** Publishes a prepared batch (now durable) and wakes the watchers. */
  publish(prepared: PreparedChanges): void {
    if (prepared.changes.length === 0) return;
    for (const { version, change } of prepared.changes) {
      if (change.snapshot) {
        if (change.type === InstanceEventType.DELETED) this.publishedSnapshots.delete(change.snapshot.id);
        else this.publishedSnapshots.set(change.snapshot.id, change.snapshot);
        this.sortedSnapshots = undefined;
      } else {
        if (change.type === InstanceEventType.DELETED) this.published.delete(change.instance.id);
        else this.published.set(change.instance.id, change.instance);
        this.sorted = undefined;
      }
      this.ring.push(version, change);
    }
    this.versionNow = prepared.version;
    for (const l of this.listeners) l();
  }

  /** Changes after `version` (at most `limit`), or undefined when they are no longer kept. */
  changesAfter(version: number, limit?: number): { seq: number; item: InventoryChange }[] | undefined {
    return this.ring.after(version, limit);
  }

  /** Called after every published batch. */
  subscribe(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
}

function withVersion(i: Instance, version: number | bigint): Instance {
  const copy = clone(InstanceSchema, i);
  copy.resourceVersion = BigInt(version);
  return copy;
}

function snapshotWithVersion(s: Snapshot, version: number | bigint): Snapshot {
  const copy = clone(SnapshotSchema, s);
  copy.resourceVersion = BigInt(version);
  return copy;
}
