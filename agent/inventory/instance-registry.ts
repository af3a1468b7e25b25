import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { clone, equals, fromJson, toJson, type JsonValue } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { InstanceSchema, SnapshotSchema, type Instance, type InstanceState, type Snapshot } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { RegistryStore, type JournalRecord, type StoredMeter } from "./registry-store.js";
import { DEFAULT_WATCH_HISTORY, InventoryFeed, type PreparedChanges } from "./inventory-feed.js";
import { readProcStat } from "../../lib/proc-stat-parser.js";
import { DEFAULT_ROOTS, type KernelRoots } from "../kernel/instance-probe.js";
import { lifecycleEntries, snapshotRegisteredEntry, snapshotRemovedEntry, type LifecycleEntry, type LifecycleStep, type MeterState, type StepCause } from "../metering/lifecycle-entries.js";
import { errorMessage } from "../../lib/error-message.js";
import { DEFAULT_REGISTRY_LIMITS, type RegistryLimits } from "../../lib/resource-limits.js";

/**
 * Where lifecycle entries go (the metering ledger; structural so this file does not depend on
 * its implementation): `lastSeq` is the highest durable seq, `append` resolves once durable.
 */
export interface LifecycleLedger {
  readonly lastSeq: number;
  append(entries: LifecycleEntry[]): Promise<unknown>;
  read(fromSeq: number, limit: number): readonly LifecycleEntry[];
  /** Where entry `seq` is stored ("<file> at byte offset N"), for refusals to name. */
  locate?(seq: number): string;
  /** Its identity (a replaced ledger has a new one). */
  readonly ledgerId?: string;
}

/** Options of a change: why it happens (metering.md distinguishes them), clone source. */
export interface ChangeOptions {
  cause?: StepCause;
  sourceSnapshotId?: string;
}

/** Entries written to the registry file before the ledger has them (see `write`). */
interface PendingMetering {
  afterSeq: number;
  entries: LifecycleEntry[];
}

export type RegistryChange =
  | { type: "upsert"; instance: Instance; previous: Instance | undefined }
  | { type: "delete"; instance: Instance };


/**
 * The agent's instances, by id: the one place that holds and changes them. Every change is
 * written to `<state-dir>/instances.json` atomically before it is acknowledged; changes that
 * arrive in the same tick share one write (group commit), so a burst of registrations costs one
 * fsync, not one each.
 */
export class InstanceRegistry {
  /** Caps checked when something new is added; what is already stored stays (a lowered cap). */
  limits: RegistryLimits = DEFAULT_REGISTRY_LIMITS;
  private readonly instances = new Map<string, Instance>();
  private sorted: Instance[] | undefined;
  private readonly listeners = new Set<(change: RegistryChange) => void>();
  /** Changes not yet handed to a write, with how to undo each and who waits for them. */
  private batch: { undo: (() => void)[]; waiters: { resolve: () => void; reject: (e: unknown) => void }[]; entries: LifecycleEntry[] } | undefined;
  /** Open intervals per instance (metering.md invariants), persisted with the instances. */
  private readonly meter = new Map<string, MeterState>();
  /** Registered snapshots (metered storage), persisted with the instances. */
  private readonly snapshots = new Map<string, Snapshot>();
  private ledger: LifecycleLedger | undefined;
  /** Entries durable in the registry file, not yet in the ledger (after a crash or a failed append). */
  private pending: PendingMetering | undefined;
  /** Instances loaded from a file written before metering existed: their intervals open on attach. */
  private unmetered: string[] = [];
  /**
   * What the registry on disk says the ledger's last seq is once its entries are all in
   * (registry-store.ts RegistryState.ledgerSeq; undefined: written before it was recorded),
   * where it says so, and whether there was a registry on disk at all.
   */
  private committedLedgerSeq: { seq: number | undefined; at: string; existed: boolean; ledgerId?: string } = { seq: 0, at: "", existed: false };
  private retryTimer: NodeJS.Timeout | undefined;
  /** The current ledger outage (appends failing), if any: when it began, the next retry delay. */
  private ledgerTrouble: { since: number; retryMs: number; failures: number } | undefined;
  /** Failed ledger appends since start (a metric). */
  ledgerAppendFailures = 0;
  /** Told once when a ledger outage begins and once when it ends (the daemon logs at warn). */
  onLedgerTrouble: ((event: LedgerTroubleEvent) => void) | undefined;
  private writing = false;
  private writeScheduled = false;
  /** Completed writes of the registry file (group commit makes this far fewer than changes). */
  writes = 0;
  /** Working-copy changes made, and how many of them are on disk (is memory ahead of disk?). */
  private changeCount = 0;
  private durableChangeCount = 0;
  /** What lists and watches see: durable state only, versioned (inventory-feed.ts). */
  feed: InventoryFeed;
  /** New at every start, so a client can tell a restarted agent from a reconnect. */
  readonly incarnation = randomBytes(8).toString("hex");

