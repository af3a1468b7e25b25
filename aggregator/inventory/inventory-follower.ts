import { errorMessage } from "../../lib/error-message.js";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { InstanceEventType, type Instance, type ListInstancesResponse, type Snapshot } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { HostSyncState } from "../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { inventoryDigest } from "../../lib/inventory-digest.js";
import { MAX_PAGE_SIZE } from "../../lib/paging/list-pager.js";
import { readAllPages } from "../../lib/paging/read-all-pages.js";
import { sleepUnlessAborted } from "../../lib/abort-race.js";
import { linkedSignal } from "../../lib/linked-signal.js";
import { monotonicMs } from "../../lib/monotonic-clock.js";
import type { Logger } from "../../lib/rpc/logger.js";
import { codeName, isConnectionTrouble } from "../../lib/rpc/status-codes.js";
import type { HostConnection } from "../hosts/host-connection.js";
import type { HostRegistry } from "../hosts/host-registry.js";
import { HostFollowers, type HostFollow } from "../hosts/host-followers.js";
import type { MergedView } from "./merged-view.js";

const BACKOFF_INITIAL_MS = 200;
const BACKOFF_MAX_MS = 10_000;
const LIST_TIMEOUT_MS = 30_000;

export interface InventoryFollowerOptions {
  /** A host not heard from for this long is STALE (its last-known instances stay, with their age). */
  staleAfterMs: number;
  /** How often a host's digest is compared with ours (on its bookmarks); a mismatch relists it. */
  digestIntervalMs: number;
  /**
   * Fault injection for tests (FLEETLET_TEST_DROP_INVENTORY_EVENT): the first watched change of
   * this instance id is not applied although the cursor moves past it — the drift the digest
   * must find and repair.
   */
  dropEventOf?: string;
}

/** The digest of a host did not match ours at the same version: relist. */
class DigestMismatch extends Error {}

/** What a relist changed in the view. */
export interface RelistCounts {
  added: number;
  modified: number;
  deleted: number;
}

/** A caller of resync() waiting for the relist it asked for. */
interface ResyncWaiter {
  resolve: (counts: RelistCounts) => void;
  reject: (e: unknown) => void;
}

/**
 * Its moments are monotonic ms: how long a host has been quiet, or since its digest was
 * compared, must not jump with the wall clock (the view's last_seen is wall time: reported
 * and persisted).
 */
interface Follow extends HostFollow {
  lastDigestCheckMs: number;
  /** The last list or watch message from the host (undefined: none yet). */
  lastHeardMs: number | undefined;
  /** Aborted by resync(): ends the current watch (or backoff) so the loop relists at once. */
  interrupt: AbortController;
  /** Callers of resync() waiting for the next relist. */
  resyncWaiters: ResyncWaiter[];
}

/**
 * The aggregator's side of inventory.md: per host, LOADING (list, diffed into the view with
 * deletes) → SYNCED (watching from the list's version; cursor moved only after a change is
 * applied) → STALE (no message for --stale-after; data kept) → back on reconnect: a watch from
 * the kept cursor first (no relist when the agent still has the changes), a relist only when
 * the agent answers OUT_OF_RANGE (restarted, or the gap is longer than its ring). A failed list
 * marks the host DEGRADED and deletes nothing. On a bookmark, at most every --digest-interval,
 * the host's digest is compared with ours at that version; a mismatch relists. A host that goes
 * silent (no bookmark within 3 intervals) is reconnected; a slow or dead host only affects
 * its own part.
 */
export class InventoryFollower extends HostFollowers<Follow> {
  private readonly bookmarkMs: number;
  private dropPending: string | undefined;
  /** Watched changes applied, relists done (metrics). */
  applied = 0;
  relists = 0;

  constructor(
    private readonly view: MergedView,
    hosts: HostRegistry,
    private readonly logger: Logger,
    private readonly options: InventoryFollowerOptions,
  ) {
    super(hosts);
    // Bookmarks often enough to notice silence well within --stale-after, and to compare
    // digests at the interval asked; at most every 5 s when both are long.
    this.bookmarkMs = Math.max(100, Math.min(5000, options.digestIntervalMs, Math.floor(options.staleAfterMs / 3)));
    this.dropPending = options.dropEventOf;
    this.startReconciling();
  }

  protected newFollow(name: string): Follow {
    this.view.ensureHost(name);
    // A host already heard from (a follow started again) keeps its age: its wall-clock
    // last_seen is converted once, here.
    const lastSeen = this.view.host(name)?.lastSeenMs;
    const now = monotonicMs();
    const lastHeardMs = lastSeen === undefined ? undefined : now - Math.max(0, Date.now() - lastSeen);
    return { stop: new AbortController(), done: Promise.resolve(), lastDigestCheckMs: now, lastHeardMs, interrupt: new AbortController(), resyncWaiters: [] };
  }

