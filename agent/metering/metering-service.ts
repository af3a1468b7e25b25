import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { MeteringEntrySchema, type MeteringService, type MeteringEntry } from "../../gen/fleetlet/agent/v1/metering_pb.js";
import { invalidArgument } from "../../lib/rpc/field-error.js";
import { followSource } from "../../lib/rpc/follow-source.js";
import type { LifecycleEntry } from "./lifecycle-entries.js";
import { errorMessage } from "../../lib/error-message.js";

const DEFAULT_LIMIT = 1000;
const MAX_LIMIT = 10_000;
/** Entries per WatchMeteringEntries message. */
const WATCH_PAGE = 1000;
/** A quiet WatchMeteringEntries stream sends an empty message with last_seq this often. */
export const WATCH_HEARTBEAT_MS = 5000;

/** A durable ledger entry as the service reads it (the ledger's LedgerEntry). */
export type LedgerEntryView = LifecycleEntry & { seq: number; line: string };

/** What the service needs of the ledger (agent/metering/ledger.ts). */
export interface LedgerReader {
  readonly ledgerId: string;
  readonly lastSeq: number;
  readonly firstRetainedSeq: number;
  /** Highest seq the consumer acknowledged (GetMeteringStatus). */
  readonly acknowledgedSeq: number;
  read(fromSeq: number, limit: number): LedgerEntryView[];
  subscribe(listener: (entries: LedgerEntryView[]) => void): () => void;
  acknowledge(seq: number): void;
}

/** What GetMeteringStatus says besides the ledger's position. */
export interface MeteringStatusSource {
  /** The registry's incarnation (a restart, the only way metering is turned on or off, changes it). */
  readonly incarnation: string;
  /** Entries committed in the registry, not yet in the ledger. */
  readonly pendingMeteringEntries: number;
}

/** Reads, watches and acknowledgements of an agent with `--metering off` (no ledger). */
export const METERING_OFF_MESSAGE = "metering is off on this agent (--metering off)";

/**
 * MeteringService (metering.md): reads of the ledger by seq, a watch that sends the backlog then
 * live entries as they become durable, and the consumer's acknowledgement (retention). A watch
 * always reads from the ledger, never from a per-stream queue: a slow client only falls behind,
 * it cannot make the agent buffer without bound or lose entries. With no ledger (`--metering
 * off`, seed 000's NopRecorder) those three are FAILED_PRECONDITION rather than an empty ledger:
 * an empty answer would read as "nothing happened here", which is not known; GetMeteringStatus
 * says which it is.
 */