  /** Instances, meter rows and snapshots changed since the last write (what its record holds). */
  private dirty = new Set<string>();
  private dirtySnapshots = new Set<string>();

  private constructor(
    private readonly path: string,
    private readonly roots: KernelRoots,
    /** Where it lives on disk (snapshot + journal); read for metrics and tests. */
    readonly store: RegistryStore,
    private readonly watchHistory: number,
  ) {
    this.feed = new InventoryFeed(this.incarnation, [], 0, watchHistory);
  }

  /** The version of the published (durable) state: bumped once per changed instance. */
  get resourceVersion(): bigint {
    return BigInt(this.feed.version);
  }

  /**
   * Loads the registry (snapshot + journal, registry-store.ts); anything on disk that cannot be
   * parsed stops the agent (no silent data loss).
   */
  static open(stateDir: string, roots: KernelRoots = DEFAULT_ROOTS, options: { watchHistory?: number; limits?: Partial<RegistryLimits> } = {}): InstanceRegistry {
    const { store, state } = RegistryStore.open(stateDir);
    const registry = new InstanceRegistry(join(stateDir, "instances.json"), roots, store, options.watchHistory ?? DEFAULT_WATCH_HISTORY);
    registry.limits = { ...DEFAULT_REGISTRY_LIMITS, ...options.limits };
    if (!state) return registry;
    registry.committedLedgerSeq = { seq: state.ledgerSeq, at: state.ledgerSeqAt, existed: true, ledgerId: state.ledgerId };
    const stored: Instance[] = [];
    for (const [id, json] of state.instances) {
      try {
        stored.push(fromJson(InstanceSchema, json));
      } catch (e) {
        throw new Error(`${registry.path}: instance ${JSON.stringify(id)}: ${errorMessage(e)}`);
      }
    }
    const storedSnapshots: Snapshot[] = [];
    for (const [id, json] of state.snapshots) {
      try {
        storedSnapshots.push(fromJson(SnapshotSchema, json));
      } catch (e) {
        throw new Error(`${registry.path}: snapshot ${JSON.stringify(id)}: ${errorMessage(e)}`);
      }
    }
    // Stored with the version of their last change (so a restart renumbers nothing); the
    // working copies go without, so an identical re-registration compares equal.
    registry.feed = new InventoryFeed(registry.incarnation, stored, Number(state.resourceVersion), registry.watchHistory, storedSnapshots);
    for (const i of stored) {
      const working = clone(InstanceSchema, i);
      working.resourceVersion = 0n;
      registry.instances.set(i.id, working);
    }
    for (const s of storedSnapshots) {
      const working = clone(SnapshotSchema, s);
      working.resourceVersion = 0n;
      registry.snapshots.set(s.id, working);
    }
    if (state.meter) {
      for (const [id, [c, st, r]] of state.meter) registry.meter.set(id, { computeOpen: c === 1, storageOpen: st === 1, everRan: r === 1 });
    } else {
      registry.unmetered = [...registry.instances.keys()];
    }
    if (state.pending) {
      try {
        registry.pending = { afterSeq: state.pending.afterSeq, entries: (state.pending.entries as unknown as SerializedEntry[]).map(deserializeEntry) };
      } catch (e) {
        throw new Error(`${registry.path}: its pending metering entries do not parse (${errorMessage(e)}); refusing to start over them`);
      }
    }
    return registry;
  }