  /**
   * An operator's forced relist (FleetService.ResyncHost): the host's watch (or backoff) is
   * interrupted and its follow relists now, as after a digest mismatch — through the same loop,
   * so nothing else applies to the host's part meanwhile. Resolves with what the relist changed
   * once it is applied; rejects with the list's error (the host stays as it was: DEGRADED,
   * nothing deleted). UNAVAILABLE for a host whose follow has not started yet.
   */
  resync(name: string): Promise<RelistCounts> {
    const f = this.follows.get(name);
    if (!f || f.stop.signal.aborted) return Promise.reject(new ConnectError(`host ${JSON.stringify(name)} is not followed yet (just added?): retry in a second`, Code.Unavailable));
    return new Promise((resolve, reject) => {
      f.resyncWaiters.push({ resolve, reject });
      f.interrupt.abort();
    });
  }

  protected override hostRemoved(name: string): void {
    this.view.removeHost(name);
  }

  /** Stored views of hosts no longer configured are dropped; SYNCED hosts gone quiet are STALE. */
  protected override afterReconcile(present: ReadonlySet<string>): void {
    for (const name of this.view.hostNames()) if (!present.has(name)) this.view.removeHost(name);
    const now = monotonicMs();
    for (const name of present) {
      const v = this.view.host(name)!;
      const heard = this.follows.get(name)?.lastHeardMs;
      // Only a synced host goes STALE (it has data that is aging); one that never listed stays
      // LOADING / DEGRADED with its reason.
      if (v.state === HostSyncState.SYNCED && (heard === undefined || now - heard > this.options.staleAfterMs)) {
        this.view.setState(name, HostSyncState.STALE, v.lastError || `no message for more than ${this.options.staleAfterMs} ms`);
      }
    }
  }

  protected async follow(name: string, f: Follow): Promise<void> {
    try {
      await this.followLoop(name, f);
    } finally {
      const error = new ConnectError(`host ${JSON.stringify(name)} is no longer followed (removed, or the aggregator is stopping)`, Code.Unavailable);
      for (const w of f.resyncWaiters.splice(0)) w.reject(error);
    }
  }

  private async followLoop(name: string, f: Follow): Promise<void> {
    let delay = BACKOFF_INITIAL_MS;
    while (!f.stop.signal.aborted) {
      const conn = this.hosts.get(name);
      if (!conn) return;
      const v = this.view.host(name)!;
      // A resync asked for since the last pass: this pass relists, and tells them how it went.
      if (f.interrupt.signal.aborted) f.interrupt = new AbortController();
      const resyncing = f.resyncWaiters.splice(0);
      try {
        if (resyncing.length > 0) {
          this.logger.info({ host: name }, "inventory: relisting the host (resync requested)");
          v.incarnation = "";
          this.view.setState(name, HostSyncState.LOADING, "relist requested (ResyncHost)");
          let counts: RelistCounts;
          try {
            counts = await this.relist(name, conn, f);
          } catch (e) {
            for (const w of resyncing) w.reject(e);
            throw e;
          }
          for (const w of resyncing) w.resolve(counts);
        } else if (v.incarnation === "") {
          await this.relist(name, conn, f);
        }
        await this.watch(name, conn, f);
        delay = BACKOFF_INITIAL_MS;
      } catch (e) {
        if (f.stop.signal.aborted) return;
        // Interrupted by resync(): relist at once, no backoff, nothing to report.
        if (f.interrupt.signal.aborted && f.resyncWaiters.length > 0) continue;
        const err = ConnectError.from(e);
        const reason = e instanceof DigestMismatch ? `DIGEST_MISMATCH: ${e.message}` : `${codeName(err.code)}: ${err.rawMessage}`;
        if (e instanceof DigestMismatch || err.code === Code.OutOfRange) {
          // The cursor cannot be resumed from (or our view drifted): relist now, keep the data
          // until the list replaces it.
          this.logger.info({ host: name, reason }, "inventory: relisting the host");
          v.incarnation = "";
          this.view.setState(name, HostSyncState.LOADING, reason);
          continue;
        }
        const cur = this.view.host(name);
        if (cur && cur.state !== HostSyncState.STALE && cur.state !== HostSyncState.DEGRADED) {
          // Still SYNCED with its last data until --stale-after says otherwise; the reason is kept.
          cur.lastError = reason;
        }
        // Connection trouble (down, slow, a stream reset by HTTP/2) is the normal life of a
        // fleet and shows in the host's state; anything else is worth a warning.
        if (isConnectionTrouble(err.code, err.rawMessage)) this.logger.debug({ host: name, err: reason }, "inventory: following the host failed; retrying");
        else this.logger.warn({ host: name, err: reason }, "inventory: following the host failed; retrying");
      }
      const wake = linkedSignal([f.stop.signal, f.interrupt.signal]);
      try {
        await sleepUnlessAborted(delay, wake.signal);
      } finally {
        wake.dispose();
      }
      delay = Math.min(delay * 2, BACKOFF_MAX_MS);
    }
  }