export function createMeteringService(ledger: LedgerReader | undefined, source: MeteringStatusSource): ServiceImpl<typeof MeteringService> {
  if (!ledger) return meteringOffService(source);
  /** The first seq to send, or OUT_OF_RANGE naming what the client should resume from. */
  const start = (fromSeq: bigint, ledgerId: string): number => {
    if (ledgerId !== "" && ledgerId !== ledger.ledgerId) {
      throw outOfRange(`ledger_id ${JSON.stringify(ledgerId.slice(0, 40))} is not this agent's ledger`);
    }
    if (fromSeq > BigInt(Number.MAX_SAFE_INTEGER)) throw invalidArgument("from_seq", "is too large");
    const from = Math.max(1, Number(fromSeq));
    if (from < ledger.firstRetainedSeq && ledger.lastSeq >= 1 && fromSeq > 0n) {
      throw outOfRange(`from_seq ${from} is no longer retained`);
    }
    if (from > ledger.lastSeq + 1) throw outOfRange(`from_seq ${from} is beyond the last entry ${ledger.lastSeq}`);
    return Math.max(from, ledger.firstRetainedSeq);
  };
  const outOfRange = (what: string) =>
    new ConnectError(`${what}; current ledger_id=${ledger.ledgerId} first_retained_seq=${ledger.firstRetainedSeq} last_seq=${ledger.lastSeq}`, Code.OutOfRange);

  return {
    readMeteringEntries(req) {
      const limit = req.limit === 0 ? DEFAULT_LIMIT : req.limit;
      if (limit > MAX_LIMIT) throw invalidArgument("limit", `must be at most ${MAX_LIMIT}, got ${limit}`);
      const from = start(req.fromSeq, req.ledgerId);
      const entries = ledger.read(from, limit).map(toMessage);
      const last = entries.at(-1);
      return {
        entries,
        nextSeq: last ? last.seq + 1n : BigInt(from),
        ledgerId: ledger.ledgerId,
        firstRetainedSeq: BigInt(ledger.firstRetainedSeq),
        lastSeq: BigInt(ledger.lastSeq),
      };
    },

    async *watchMeteringEntries(req, context) {
      let next = start(req.fromSeq, req.ledgerId);
      let lastSent = performance.now();
      const subscribe = (notify: () => void) => {
        const unsubscribe = ledger.subscribe(notify);
        const timer = setInterval(notify, WATCH_HEARTBEAT_MS / 2);
        return () => {
          unsubscribe();
          clearInterval(timer);
        };
      };
      yield* followSource(context.signal, subscribe, () => {
        if (next > ledger.lastSeq) {
          // A quiet ledger still says where it stands now and then, so the aggregator's
          // "agent last seq" (and the lag it shows) is known to be current, not just old.
          if (performance.now() - lastSent < WATCH_HEARTBEAT_MS) return undefined;
          lastSent = performance.now();
          return { entries: [], ledgerId: ledger.ledgerId, lastSeq: BigInt(ledger.lastSeq) };
        }
        const page = ledger.read(next, WATCH_PAGE);
        // Retention moved past where this stream stood (it was too slow for too long).
        if (page.length === 0 || page[0]!.seq !== next) throw outOfRange(`seq ${next} is no longer retained`);
        next = page.at(-1)!.seq + 1;
        lastSent = performance.now();
        return { entries: page.map(toMessage), ledgerId: ledger.ledgerId, lastSeq: BigInt(ledger.lastSeq) };
      });
    },

    acknowledgeMeteringEntries(req) {
      if (req.ledgerId !== ledger.ledgerId) throw outOfRange(`ledger_id ${JSON.stringify(req.ledgerId.slice(0, 40))} is not this agent's ledger`);
      if (req.seq > BigInt(ledger.lastSeq)) throw invalidArgument("seq", `${req.seq} is beyond the last entry ${ledger.lastSeq}`);
      try {
        ledger.acknowledge(Number(req.seq));
      } catch (e) {
        throw new ConnectError(`metering: ${errorMessage(e)}`, Code.Unavailable); // closing
      }
      return { acknowledgedSeq: req.seq };
    },

    getMeteringStatus() {
      return {
        enabled: true,
        ledgerId: ledger.ledgerId,
        lastSeq: BigInt(ledger.lastSeq),
        firstRetainedSeq: BigInt(ledger.firstRetainedSeq),
        acknowledgedSeq: BigInt(ledger.acknowledgedSeq),
        pendingEntries: BigInt(source.pendingMeteringEntries),
        incarnation: source.incarnation,
      };
    },
  };
}

/** The service of an agent that does not meter: it says so, every time, and what is owed. */
function meteringOffService(source: MeteringStatusSource): ServiceImpl<typeof MeteringService> {
  const off = () => new ConnectError(METERING_OFF_MESSAGE, Code.FailedPrecondition);
  return {
    readMeteringEntries() {
      throw off();
    },
    // biome-ignore lint/correctness/useYield: it has nothing to send; the call fails at once.
    async *watchMeteringEntries() {
      throw off();
    },
    acknowledgeMeteringEntries() {
      throw off();
    },
    getMeteringStatus() {
      // Entries an earlier run committed for the ledger wait for metering to be on again.
      return { enabled: false, pendingEntries: BigInt(source.pendingMeteringEntries), incarnation: source.incarnation };
    },
  };
}

function toMessage(e: LedgerEntryView): MeteringEntry {
  return create(MeteringEntrySchema, {
    seq: BigInt(e.seq),
    kind: e.kind,
    vmId: e.vmId ?? "",
    snapshotId: e.snapshotId ?? "",
    sourceSnapshotId: e.sourceSnapshotId ?? "",
    reason: e.reason ?? "",
    hypervisor: e.hypervisor ?? "",
    shape: { cpu: BigInt(e.shape.cpu ?? 0), memBytes: BigInt(e.shape.memBytes ?? 0), storageBytes: BigInt(e.shape.storageBytes ?? 0) },
    emittedAt: { seconds: e.emittedAtNs / 1_000_000_000n, nanos: Number(e.emittedAtNs % 1_000_000_000n) },
    line: e.line,
  });
}