  /**
   * Connects the metering ledger and makes it agree with the registry (metering.md: after kill
   * -9 at any point, state and ledger agree). The registry file is the commit point: a change's
   * entries are written into it (`pendingMetering`, with the ledger's last seq before them)
   * together with the change, then appended to the ledger. After a crash between the two, the
   * entries are appended now; if the ledger already has them, nothing is. Anything else means
   * the two files are not each other's: a loud stop. Instances from before metering get their
   * registration entries.
   */
  async attachLedger(ledger: LifecycleLedger): Promise<void> {
    this.ledger = ledger;
    // Pending entries may be in the ledger in part or not at all (a crash between the two).
    const replaced = this.checkLedgerEnd(ledger, this.pending?.afterSeq, this.pending ? this.pending.afterSeq + this.pending.entries.length : this.committedLedgerSeq.seq);
    // Entries pending for a replaced ledger had their seqs there: they are not moved to the new one.
    if (replaced) this.pending = undefined;
    const pending = this.pending;
    if (pending) {
      const n = pending.entries.length;
      const have = ledger.lastSeq - pending.afterSeq;
      // A crash mid-append may have left the first `have` entries: they must be ours, the rest
      // is appended now.
      const written = have > 0 ? ledger.read(pending.afterSeq + 1, have) : [];
      written.forEach((w, i) => {
        const p = pending.entries[i]!;
        if (w.kind !== p.kind || (w.vmId ?? "") !== (p.vmId ?? "") || (w.snapshotId ?? "") !== (p.snapshotId ?? "") || w.emittedAtNs !== p.emittedAtNs) {
          throw new Error(`${this.path}: ledger entry ${pending.afterSeq + 1 + i} is not the change recorded here; registry and ledger do not belong together; refusing to start`);
        }
      });
      if (have < n) await ledger.append(pending.entries.slice(have));
      this.pending = undefined;
    }
    if (this.unmetered.length > 0) {
      const ids = this.unmetered;
      this.unmetered = [];
      const at = nowNs();
      const entries: LifecycleEntry[] = [];
      for (const id of ids) {
        const inst = this.instances.get(id);
        if (!inst || this.meter.has(id)) continue;
        const r = lifecycleEntries({ type: "upsert", previous: undefined, meter: undefined, next: inst, cause: "request" }, at);
        entries.push(...r.entries);
        this.dirty.add(id);
        if (r.meter) this.meter.set(id, r.meter);
      }
      if (entries.length > 0) {
        this.batch ??= { undo: [], waiters: [], entries: [] };
        this.batch.entries.push(...entries);
        await this.commit();
      }
    }
  }

  /**
   * The start-up cross-check (docs/architecture.md, "registry and ledger agree"): every record
   * says how far the ledger reaches once its entries are in (`seq`); with entries pending, the
   * ledger may also end before them, at `low`. Beyond `seq`, the ledger holds entries of a
   * change the registry no longer has (its record was lost: a later stop would write a second
   * stop); short of `low`, the ledger lost entries. Either way a refusal naming both files and
   * offsets, with nothing changed. A registry from before `ls` was recorded (seq undefined)
   * is checked from its next commit on.
   */
  private checkLedgerEnd(ledger: LifecycleLedger, low: number | undefined, seq: number | undefined): boolean {
    const { at, existed, ledgerId } = this.committedLedgerSeq;
    const last = ledger.lastSeq;
    const where = (s: number) => ledger.locate?.(s) ?? `the ledger's seq ${s}`;
    if (!existed && last > 0) {
      throw new Error(`${this.path}: missing, but the metering ledger holds entries 1..${last} (seq 1 at ${where(1)}): the registry that wrote them is gone; refusing to start with an empty one`);
    }
    if (ledgerId !== undefined && ledger.ledgerId !== undefined && ledger.ledgerId !== ledgerId) {
      // A new, empty ledger is one an operator replaced (metering/ deleted: docs/operations.md,
      // "A replaced ledger"); one that already holds entries is some other registry's.
      if (last === 0) return true;
      throw new Error(`registry and metering ledger disagree: the registry's last record (${at}) counts in ledger ${ledgerId}, but the ledger is ${ledger.ledgerId} with entries up to ${last}: registry and ledger do not belong together; refusing to start`);
    }
    if (seq === undefined || (last <= seq && last >= (low ?? seq))) return false;
    if (last > seq) {
      const e = ledger.read(seq + 1, 1)[0];
      const what = e ? ` (${e.kind}${e.vmId ? ` ${e.vmId}` : ""}${e.snapshotId ? ` ${e.snapshotId}` : ""})` : "";
      throw new Error(
        `registry and metering ledger disagree: the registry's last record (${at}) says the ledger ends at seq ${seq}, ` +
          `but it holds entries up to ${last}, the first of them${what} at ${where(seq + 1)}; ` +
          `a registry record was lost after ${this.store.journalEnd}: the change those entries meter is gone from the registry; refusing to start (docs/operations.md, "registry and ledger disagree")`,
      );
    }
    throw new Error(
      `registry and metering ledger disagree: the registry's last record (${at}) says the ledger ends at seq ${low ?? seq}, ` +
        `but it ends at ${last}${last > 0 ? ` (${where(last)})` : ""}: metering entries the registry committed are missing from the ledger ` +
        `(or registry and ledger do not belong together); refusing to start (docs/operations.md, "registry and ledger disagree")`,
    );
  }