  /** A complete list (instances and snapshots), checked against its own digest, replaces the host's part. */
  private async relist(name: string, conn: HostConnection, f: Follow): Promise<RelistCounts> {
    const v = this.view.host(name)!;
    if (v.state !== HostSyncState.STALE) this.view.setState(name, HostSyncState.LOADING, v.lastError);
    let res;
    try {
      res = await listWholeInventory(conn, f.stop.signal);
    } catch (e) {
      const err = ConnectError.from(e);
      // Not authoritative: nothing is deleted, the host is DEGRADED until a list succeeds.
      this.view.setState(name, HostSyncState.DEGRADED, `${codeName(err.code)}: list failed: ${err.rawMessage}`);
      throw e;
    }
    const got = inventoryDigest(res.instances, res.snapshots);
    if (res.digest && (res.digest.count !== got.count || res.digest.hash !== got.hash)) {
      this.view.setState(name, HostSyncState.DEGRADED, `DATA_LOSS: the list does not match its own digest (${got.count} of ${res.digest.count} instances and snapshots): not applied`);
      throw new ConnectError("incomplete list", Code.DataLoss);
    }
    conn.incarnation = res.incarnation;
    conn.recordSuccess(Date.now());
    const counts = this.view.replace(name, res.incarnation, Number(res.resourceVersion), res.instances, Date.now(), res.snapshots);
    v.relists++;
    this.relists++;
    this.refreshHostInfo(name, conn, f);
    f.lastDigestCheckMs = f.lastHeardMs = monotonicMs();
    this.logger.debug({ host: name, version: res.resourceVersion, ...counts }, "inventory: host listed");
    return counts;
  }

  /**
   * The host's facts for policies (InventoryService.GetHostInfo), asked after every list (a new
   * incarnation may be a new agent version) and when a watch resumes without them (after an
   * aggregator restart). In the background: the inventory never waits for it. An agent without
   * the method (UNIMPLEMENTED) or one that fails leaves the facts unknown (policies see
   * facts_known false) until the next list.
   */
  private refreshHostInfo(name: string, conn: HostConnection, f: Follow): void {
    // Also a call that throws at once (a test double without the method) stays out of the follow.
    Promise.resolve()
      .then(() => conn.inventory.getHostInfo({}, { timeoutMs: 5000, signal: f.stop.signal }))
      .then(
        (r) => this.view.setHostInfo(name, r.host),
        (e: unknown) => this.logger.debug({ host: name, err: errorMessage(e) }, "inventory: host facts not read"),
      );
  }

