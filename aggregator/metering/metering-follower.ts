import { create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { HostMeteringSchema, type HostMetering } from "../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { sleepUnlessAborted } from "../../lib/abort-race.js";
import type { Logger } from "../../lib/rpc/logger.js";
import { codeName, isConnectionTrouble } from "../../lib/rpc/status-codes.js";
import type { HostConnection } from "../hosts/host-connection.js";
import type { HostRegistry } from "../hosts/host-registry.js";
import { HostFollowers, type HostFollow } from "../hosts/host-followers.js";
import { MeteringGapError, MeteringLedgerChangedError, type MeteringStore } from "./metering-store.js";
import { errorMessage } from "../../lib/error-message.js";
import { monotonicMs } from "../../lib/monotonic-clock.js";

const BACKOFF_INITIAL_MS = 200;
const BACKOFF_MAX_MS = 10_000;
/** The agent hears how far we merged at most this often (its retention follows). */
const ACK_INTERVAL_MS = 1000;
/** A host with metering off: how often its connection's incarnation is looked at (no call). */
const OFF_POLL_MS = 1000;
/** ... and when it is asked again anyway, in case no inventory follow reports a restart. */
const OFF_RECHECK_MS = 5 * 60_000;

interface Follow extends HostFollow {
  status: HostMetering;
  /** When the oldest entry not yet merged was first seen behind (for lag_seconds; monotonic ms). */
  behindSinceMs: number | undefined;
}

/**
 * The aggregator's side of metering.md "The fleet feed": per host, WatchMeteringEntries from the
 * store's committed cursor; each message is merged in one store transaction together with the
 * cursor (so a crash at any point re-delivers, and the store makes re-delivery a no-op); then the
 * agent is told how far we merged (AcknowledgeMeteringEntries) so its retention may proceed. A
 * replaced ledger (OUT_OF_RANGE naming another ledger_id) is recorded and followed from seq 1.
 * A host that is slow or down only delays its own part of the feed.
 */
export class MeteringFollower extends HostFollowers<Follow> {
  /** Entries merged since start (metrics). */
  merged = 0;

  constructor(
    private readonly store: MeteringStore,
    hosts: HostRegistry,
    private readonly logger: Logger,
  ) {
    super(hosts);
    this.startReconciling();
  }

  /** The metering part of a host's status. */
  status(host: string): HostMetering | undefined {
    const f = this.follows.get(host);
    if (!f) return undefined;
    const lagSeconds = f.behindSinceMs === undefined ? 0 : (monotonicMs() - f.behindSinceMs) / 1000;
    const cursor = this.store.cursor(host);
    return create(HostMeteringSchema, {
      ...f.status,
      lagSeconds,
      // Accepted already (the cursor moved to it): no longer pending, even before the next stream.
      pendingLedgerId: f.status.pendingLedgerId === cursor?.ledgerId ? "" : f.status.pendingLedgerId,
      ledgerChanges: cursor?.ledgerChanges ?? f.status.ledgerChanges,
      acceptedGaps: this.store.acceptedGaps(host).length,
    });
  }

  protected newFollow(name: string): Follow {
    const cursor = this.store.cursor(name);
    return {
      stop: new AbortController(),
      done: Promise.resolve(),
      status: create(HostMeteringSchema, { ledgerId: cursor?.ledgerId ?? "", mergedSeq: BigInt(cursor?.seq ?? 0), ledgerChanges: cursor?.ledgerChanges ?? 0 }),
      behindSinceMs: undefined,
    };
  }

  protected async follow(name: string, f: Follow): Promise<void> {
    let delay = BACKOFF_INITIAL_MS;
    while (!f.stop.signal.aborted) {
      const conn = this.hosts.get(name);
      if (!conn) return;
      try {
        await this.stream(name, conn, f);
        delay = BACKOFF_INITIAL_MS;
      } catch (e) {
        if (f.stop.signal.aborted) return;
        const err = ConnectError.from(e);
        const ledger = err.code === Code.OutOfRange ? this.reportedLedger(name, err.rawMessage, f) : undefined;
        if (ledger === "first") {
          delay = BACKOFF_INITIAL_MS;
          continue;
        }
        if (ledger === "pending") {
          // Waits for an admin (AcceptMeteringGap): asked again with the usual backoff.
          await sleepUnlessAborted(delay, f.stop.signal);
          delay = Math.min(delay * 2, BACKOFF_MAX_MS);
          continue;
        }
        if (err.code === Code.FailedPrecondition && (await this.meteringOff(name, conn, f))) {
          delay = BACKOFF_INITIAL_MS;
          continue;
        }
        // The entries we need are gone from the agent: say where it now starts (what an
        // operator would resume at with AcceptMeteringGap); never skip on our own.
        const firstRetained = err.code === Code.OutOfRange ? /first_retained_seq=(\d+)/.exec(err.rawMessage)?.[1] : undefined;
        f.status.agentFirstRetainedSeq = firstRetained ? BigInt(firstRetained) : 0n;
        f.status.lastError = e instanceof MeteringGapError ? `DATA_LOSS: ${err.rawMessage}` : `${codeName(err.code)}: ${err.rawMessage}`;
        // Connection trouble (down, slow, a stream reset by HTTP/2, e.g. after a long stop) is
        // normal and shows in the host's status; anything else is worth a warning.
        if (!isConnectionTrouble(err.code, err.rawMessage)) this.logger.warn({ host: name, err: f.status.lastError }, "metering: following the host failed; retrying");
      }
      await sleepUnlessAborted(delay, f.stop.signal);
      delay = Math.min(delay * 2, BACKOFF_MAX_MS);
    }
  }

  /** One WatchMeteringEntries stream, merged message by message. */
  private async stream(name: string, conn: HostConnection, f: Follow): Promise<void> {
    const cursor = this.store.cursor(name);
    const ledgerId = cursor?.ledgerId ?? "";
    const fromSeq = BigInt((cursor?.seq ?? 0) + 1);
    // Acknowledge what is durably merged (store.merge committed it) at most once a second, and
    // once more a second after the last merge (a trailing ack): without it, a burst that ends
    // inside the second is never fully acknowledged and the agent's retention waits for the
    // next entry, however long that takes. Paced on the monotonic clock: a wall clock stepped
    // back would hold the next acknowledgement (and the agent's retention) for the step.
    let lastAck = Number.NEGATIVE_INFINITY;
    let acking = false;
    let acked = 0;
    let toAck = 0;
    let ackLedger = "";
    let trailing: NodeJS.Timeout | undefined;
    const sendAck = () => {
      clearTimeout(trailing);
      trailing = undefined;
      if (acking || toAck <= acked || f.stop.signal.aborted) return;
      acking = true;
      lastAck = monotonicMs();
      const seq = toAck;
      conn.metering
        .acknowledgeMeteringEntries({ ledgerId: ackLedger, seq: BigInt(seq) }, { timeoutMs: 5000 })
        .then(() => (acked = Math.max(acked, seq)))
        .catch((e: unknown) => this.logger.debug({ host: name, err: errorMessage(e) }, "metering: acknowledgement failed (retried with the next)"))
        .finally(() => {
          acking = false;
          if (toAck > acked) trailing ??= setTimeout(sendAck, ACK_INTERVAL_MS);
        });
    };
    try {
      for await (const m of conn.metering.watchMeteringEntries({ fromSeq, ledgerId }, { signal: f.stop.signal })) {
        // What the agent says of itself counts before the merge: a merge that fails (a full
        // store) must show the agent ahead, not LAG 0 from the last message merged.
        if (m.ledgerId === f.status.ledgerId || f.status.ledgerId === "") {
          f.status.agentLastSeq = m.lastSeq;
          f.status.agentReportedAt = timestampNow();
          this.updateLag(f);
        }
        const entries = m.entries.map((e) => ({ seq: Number(e.seq), line: e.line }));
        // A heartbeat (no entries) of the ledger already followed has nothing to merge.
        const rows = entries.length === 0 && m.ledgerId === f.status.ledgerId ? [] : this.store.merge(name, m.ledgerId, entries);
        this.merged += rows.length;
        const merged = entries.at(-1)?.seq ?? Number(f.status.mergedSeq);
        f.status.ledgerId = m.ledgerId;
        f.status.mergedSeq = BigInt(merged);
        f.status.agentLastSeq = m.lastSeq;
        f.status.agentReportedAt = timestampNow();
        f.status.lastError = "";
        f.status.pendingLedgerId = "";
        f.status.agentFirstRetainedSeq = 0n;
        f.status.meteringOff = false;
        this.updateLag(f);
        if (merged > toAck) {
          toAck = merged;
          ackLedger = m.ledgerId;
        }
        const sinceAck = monotonicMs() - lastAck;
        if (sinceAck >= ACK_INTERVAL_MS) sendAck();
        else trailing ??= setTimeout(sendAck, ACK_INTERVAL_MS - sinceAck);
      }
    } finally {
      clearTimeout(trailing);
    }
    throw new ConnectError("the agent ended the metering stream", Code.Unavailable);
  }

  /**
   * FAILED_PRECONDITION from the watch: is metering off on the agent (`--metering off`)? If its
   * GetMeteringStatus says so, that is the host's metering state, not an error: shown as such,
   * not logged, and not retried until the agent restarts (the only way it can be turned on),
   * which its connection's incarnation tells (set by the inventory follow), or a rare recheck.
   * False when it is not off (or cannot say: an agent from before GetMeteringStatus).
   */
  private async meteringOff(name: string, conn: HostConnection, f: Follow): Promise<boolean> {
    let status;
    try {
      status = await conn.metering.getMeteringStatus({}, { timeoutMs: 5000, signal: f.stop.signal });
    } catch {
      return false;
    }
    if (status.enabled) return false;
    if (!f.status.meteringOff) this.logger.info({ host: name, incarnation: status.incarnation }, "metering: the host runs with --metering off; nothing to follow until it restarts");
    f.status.meteringOff = true;
    f.status.lastError = "";
    f.status.agentFirstRetainedSeq = 0n;
    f.status.agentLastSeq = 0n;
    f.status.lagEntries = 0n;
    f.status.agentReportedAt = timestampNow();
    f.behindSinceMs = undefined;
    // The connection's incarnation may still be the one before this agent's (the inventory
    // follow relists a moment later): only a value that is neither that one nor this agent's
    // means another restart.
    const since = monotonicMs();
    const before = conn.incarnation;
    while (!f.stop.signal.aborted && monotonicMs() - since < OFF_RECHECK_MS) {
      const current = this.hosts.get(name)?.incarnation ?? "";
      if (current !== "" && current !== status.incarnation && current !== before) break;
      await sleepUnlessAborted(OFF_POLL_MS, f.stop.signal);
    }
    return true;
  }

  /** lag_entries from what the agent last said and what is merged; lag_seconds' start. */
  private updateLag(f: Follow): void {
    f.status.lagEntries = f.status.agentLastSeq > f.status.mergedSeq ? f.status.agentLastSeq - f.status.mergedSeq : 0n;
    if (f.status.lagEntries === 0n) f.behindSinceMs = undefined;
    else f.behindSinceMs ??= monotonicMs();
  }

  /**
   * OUT_OF_RANGE naming a ledger other than ours: the host's ledger was replaced. Recorded in
   * the store (nothing of the old one is mixed with the new), then followed from seq 1.
   */
  /**
   * OUT_OF_RANGE naming the agent's current ledger. With no cursor yet (a new store) it is the
   * host's first ledger, followed from seq 1. Another ledger than the cursor's: the agent's ledger was lost or replaced (or
   * another agent answers at the address). Never followed on its own (security.md): the host's
   * status shows the pending ledger and what to run, and nothing is merged until an admin
   * accepts the change (AcceptMeteringGap with that ledger id moves the cursor to it).
   */
  private reportedLedger(name: string, message: string, f: Follow): "first" | "pending" | undefined {
    const current = /current ledger_id=([0-9a-f]+)/.exec(message)?.[1];
    const cursor = this.store.cursor(name);
    if (!current || current === cursor?.ledgerId) return undefined;
    if (!cursor) {
      // The host's first ledger (a new store): followed without acceptance, from seq 1.
      this.store.merge(name, current, []);
      f.status.ledgerId = current;
      f.status.mergedSeq = 0n;
      return "first";
    }
    const refused = new MeteringLedgerChangedError(name, cursor.ledgerId, cursor.seq, current);
    if (f.status.pendingLedgerId !== current) {
      this.logger.warn({ host: name, from: cursor.ledgerId, merged_seq: cursor.seq, to: current }, "metering: the host reports another ledger; nothing merged until an admin accepts the change");
    }
    f.status.pendingLedgerId = current;
    f.status.lastError = `FAILED_PRECONDITION: ${refused.message}`;
    return "pending";
  }

}
