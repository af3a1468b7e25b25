import { formatDurationMs } from "../lib/duration.js";
import { formatBytes, formatTable } from "./table.js";
import { errorMessage } from "../lib/error-message.js";

/**
 * `fleetlet metering intervals`: what downstream billing computes from the fleet feed
 * (metering.md "The fleet feed", last bullet). Each `*.start` is paired with the next `*.stop` of
 * the same family and id — vm.compute and vm.storage by vm_id, snap.storage by snapshot_id — per
 * host and ledger, since ids are only unique on their host and a replaced ledger is never mixed
 * with its successor. Pure: entries in, intervals out; the command does the reading.
 *
 * Resizes (metering.md "shape changed"): the agent closes each open interval with reason
 * `resize` and the old shape and reopens it with the new one at the same `emitted_at`, so an
 * interval is split at every resize and each piece carries its own shape; the pieces' durations
 * add up to the unsplit interval's. A closed interval whose stop carries another shape than its
 * start is a shape change that was not metered (agents before resizes were): it is billed at
 * the start's shape and reported (`stopShape`), never silently.
 */

/** One entry of the merged feed (FleetMeteringEntry), or of one agent's ledger (host ""). */
export interface FeedEntry {
  /** Position in the fleet feed; absent for entries read from one agent. */
  fleetSeq?: number;
  host: string;
  ledgerId: string;
  /** The ledger line, metering.md's JSON entry. */
  line: string;
}

/** A ledger line's fields, with the wire names (metering.md "Entry"). */
export interface MeteringLine {
  seq: number;
  kind: string;
  vm_id?: string;
  snapshot_id?: string;
  source_snapshot_id?: string;
  reason?: string;
  hypervisor?: string;
  shape: MeteringShape;
  emitted_at: string;
}

export interface MeteringShape {
  cpu?: number;
  mem_bytes?: number;
  storage_bytes?: number;
}

export const INTERVAL_FAMILIES = ["vm.compute", "vm.storage", "snap.storage"] as const;
export type IntervalFamily = (typeof INTERVAL_FAMILIES)[number];

/**
 * - closed: a start and its stop.
 * - open: started, not stopped yet (duration so far, as of `asOfMs`).
 * - no-start: a stop whose start is not in what was read (before --from).
 * - no-stop: a start followed by another start of the same id with no stop between (the agent
 *   never writes this; reported rather than paired wrongly).
 * - ledger-replaced: started in a ledger the host has since replaced; it can never close.
 */
export type IntervalStatus = "closed" | "open" | "no-start" | "no-stop" | "ledger-replaced";

export interface IntervalEnd {
  fleetSeq?: number;
  seq: number;
  reason?: string;
  emittedAt: string;
  sourceSnapshotId?: string;
}

export interface MeteringInterval {
  host: string;
  ledgerId: string;
  family: IntervalFamily;
  /** vm_id for vm.*, snapshot_id for snap.storage. */
  id: string;
  status: IntervalStatus;
  start?: IntervalEnd;
  stop?: IntervalEnd;
  /** The resources the interval bills: the start's shape (the stop's when there is no start). */
  shape: MeteringShape;
  /** closed only: the stop's shape when it differs from the start's (an unmetered resize). */
  stopShape?: MeteringShape;
  hypervisor?: string;
  /** closed: stop − start; open: asOf − start (never negative); otherwise undefined. */
  durationMs?: number;
}

/** An entry that could not be paired (unparseable line, unknown kind, missing id). */
export interface FeedProblem {
  fleetSeq?: number;
  host: string;
  message: string;
}