  /** Watches from the host's cursor until the stream fails; each message applied in order. */
  private async watch(name: string, conn: HostConnection, f: Follow): Promise<void> {
    const v = this.view.host(name)!;
    if (!v.info) this.refreshHostInfo(name, conn, f);
    const incarnation = v.incarnation;
    const silentMs = Math.max(2000, 3 * this.bookmarkMs);
    // This stream's own signal: aborted by the follower's stop or by the silence timer below.
    const call = new AbortController();
    const onStop = () => call.abort(f.stop.signal.reason);
    f.stop.signal.addEventListener("abort", onStop, { once: true });
    // resync() ends this watch too (already asked: at once).
    const interrupt = f.interrupt.signal;
    const onInterrupt = () => call.abort();
    interrupt.addEventListener("abort", onInterrupt, { once: true });
    if (interrupt.aborted) call.abort();
    // No message (not even a bookmark) for a while: a hung host or a half-open connection.
    let silence: NodeJS.Timeout | undefined;
    const arm = () => {
      clearTimeout(silence);
      silence = setTimeout(() => call.abort(new ConnectError(`no message from the host's watch for ${silentMs} ms`, Code.Unavailable)), silentMs);
    };
    arm();
    try {
      const stream = conn.inventory.watchInstances(
        { resourceVersion: BigInt(v.version), incarnation, bookmarkInterval: durationFromMs(this.bookmarkMs), includeSnapshots: true },
        { signal: call.signal },
      );
      for await (const m of stream) {
        arm();
        const now = Date.now(); // last_seen: reported and persisted
        const nowMono = (f.lastHeardMs = monotonicMs());
        const upserts: Instance[] = [];
        const deletes: string[] = [];
        // Snapshots: the last event per id is its net effect (they come in version order).
        const snapshotOps = new Map<string, Snapshot | undefined>();
        let version = v.version;
        let bookmark: (typeof m.events)[number] | undefined;
        for (const e of m.events) {
          if (e.type === InstanceEventType.BOOKMARK) {
            bookmark = e;
            continue;
          }
          const rv = Number(e.resourceVersion);
          if (!(rv > version)) throw new ConnectError(`event version ${rv} does not follow ${version}`, Code.Internal);
          version = rv;
          if (e.snapshot) {
            snapshotOps.set(e.snapshot.id, e.type === InstanceEventType.DELETED ? undefined : e.snapshot);
            continue;
          }
          if (e.instance && this.dropPending === e.instance.id && e.type !== InstanceEventType.DELETED) {
            this.dropPending = undefined; // injected fault: the change is lost, the cursor moves on
            continue;
          }
          if (e.type === InstanceEventType.DELETED) deletes.push(e.instance!.id);
          else upserts.push(e.instance!);
        }
        if (upserts.length > 0 || deletes.length > 0 || snapshotOps.size > 0 || version !== v.version) {
          // Net effect in order: an id deleted after an upsert in the same message is a delete.
          const lastOp = new Map<string, "put" | "del">();
          for (const e of m.events) if (e.instance && e.type !== InstanceEventType.BOOKMARK) lastOp.set(e.instance.id, e.type === InstanceEventType.DELETED ? "del" : "put");
          const put = new Map<string, Instance>();
          for (const i of upserts) if (lastOp.get(i.id) === "put") put.set(i.id, i);
          const snapshots = { put: [...snapshotOps.values()].filter((x) => x !== undefined), del: [...snapshotOps].filter(([, x]) => x === undefined).map(([id]) => id) };
          this.view.applyChanges(name, incarnation, version, [...put.values()], [...new Set(deletes)].filter((id) => lastOp.get(id) === "del"), now, snapshots);
          this.applied += put.size + deletes.length + snapshotOps.size;
        } else {
          this.view.touch(name, now);
        }
        conn.recordSuccess(now);
        if (bookmark) {
          if (bookmark.incarnation !== incarnation) throw new ConnectError(`the host's incarnation changed to ${bookmark.incarnation}`, Code.OutOfRange);
          if (Number(bookmark.resourceVersion) !== v.version) throw new ConnectError(`bookmark at ${bookmark.resourceVersion} while the view is at ${v.version}`, Code.OutOfRange);
          if (v.state !== HostSyncState.SYNCED) this.view.setState(name, HostSyncState.SYNCED, "");
          else v.lastError = "";
          if (bookmark.digest && nowMono - f.lastDigestCheckMs >= this.options.digestIntervalMs) {
            f.lastDigestCheckMs = nowMono;
            const ours = this.view.digest(name);
            if (ours.count !== bookmark.digest.count || ours.hash !== bookmark.digest.hash) {
              v.digestMismatches++;
              this.logger.warn({ host: name, version: v.version, ours, theirs: { count: bookmark.digest.count, hash: bookmark.digest.hash } }, "inventory: digest mismatch; relisting the host");
              throw new DigestMismatch(`at version ${v.version} the host has ${bookmark.digest.count} instances (${bookmark.digest.hash}), the view ${ours.count} (${ours.hash})`);
            }
          }
        }
      }
      throw new ConnectError("the host ended the inventory watch", Code.Unavailable);
    } catch (e) {
      if (call.signal.aborted && !f.stop.signal.aborted && call.signal.reason instanceof ConnectError) throw call.signal.reason;
      throw e;
    } finally {
      clearTimeout(silence);
      f.stop.signal.removeEventListener("abort", onStop);
      interrupt.removeEventListener("abort", onInterrupt);
      call.abort();
    }
  }
}

/** A list that changed and expired between its pages is read again from the start this often. */
const LIST_RESTARTS = 3;

/**
 * Every page of the host's ListInstances (all of one state: their digest is the whole list's),
 * as one answer. The largest pages the agent gives, to take few round trips.
 */
async function listWholeInventory(conn: HostConnection, signal: AbortSignal): Promise<ListInstancesResponse> {
  for (let attempt = 1; ; attempt++) {
    try {
      // With its snapshots (an agent from before snapshots ignores the flag and lists none).
      const pages = await readAllPages((pageToken) => conn.inventory.listInstances({ pageSize: MAX_PAGE_SIZE, pageToken, includeSnapshots: true }, { signal, timeoutMs: LIST_TIMEOUT_MS }));
      const first = pages[0]!;
      if (pages.some((p) => p.resourceVersion !== first.resourceVersion || p.incarnation !== first.incarnation)) {
        throw new ConnectError("the pages of one list are of different versions", Code.Internal);
      }
      return { ...first, instances: pages.flatMap((p) => p.instances), snapshots: pages.flatMap((p) => p.snapshots), nextPageToken: "" };
    } catch (e) {
      if (attempt < LIST_RESTARTS && ConnectError.from(e).code === Code.OutOfRange && !signal.aborted) continue;
      throw e;
    }
  }
}