  get(id: string): Instance | undefined {
    return this.instances.get(id);
  }

  /** Instances sorted by id (a stable order for lists and sweeps). Do not modify the array. */
  list(): readonly Instance[] {
    // Sorted once per change, not once per sweep.
    this.sorted ??= [...this.instances.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    return this.sorted;
  }

  get size(): number {
    return this.instances.size;
  }

  /**
   * Stores a validated instance; resolves once it is durable, its metering entries included.
   * Returns what was stored.
   */
  async upsert(input: Instance, options: ChangeOptions = {}): Promise<Instance> {
    const previous = this.instances.get(input.id);
    const next = clone(InstanceSchema, input);
    next.pidStartTime = this.startTimeFor(next, previous);
    if (previous && equals(InstanceSchema, previous, next)) {
      // Same content: acknowledge only once it is on disk (it may be in a write still pending,
      // or in one that failed and was rolled back: then this call writes it), its metering
      // entries included (a failed ledger append leaves them pending: the write retries it).
      if (this.changeCount !== this.durableChangeCount || this.batch || (this.pending && this.ledger)) await this.commit();
      return this.instances.get(input.id) ?? previous;
    }
    this.checkCaps(next, previous);
    this.set(next.id, next, previous);
    const undoMeter = this.meterStep({ type: "upsert", previous, meter: this.meter.get(next.id), next, cause: options.cause ?? "request", sourceSnapshotId: options.sourceSnapshotId }, next.id);
    await this.commit(() => {
      undoMeter();
      this.set(next.id, previous, next);
    });
    return next;
  }

  /** RESOURCE_EXHAUSTED naming the cap when adding `next` would exceed one. */
  private checkCaps(next: Instance, previous: Instance | undefined): void {
    if (!previous && this.instances.size >= this.limits.maxInstances) {
      throw new ConnectError(`this agent holds its maximum of ${this.limits.maxInstances} instances (--max-instances)`, Code.ResourceExhausted);
    }
    if (next.pid !== undefined && next.pid > 0 && next.pid !== previous?.pid) {
      let sharing = 0;
      for (const i of this.instances.values()) if (i.pid === next.pid) sharing++;
      if (sharing >= this.limits.maxInstancesPerPid) {
        throw new ConnectError(`pid ${next.pid} already has the maximum of ${this.limits.maxInstancesPerPid} instances (--max-instances-per-pid)`, Code.ResourceExhausted);
      }
    }
  }

  /** Removes an instance; NOT_FOUND when there is none. Resolves once the removal is durable. */
  async remove(id: string): Promise<Instance> {
    const previous = this.instances.get(id);
    if (!previous) throw new ConnectError(`instance ${JSON.stringify(id)} not found`, Code.NotFound);
    this.set(id, undefined, previous);
    const undoMeter = this.meterStep({ type: "remove", previous, meter: this.meter.get(id) }, id);
    await this.commit(() => {
      undoMeter();
      this.set(id, previous, undefined);
    });
    return previous;
  }

  /**
   * Changes an instance's lifecycle state: the one place state changes (standby, wake, and the
   * lifecycle transitions metering records). NOT_FOUND for an unknown id; durable on return.
   */
  async setState(id: string, state: InstanceState, cause: StepCause = "request"): Promise<Instance> {
    const current = this.instances.get(id);
    if (!current) throw new ConnectError(`instance ${JSON.stringify(id)} not found`, Code.NotFound);
    // Already in that state goes through upsert's same-content path too: memory may be ahead of
    // the disk (a write carrying the change in flight, or failing and rolled back), and a call
    // is acknowledged only once the state it reports is durable.
    const next = clone(InstanceSchema, current);
    next.state = state;
    return this.upsert(next, { cause });
  }

  /**
   * Restore from a snapshot (metering.md: the old intervals close, new ones open, all carrying
   * the snapshot). `next` has the shape after the restore; its state is the instance's.
   */
  async restore(id: string, next: Instance, snapshotId: string): Promise<Instance> {
    const previous = this.instances.get(id);
    if (!previous) throw new ConnectError(`instance ${JSON.stringify(id)} not found`, Code.NotFound);
    const stored = clone(InstanceSchema, next);
    stored.pidStartTime = this.startTimeFor(stored, previous);
    this.set(id, stored, previous);
    const undoMeter = this.meterStep({ type: "restore", previous, meter: this.meter.get(id), next: stored, sourceSnapshotId: snapshotId }, id);
    await this.commit(() => {
      undoMeter();
      this.set(id, previous, stored);
    });
    return stored;
  }

  snapshotList(): Snapshot[] {
    return [...this.snapshots.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  /** Registers a snapshot (snap.storage.start); re-registering the same one is a no-op. */
  async registerSnapshot(snapshot: Snapshot): Promise<Snapshot> {
    const previous = this.snapshots.get(snapshot.id);
    if (previous) {
      if (!equals(SnapshotSchema, previous, snapshot)) throw new ConnectError(`snapshot ${JSON.stringify(snapshot.id)} is already registered with other values`, Code.AlreadyExists);
      await this.commit();
      return this.feed.getSnapshot(snapshot.id) ?? previous;
    }
    if (this.snapshots.size >= this.limits.maxSnapshots) {
      throw new ConnectError(`this agent holds its maximum of ${this.limits.maxSnapshots} snapshots (--max-snapshots)`, Code.ResourceExhausted);
    }
    this.snapshots.set(snapshot.id, snapshot);
    this.dirtySnapshots.add(snapshot.id);
    this.pushEntries([snapshotRegisteredEntry(snapshot.id, snapshot.hypervisor, Number(snapshot.storageBytes), nowNs())]);
    await this.commit(() => {
      this.snapshots.delete(snapshot.id);
      this.dirtySnapshots.add(snapshot.id);
    });
    return this.feed.getSnapshot(snapshot.id) ?? snapshot;
  }

  /** Removes a snapshot (snap.storage.stop snap-rm) — once: NOT_FOUND afterwards, no entry. */
  async removeSnapshot(id: string): Promise<Snapshot> {
    const previous = this.snapshots.get(id);
    if (!previous) throw new ConnectError(`snapshot ${JSON.stringify(id)} not found`, Code.NotFound);
    const published = this.feed.getSnapshot(id);
    this.snapshots.delete(id);
    this.dirtySnapshots.add(id);
    this.pushEntries([snapshotRemovedEntry(id, previous.hypervisor, Number(previous.storageBytes), nowNs())]);
    await this.commit(() => {
      this.snapshots.set(id, previous);
      this.dirtySnapshots.add(id);
    });
    return published ?? previous;
  }

  private pushEntries(entries: LifecycleEntry[]): void {
    this.batch ??= { undo: [], waiters: [], entries: [] };
    this.batch.entries.push(...entries);
  }

  /**
   * The metering side of one change, made in the same synchronous step: the entries join the
   * current batch (written with it), the instance's open intervals move on. Returns the undo.
   */
  private meterStep(step: LifecycleStep, id: string): () => void {
    this.dirty.add(id);
    const before = this.meter.get(id);
    const result = lifecycleEntries(step, nowNs());
    if (result.meter) this.meter.set(id, result.meter);
    else this.meter.delete(id);
    if (result.entries.length > 0) this.pushEntries(result.entries);
    return () => {
      this.dirty.add(id);
      if (before) this.meter.set(id, before);
      else this.meter.delete(id);
    };
  }

  /**
   * Records the start time of an instance's pid learnt after registration (the process did not
   * exist yet then), so pid-reuse detection survives restarts. Best effort: persisted with the
   * next write, errors only logged by the caller.
   */
  async noteStartTime(id: string, pid: number, startTime: bigint): Promise<void> {
    const current = this.instances.get(id);
    if (!current || current.pid !== pid || current.pidStartTime !== undefined) return;
    const next = clone(InstanceSchema, current);
    next.pidStartTime = startTime;
    this.set(id, next, current);
    await this.commit(() => this.set(id, current, next));
  }

  /** One change in memory, announced to listeners; `undefined` = absent. */
  private set(id: string, value: Instance | undefined, previous: Instance | undefined): void {
    this.dirty.add(id);
    if (value) this.instances.set(id, value);
    else this.instances.delete(id);
    this.changeCount++;
    this.emit(value ? { type: "upsert", instance: value, previous } : { type: "delete", instance: previous! });
  }

  /**
   * The journal record of everything changed since the last write: the current value of each
   * touched instance, meter row and snapshot. Taken synchronously with the batch, so it holds
   * exactly the batch's changes (and those an undo put back).
   */
  private takeRecord(pending: JournalRecord["pending"]): { record: JournalRecord; prepared: PreparedChanges } {
    const prepared = this.feed.prepare(
      [...this.dirty].map((id) => [id, this.instances.get(id)]),
      [...this.dirtySnapshots].map((id) => [id, this.snapshots.get(id)]),
    );
    const record: JournalRecord = { v: String(prepared.version) };
    const put: JsonValue[] = [];
    const del: string[] = [];
    const meter: Record<string, StoredMeter | null> = {};
    const versioned = this.versioned(prepared);
    for (const id of this.dirty) {
      const inst = this.instances.get(id);
      if (inst) put.push(toJson(InstanceSchema, versioned(inst)));
      else del.push(id);
      const m = this.meter.get(id);
      meter[id] = m ? storedMeter(m) : null;
    }
    const snapPut: JsonValue[] = [];
    const snapDel: string[] = [];
    const versionedSnapshot = this.versionedSnapshot(prepared);
    for (const id of this.dirtySnapshots) {
      const snap = this.snapshots.get(id);
      if (snap) snapPut.push(toJson(SnapshotSchema, versionedSnapshot(snap)));
      else snapDel.push(id);
    }
    this.dirty = new Set();
    this.dirtySnapshots = new Set();
    if (put.length > 0) record.put = put;
    if (del.length > 0) record.del = del;
    if (Object.keys(meter).length > 0) record.meter = meter;
    if (snapPut.length > 0) record.snapPut = snapPut;
    if (snapDel.length > 0) record.snapDel = snapDel;
    if (pending) record.pending = pending;
    return { record, prepared };
  }

  /** A working copy as stored: with the version of its last change (this batch's or published). */
  private versioned(prepared: PreparedChanges): (i: Instance) => Instance {
    const changed = new Map<string, Instance>();
    for (const c of prepared.changes) if (c.change.instance) changed.set(c.change.instance.id, c.change.instance);
    return (i) => changed.get(i.id) ?? this.feed.get(i.id) ?? i;
  }

  /** The same for a snapshot (stored with its version, like an instance). */
  private versionedSnapshot(prepared: PreparedChanges): (s: Snapshot) => Snapshot {
    const changed = new Map<string, Snapshot>();
    for (const c of prepared.changes) if (c.change.snapshot) changed.set(c.change.snapshot.id, c.change.snapshot);
    return (s) => changed.get(s.id) ?? this.feed.getSnapshot(s.id) ?? s;
  }

  /** Stops retrying a failed ledger append (the agent is stopping; a restart completes it). */
  close(): void {
    clearTimeout(this.retryTimer);
    void this.store.close();
  }

  subscribe(listener: (change: RegistryChange) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private emit(change: RegistryChange): void {
    this.sorted = undefined;
    for (const l of this.listeners) l(change);
  }

  /**
   * The start time identifies the process behind a pid: kept across re-registrations of the same
   * pid, read from /proc when the pid is new (unset when the process does not exist yet).
   */
  private startTimeFor(next: Instance, previous: Instance | undefined): bigint | undefined {
    if (next.pid === undefined) return undefined;
    if (previous?.pid === next.pid && previous.pidStartTime !== undefined) return previous.pidStartTime;
    try {
      return readProcStat(next.pid, this.roots.proc)?.startTimeTicks;
    } catch {
      return undefined;
    }
  }

  /**
   * Joins the current batch (group commit: every change made before the write starts shares
   * it) and resolves once the batch is on disk. One write is in flight at a time; changes made
   * meanwhile form the next batch. If a write fails, its batch and the one queued behind it
   * (which may build on it) are undone in memory, newest first, and every caller of both gets
   * UNAVAILABLE: nothing is acknowledged that is not on disk, and nothing on disk is missing
   * from memory.
   */
  private commit(undo?: () => void): Promise<void> {
    this.batch ??= { undo: [], waiters: [], entries: [] };
    if (undo) this.batch.undo.push(undo);
    const batch = this.batch;
    return new Promise((resolve, reject) => {
      batch.waiters.push({ resolve, reject });
      this.scheduleWrite();
    });
  }

  private scheduleWrite(): void {
    if (this.writing || this.writeScheduled) return;
    this.writeScheduled = true;
    setImmediate(() => void this.write());
  }

  private async write(): Promise<void> {
    this.writeScheduled = false;
    const batch = this.batch;
    if (!batch) return;
    this.batch = undefined;
    const changeCount = this.changeCount;
    // Entries a failed append left behind come first: they are older and already committed —
    // in the registry's last durable record, so this record adds only the batch's own (`pm`)
    // instead of writing them all again (a full ledger disk made every change rewrite them).
    const carried = this.pending;
    // No ledger attached (the agent's --metering off): the batch's entries are dropped, not
    // metered; entries an earlier run committed for the ledger stay pending as they are, for
    // attachLedger to settle when metering is on again.
    const entries = this.ledger ? [...(carried?.entries ?? []), ...batch.entries] : (carried?.entries ?? []);
    const pending: PendingMetering | undefined = entries.length > 0 ? { afterSeq: carried?.afterSeq ?? this.ledger!.lastSeq, entries } : undefined;
    const pendingJson = pending ? { afterSeq: pending.afterSeq, entries: pending.entries.map(serializeEntry) as unknown as JsonValue[] } : undefined;
    if (carried && this.ledger && this.dirty.size === 0 && this.dirtySnapshots.size === 0 && batch.entries.length === 0 && changeCount === this.durableChangeCount) {
      // Nothing new for the registry (a retry, or a repeat of a change waiting for its
      // entries): only the ledger append is tried again.
      await this.appendPending(batch, carried);
      return;
    }
    const { record, prepared } = this.takeRecord(carried ? undefined : pendingJson);
    if (carried) record.pm = this.ledger ? (batch.entries.map(serializeEntry) as unknown as JsonValue[]) : [];
    // How far the ledger reaches once this record's entries are in: checked on every start.
    // With no ledger attached (the agent's --metering off) nothing reaches the ledger, so it
    // still ends where the registry last said: carried on, so the check still holds (and does
    // not refuse) when metering is turned on again.
    const off = this.committedLedgerSeq;
    const ledgerSeq = this.ledger ? (pending ? pending.afterSeq + pending.entries.length : this.ledger.lastSeq) : off.existed ? off.seq : undefined;
    if (ledgerSeq !== undefined) record.ls = ledgerSeq;
    const ledgerId = this.ledger ? this.ledger.ledgerId : off.ledgerId;
    if (ledgerSeq !== undefined && ledgerId !== undefined) record.lid = ledgerId;
    const full = () => {
      const versioned = this.versioned(prepared);
      const versionedSnapshot = this.versionedSnapshot(prepared);
      return {
        resourceVersion: record.v,
        instances: this.list().map((i) => toJson(InstanceSchema, versioned(i))),
        snapshots: [...this.snapshots.values()].map((x) => toJson(SnapshotSchema, versionedSnapshot(x))),
        meter: Object.fromEntries([...this.meter].map(([id, m]) => [id, storedMeter(m)])),
        ...(pendingJson ? { pendingMetering: pendingJson } : {}),
        ...(ledgerSeq !== undefined ? { ledgerSeq } : {}),
        ...(record.lid !== undefined ? { ledgerId: record.lid } : {}),
      };
    };
    this.writing = true;
    try {
      try {
        await this.store.commit(record, full);
      } catch (e) {
        const queued = this.batch as typeof batch | undefined;
        this.batch = undefined;
        for (const undo of [...(queued?.undo ?? [])].reverse()) undo();
        for (const undo of [...batch.undo].reverse()) undo();
        const error = new ConnectError(`not applied: could not persist the registry: ${errorMessage(e)}`, Code.Unavailable);
        for (const w of [...batch.waiters, ...(queued?.waiters ?? [])]) w.reject(error);
        return;
      }
      this.durableChangeCount = changeCount;
      // Durable: now lists and watches may see it.
      this.feed.publish(prepared);
      this.writes++;
      // Committed: the state and its entries are on disk. Now the ledger (one append, one
      // fdatasync for the whole batch); callers are acknowledged once both are durable.
      if (pending && this.ledger) {
        this.pending = pending;
        await this.appendPending(batch, pending);
        return;
      }
      for (const w of batch.waiters) w.resolve();
    } finally {
      this.writing = false;
      if (this.batch) this.scheduleWrite();
    }
  }

  /**
   * Appends the entries the registry holds as pending (one write + fdatasync for all). On
   * failure the change stays (it is committed; its entries are appended on restart if not
   * before): the callers hear exactly that, and the append is retried with backoff (1 s
   * doubling to 60 s) — with no registry write: the registry has them already. The first
   * failure of an episode and its end are told to `onLedgerTrouble` (the daemon logs them).
   */
  private async appendPending(batch: { waiters: { resolve: () => void; reject: (e: unknown) => void }[] }, pending: PendingMetering): Promise<void> {
    this.writing = true;
    try {
      try {
        await this.ledger!.append(pending.entries);
      } catch (e) {
        this.ledgerAppendFailures++;
        const now = performance.now();
        this.ledgerTrouble ??= { since: now, retryMs: LEDGER_RETRY_FIRST_MS, failures: 0 };
        const trouble = this.ledgerTrouble;
        if (trouble.failures++ === 0) this.onLedgerTrouble?.({ kind: "start", error: errorMessage(e), pendingEntries: pending.entries.length });
        const error = new ConnectError(
          `applied, not yet metered: the change is durable in the registry, but could not append to the metering ledger: ${errorMessage(e)}; ` +
            "its entries are retried in the background and on restart — the same request returns OK once they are in",
          Code.Unavailable,
        );
        for (const w of batch.waiters) w.reject(error);
        clearTimeout(this.retryTimer);
        const delay = trouble.retryMs;
        trouble.retryMs = Math.min(2 * delay, LEDGER_RETRY_MAX_MS);
        this.retryTimer = setTimeout(() => {
          this.batch ??= { undo: [], waiters: [], entries: [] };
          this.scheduleWrite();
        }, delay);
        this.retryTimer.unref();
        return;
      }
      this.pending = undefined;
      const trouble = this.ledgerTrouble;
      if (trouble) {
        this.ledgerTrouble = undefined;
        clearTimeout(this.retryTimer);
        this.onLedgerTrouble?.({ kind: "end", failures: trouble.failures, seconds: (performance.now() - trouble.since) / 1000, pendingEntries: pending.entries.length });
      }
      for (const w of batch.waiters) w.resolve();
    } finally {
      this.writing = false;
      if (this.batch) this.scheduleWrite();
    }
  }

  /** Entries committed in the registry and not yet in the ledger (a metric: > 0 = not metered yet). */
  get pendingMeteringEntries(): number {
    return this.pending?.entries.length ?? 0;
  }
}

/** Backoff of the ledger append retry after a failure (a full disk must not make it spin). */
const LEDGER_RETRY_FIRST_MS = 1000;
const LEDGER_RETRY_MAX_MS = 60_000;

/** A ledger outage began (first failed append) or ended (the pending entries are in). */
export type LedgerTroubleEvent =
  | { kind: "start"; error: string; pendingEntries: number }
  | { kind: "end"; failures: number; seconds: number; pendingEntries: number };

/** The registry file keeps pending entries as JSON (emittedAtNs as a string). */
type SerializedEntry = Omit<LifecycleEntry, "emittedAtNs"> & { emittedAtNs: string };

function serializeEntry(e: LifecycleEntry): SerializedEntry {
  return { ...e, emittedAtNs: e.emittedAtNs.toString() };
}

function deserializeEntry(e: SerializedEntry): LifecycleEntry {
  if (typeof e.kind !== "string" || typeof e.emittedAtNs !== "string" || !/^\d{1,25}$/.test(e.emittedAtNs) || typeof e.shape !== "object" || e.shape === null) {
    throw new Error(`not a lifecycle entry: ${JSON.stringify(e).slice(0, 120)}`);
  }
  return { ...e, emittedAtNs: BigInt(e.emittedAtNs) };
}

function storedMeter(m: MeterState): StoredMeter {
  return [m.computeOpen ? 1 : 0, m.storageOpen ? 1 : 0, m.everRan ? 1 : 0];
}

/** Wall-clock now in ns (entries are UTC times, not a monotonic clock). */
function nowNs(): bigint {
  return BigInt(Date.now()) * 1_000_000n;
}