/** Parses a ledger line leniently enough to report what is wrong with it. */
export function parseMeteringLine(line: string): MeteringLine {
  let v: unknown;
  try {
    v = JSON.parse(line);
  } catch (e) {
    throw new Error(`not JSON: ${errorMessage(e)}`);
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw new Error("not a JSON object");
  const o = v as Record<string, unknown>;
  if (typeof o.seq !== "number" || !Number.isSafeInteger(o.seq)) throw new Error("seq is not an integer");
  if (typeof o.kind !== "string") throw new Error("kind is missing");
  if (typeof o.emitted_at !== "string") throw new Error("emitted_at is missing");
  const out: MeteringLine = { seq: o.seq, kind: o.kind, shape: {}, emitted_at: o.emitted_at };
  for (const k of ["vm_id", "snapshot_id", "source_snapshot_id", "reason", "hypervisor"] as const) {
    if (typeof o[k] === "string" && o[k] !== "") out[k] = o[k] as string;
  }
  if (typeof o.shape === "object" && o.shape !== null) {
    const s = o.shape as Record<string, unknown>;
    for (const k of ["cpu", "mem_bytes", "storage_bytes"] as const) {
      if (typeof s[k] === "number" && s[k] !== 0) out.shape[k] = s[k] as number;
    }
  }
  return out;
}

/** RFC 3339 UTC with up to 9 fractional digits → nanoseconds since the epoch. */
export function emittedAtNs(text: string): bigint {
  const m = /^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?Z$/.exec(text);
  const seconds = m ? Date.parse(`${m[1]}Z`) : NaN;
  if (!m || Number.isNaN(seconds)) throw new Error(`emitted_at ${JSON.stringify(text)} is not an RFC 3339 UTC time`);
  return BigInt(seconds) * 1_000_000n + BigInt((m[2] ?? "").padEnd(9, "0"));
}

/** "4cpu 1Gi 10Gi": cpu, memory, storage; "-" in place of a resource that is 0. */
export function formatShape(shape: MeteringShape | undefined): string {
  const s = shape ?? {};
  if (!s.cpu && !s.mem_bytes && !s.storage_bytes) return "-";
  const bytes = (n: number | undefined) => (n ? formatBytes(n).replace(/\.0(?=[KMGTP]i$)/, "") : "-");
  return `${s.cpu ? `${s.cpu}cpu` : "-"} ${bytes(s.mem_bytes)} ${bytes(s.storage_bytes)}`;
}

/** A duration for a table: whole seconds from 1 s on ("1m30s"), milliseconds below ("250ms"). */
export function formatIntervalDuration(ms: number | undefined): string {
  if (ms === undefined) return "-";
  const sign = ms < 0 ? "-" : "";
  const abs = Math.abs(ms);
  return sign + formatDurationMs(abs < 1000 ? Math.round(abs) : Math.round(abs / 1000) * 1000);
}

interface Pending {
  order: number;
  interval: MeteringInterval;
  startNs: bigint;
}

/**
 * Feed entries in, intervals out. Entries are taken in feed order (one ledger's entries are in
 * seq order in the fleet feed); add() them page by page, then finish().
 */
export class IntervalPairer {
  private readonly open = new Map<string, Pending>();
  private readonly done: { order: number; interval: MeteringInterval }[] = [];
  /** The ledger each host was last seen with. */
  private readonly currentLedger = new Map<string, string>();
  readonly problems: FeedProblem[] = [];
  private count = 0;

  add(entry: FeedEntry): void {
    const order = this.count++;
    const problem = (message: string) => this.problems.push({ ...(entry.fleetSeq !== undefined ? { fleetSeq: entry.fleetSeq } : {}), host: entry.host, message });
    let line: MeteringLine;
    let ns: bigint;
    try {
      line = parseMeteringLine(entry.line);
      ns = emittedAtNs(line.emitted_at);
    } catch (e) {
      problem(errorMessage(e));
      return;
    }
    const m = /^(vm\.compute|vm\.storage|snap\.storage)\.(start|stop)$/.exec(line.kind);
    if (!m) {
      problem(`unknown kind ${JSON.stringify(line.kind)}`);
      return;
    }
    const family = m[1] as IntervalFamily;
    const id = family === "snap.storage" ? line.snapshot_id : line.vm_id;
    if (!id) {
      problem(`${line.kind} without ${family === "snap.storage" ? "snapshot_id" : "vm_id"}`);
      return;
    }
    this.currentLedger.set(entry.host, entry.ledgerId);
    const end: IntervalEnd = {
      ...(entry.fleetSeq !== undefined ? { fleetSeq: entry.fleetSeq } : {}),
      seq: line.seq,
      ...(line.reason ? { reason: line.reason } : {}),
      emittedAt: line.emitted_at,
      ...(line.source_snapshot_id ? { sourceSnapshotId: line.source_snapshot_id } : {}),
    };
    const key = JSON.stringify([entry.host, entry.ledgerId, family, id]);
    const pending = this.open.get(key);
    const base = { host: entry.host, ledgerId: entry.ledgerId, family, id, ...(line.hypervisor ? { hypervisor: line.hypervisor } : {}) };
    if (m[2] === "start") {
      if (pending) {
        this.open.delete(key);
        this.done.push({ order: pending.order, interval: { ...pending.interval, status: "no-stop" } });
      }
      this.open.set(key, { order, startNs: ns, interval: { ...base, status: "open", start: end, shape: line.shape } });
      return;
    }
    if (!pending) {
      this.done.push({ order, interval: { ...base, status: "no-start", stop: end, shape: line.shape } });
      return;
    }
    this.open.delete(key);
    const durationMs = Math.round(Number(ns - pending.startNs) / 1e6);
    const stopShape = sameShape(pending.interval.shape, line.shape) ? undefined : line.shape;
    this.done.push({ order: pending.order, interval: { ...pending.interval, hypervisor: pending.interval.hypervisor ?? line.hypervisor, status: "closed", stop: end, durationMs, stopShape } });
  }

  /** Every interval seen, in the order of its first entry; open ones measured up to `asOfMs`. */
  finish(asOfMs: number): MeteringInterval[] {
    const all = [...this.done];
    for (const p of this.open.values()) {
      if (this.currentLedger.get(p.interval.host) !== p.interval.ledgerId) {
        all.push({ order: p.order, interval: { ...p.interval, status: "ledger-replaced" } });
      } else {
        const durationMs = Math.max(0, Math.round(asOfMs - Number(p.startNs) / 1e6));
        all.push({ order: p.order, interval: { ...p.interval, durationMs } });
      }
    }
    return all.sort((a, b) => a.order - b.order).map((x) => clean(x.interval));
  }
}

function sameShape(a: MeteringShape, b: MeteringShape): boolean {
  return a.cpu === b.cpu && a.mem_bytes === b.mem_bytes && a.storage_bytes === b.storage_bytes;
}

/** Drops undefined fields, so results compare and print cleanly. */
function clean(i: MeteringInterval): MeteringInterval {
  return Object.fromEntries(Object.entries(i).filter(([, v]) => v !== undefined)) as unknown as MeteringInterval;
}

/** All at once: for tests and small inputs. */
export function pairIntervals(entries: Iterable<FeedEntry>, asOfMs: number): { intervals: MeteringInterval[]; problems: FeedProblem[] } {
  const pairer = new IntervalPairer();
  for (const e of entries) pairer.add(e);
  return { intervals: pairer.finish(asOfMs), problems: pairer.problems };
}

function reasons(i: MeteringInterval): string {
  const start = i.start ? i.start.reason ?? "-" : "?";
  return i.stop ? `${start}/${i.stop.reason ?? "-"}` : start;
}

export function intervalsTable(intervals: MeteringInterval[]): string {
  return formatTable(
    ["HOST", "KIND", "ID", "STATUS", "START", "STOP", "DURATION", "SHAPE", "REASONS"],
    intervals.map((i) => [
      i.host || "-",
      i.family,
      i.id,
      i.status,
      i.start?.emittedAt ?? "-",
      i.stop?.emittedAt ?? (i.status === "open" ? "open" : "-"),
      formatIntervalDuration(i.durationMs),
      i.stopShape ? `${formatShape(i.shape)} (stopped as ${formatShape(i.stopShape)})` : formatShape(i.shape),
      reasons(i),
    ]),
  );
}

/** "2 closed, 1 open, 1 without a start": the counts, in a fixed order, zeros left out. */
export function intervalsSummary(intervals: MeteringInterval[], fromFleetSeq = 1): string {
  const n = (s: IntervalStatus) => intervals.filter((i) => i.status === s).length;
  const parts = [`${n("closed")} closed`, `${n("open")} open`];
  if (n("no-start")) parts.push(`${n("no-start")} stopped without a start${fromFleetSeq > 1 ? ` (started before fleet_seq ${fromFleetSeq})` : ""}`);
  if (n("no-stop")) parts.push(`${n("no-stop")} started again without a stop`);
  if (n("ledger-replaced")) parts.push(`${n("ledger-replaced")} left open in a replaced ledger`);
  const resized = intervals.filter((i) => i.stop?.reason === "resize").length;
  if (resized) parts.push(`${resized} split by a resize`);
  const unmetered = intervals.filter((i) => i.stopShape).length;
  if (unmetered) parts.push(`${unmetered} stopped with another shape than started (a resize not metered; billed at the start's shape)`);
  return parts.join(", ");
}

/** The JSON form (snake_case, as the ledger's own fields). */
export function intervalJson(i: MeteringInterval): Record<string, unknown> {
  const end = (e: IntervalEnd | undefined) =>
    e && {
      ...(e.fleetSeq !== undefined ? { fleet_seq: e.fleetSeq } : {}),
      seq: e.seq,
      ...(e.reason ? { reason: e.reason } : {}),
      emitted_at: e.emittedAt,
      ...(e.sourceSnapshotId ? { source_snapshot_id: e.sourceSnapshotId } : {}),
    };
  return {
    host: i.host,
    ledger_id: i.ledgerId,
    kind: i.family,
    ...(i.family === "snap.storage" ? { snapshot_id: i.id } : { vm_id: i.id }),
    status: i.status,
    ...(i.start ? { start: end(i.start) } : {}),
    ...(i.stop ? { stop: end(i.stop) } : {}),
    ...(i.durationMs !== undefined ? { duration_ms: i.durationMs } : {}),
    shape: i.shape,
    ...(i.stopShape ? { stop_shape: i.stopShape } : {}),
    ...(i.hypervisor ? { hypervisor: i.hypervisor } : {}),
  };
}
