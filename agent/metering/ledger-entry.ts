import { errorMessage } from "../../lib/error-message.js";
/**
 * One metering ledger entry and its line (metering.md "Entry"): the line is a wire format that
 * downstream schemas read, so it is written by hand in the documented key order, and read back
 * strictly — a line is accepted only if encoding what it says gives the very same bytes.
 */

export const METERING_KINDS = [
  "vm.compute.start",
  "vm.compute.stop",
  "vm.storage.start",
  "vm.storage.stop",
  "snap.storage.start",
  "snap.storage.stop",
] as const;
export type MeteringKind = (typeof METERING_KINDS)[number];

export const METERING_REASONS = [
  "boot",
  "restart",
  "clone",
  "restore",
  "hibernate-wake",
  "stop-user",
  "stop-crash",
  "vm-rm",
  "snap-rm",
  "standby",
  "resize",
] as const;
export type MeteringReason = (typeof METERING_REASONS)[number];

/** Integers >= 0; 0 is omitted from the line. */
export interface LedgerShape {
  cpu?: number;
  memBytes?: number;
  storageBytes?: number;
}

export interface LedgerEntryInput {
  kind: MeteringKind;
  vmId?: string;
  snapshotId?: string;
  sourceSnapshotId?: string;
  reason?: MeteringReason;
  hypervisor?: string;
  shape: LedgerShape;
  /** Nanoseconds since the Unix epoch, UTC. */
  emittedAtNs: bigint;
}

export interface LedgerEntry extends LedgerEntryInput {
  seq: number;
  /** The JSON text as written, without the "\n". */
  line: string;
}

/** A line, or an entry to encode, that is not a valid ledger entry; `message` says why. */
export class LedgerFormatError extends Error {
  override name = "LedgerFormatError";
}

const KIND_SET: ReadonlySet<string> = new Set(METERING_KINDS);
const REASON_SET: ReadonlySet<string> = new Set(METERING_REASONS);

/** Line keys in their required order; the string fields in between are optional. */
const KEY_ORDER = ["seq", "kind", "vm_id", "snapshot_id", "source_snapshot_id", "reason", "hypervisor", "shape", "emitted_at"] as const;
const SHAPE_KEY_ORDER = ["cpu", "mem_bytes", "storage_bytes"] as const;
const STRING_FIELDS = [
  ["vm_id", "vmId"],
  ["snapshot_id", "snapshotId"],
  ["source_snapshot_id", "sourceSnapshotId"],
  ["reason", "reason"],
  ["hypervisor", "hypervisor"],
] as const;
const SHAPE_FIELDS = [
  ["cpu", "cpu"],
  ["mem_bytes", "memBytes"],
  ["storage_bytes", "storageBytes"],
] as const;

function fail(reason: string): never {
  throw new LedgerFormatError(reason);
}

/**
 * The same rules for writing and reading (parseLedgerLine re-encodes what it read), so that
 * nothing is ever written that the agent would refuse to read back at its next start.
 */
function checkSeq(seq: number): void {
  if (!Number.isSafeInteger(seq) || seq < 1) fail(`seq must be an integer >= 1, got ${String(seq)}`);
}

/** Everything but the time, whose range formatEmittedAt checks. */
function checkFields(e: LedgerEntryInput): void {
  if (typeof e !== "object" || e === null) fail("entry must be an object");
  if (!KIND_SET.has(e.kind)) fail(`unknown kind ${JSON.stringify(e.kind)}`);
  if (e.reason !== undefined && e.reason !== ("" as string) && !REASON_SET.has(e.reason)) fail(`unknown reason ${JSON.stringify(e.reason)}`);
  // Unrolled: this runs for every entry appended and every line read at open.
  checkString(e.vmId, "vm_id");
  checkString(e.snapshotId, "snapshot_id");
  checkString(e.sourceSnapshotId, "source_snapshot_id");
  checkString(e.hypervisor, "hypervisor");
  // Downstream pairs starts with stops by id: an entry without its id could never be paired.
  if (e.kind.startsWith("vm.") && !e.vmId) fail(`${e.kind} needs vm_id`);
  if (e.kind.startsWith("snap.") && !e.snapshotId) fail(`${e.kind} needs snapshot_id`);
  const shape: unknown = e.shape;
  if (typeof shape !== "object" || shape === null) fail("shape must be an object");
  checkShapeValue(e.shape.cpu, "cpu");
  checkShapeValue(e.shape.memBytes, "mem_bytes");
  checkShapeValue(e.shape.storageBytes, "storage_bytes");
}

function checkString(v: unknown, key: string): void {
  if (v !== undefined && typeof v !== "string") fail(`${key} must be a string`);
}

function checkShapeValue(v: unknown, key: string): void {
  if (v !== undefined && (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0)) fail(`shape.${key} must be an integer >= 0`);
}

/**
 * Everything after `{"seq":N,` — the part of a line that does not depend on the seq, so the
 * ledger can encode an entry when it is appended and add the seq when the batch is written.
 * Validates the entry (LedgerFormatError).
 */
export function encodeLedgerFields(e: LedgerEntryInput): string {
  checkFields(e);
  const emittedAt = formatEmittedAt(e.emittedAtNs);
  let s = `"kind":"${e.kind}"`;
  if (e.vmId) s += `,"vm_id":${JSON.stringify(e.vmId)}`;
  if (e.snapshotId) s += `,"snapshot_id":${JSON.stringify(e.snapshotId)}`;
  if (e.sourceSnapshotId) s += `,"source_snapshot_id":${JSON.stringify(e.sourceSnapshotId)}`;
  if (e.reason) s += `,"reason":"${e.reason}"`;
  if (e.hypervisor) s += `,"hypervisor":${JSON.stringify(e.hypervisor)}`;
  const { cpu, memBytes, storageBytes } = e.shape;
  let shape = "";
  if (cpu) shape = `"cpu":${cpu}`;
  if (memBytes) shape += `${shape ? "," : ""}"mem_bytes":${memBytes}`;
  if (storageBytes) shape += `${shape ? "," : ""}"storage_bytes":${storageBytes}`;
  return `${s},"shape":{${shape}},"emitted_at":"${emittedAt}"}`;
}

/** The line for `e` at `seq` (no "\n"), metering.md byte for byte. */
export function encodeLedgerLine(seq: number, e: LedgerEntryInput): string {
  checkSeq(seq);
  return `{"seq":${seq},${encodeLedgerFields(e)}`;
}

/** `e` as a parsed line would give it back: empty strings and zero shape values left out. */
export function normalizeLedgerEntry(e: LedgerEntryInput): LedgerEntryInput {
  const out: LedgerEntryInput = { kind: e.kind, shape: {}, emittedAtNs: e.emittedAtNs };
  if (e.vmId) out.vmId = e.vmId;
  if (e.snapshotId) out.snapshotId = e.snapshotId;
  if (e.sourceSnapshotId) out.sourceSnapshotId = e.sourceSnapshotId;
  if (e.reason) out.reason = e.reason;
  if (e.hypervisor) out.hypervisor = e.hypervisor;
  if (e.shape.cpu) out.shape.cpu = e.shape.cpu;
  if (e.shape.memBytes) out.shape.memBytes = e.shape.memBytes;
  if (e.shape.storageBytes) out.shape.storageBytes = e.shape.storageBytes;
  return out;
}

const isPlainObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);

/** Keys must be known and appear in `order` (optional ones may be missing). */
function checkKeyOrder(obj: Record<string, unknown>, order: readonly string[], what: string): void {
  let at = 0;
  for (const key of Object.keys(obj)) {
    const i = order.indexOf(key);
    if (i < 0) fail(`unknown key ${JSON.stringify(key)} in ${what}`);
    if (i < at) fail(`key ${JSON.stringify(key)} out of order in ${what}`);
    at = i + 1;
  }
}

/**
 * A line back into its entry. Strict: exact key order, types, known kinds and reasons, empty
 * strings and zero shape values omitted, canonical numbers and time; anything else is a
 * LedgerFormatError saying what is wrong (never another exception).
 */
export function parseLedgerLine(line: string): LedgerEntry {
  if (typeof line !== "string") fail("line must be a string");
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch (e) {
    fail(`not JSON: ${errorMessage(e)}`);
  }
  if (!isPlainObject(value)) fail("not a JSON object");
  const obj = value as Record<string, unknown>;
  checkKeyOrder(obj, KEY_ORDER, "the entry");
  for (const key of ["seq", "kind", "shape", "emitted_at"]) if (!Object.hasOwn(obj, key)) fail(`missing ${key}`);

  const { seq, kind, shape, emitted_at: emittedAt } = obj;
  if (typeof seq !== "number" || !Number.isSafeInteger(seq) || seq < 1) fail("seq must be an integer >= 1");
  if (typeof kind !== "string" || !KIND_SET.has(kind)) fail(`unknown kind ${JSON.stringify(kind)}`);
  const entry: LedgerEntry = { seq: seq as number, kind: kind as MeteringKind, shape: {}, emittedAtNs: 0n, line };
  for (const [key, field] of STRING_FIELDS) {
    if (!Object.hasOwn(obj, key)) continue;
    const v = obj[key];
    if (typeof v !== "string") fail(`${key} must be a string`);
    if (v === "") fail(`${key} is empty: empty strings are omitted`);
    if (field === "reason" && !REASON_SET.has(v as string)) fail(`unknown reason ${JSON.stringify(v)}`);
    (entry as unknown as Record<string, string>)[field] = v as string;
  }
  if (!isPlainObject(shape)) fail("shape must be an object");
  const shapeObj = shape as Record<string, unknown>;
  checkKeyOrder(shapeObj, SHAPE_KEY_ORDER, "shape");
  for (const [key, field] of SHAPE_FIELDS) {
    if (!Object.hasOwn(shapeObj, key)) continue;
    const v = shapeObj[key];
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) fail(`shape.${key} must be an integer >= 0`);
    if (v === 0) fail(`shape.${key} is 0: zero values are omitted`);
    entry.shape[field] = v as number;
  }
  if (typeof emittedAt !== "string") fail("emitted_at must be a string");
  entry.emittedAtNs = parseEmittedAt(emittedAt as string);

  let canonical: string;
  try {
    canonical = encodeLedgerLine(entry.seq, entry);
  } catch (e) {
    return fail(errorMessage(e));
  }
  if (canonical !== line) fail("not in canonical form (whitespace, escapes, duplicate keys, number or time format)");
  return entry;
}

// ---- emitted_at: RFC 3339, UTC, nanoseconds with trailing zeros trimmed ----

const NS_PER_S = 1_000_000_000n;
const S_PER_DAY = 86_400n;
/** RFC 3339 years have four digits. */
const MIN_YEAR = 0;
const MAX_YEAR = 9999;

/** Proleptic Gregorian date of a day count from 1970-01-01 (H. Hinnant's civil_from_days). */
function civilFromDays(days: number): [number, number, number] {
  const z = days + 719_468;
  const era = Math.floor(z / 146_097);
  const doe = z - era * 146_097;
  const yoe = Math.floor((doe - Math.floor(doe / 1460) + Math.floor(doe / 36_524) - Math.floor(doe / 146_096)) / 365);
  const doy = doe - (365 * yoe + Math.floor(yoe / 4) - Math.floor(yoe / 100));
  const mp = Math.floor((5 * doy + 2) / 153);
  const d = doy - Math.floor((153 * mp + 2) / 5) + 1;
  const m = mp < 10 ? mp + 3 : mp - 9;
  return [yoe + era * 400 + (m <= 2 ? 1 : 0), m, d];
}

/** Inverse of civilFromDays. */
function daysFromCivil(year: number, month: number, day: number): number {
  const y = year - (month <= 2 ? 1 : 0);
  const era = Math.floor(y / 400);
  const yoe = y - era * 400;
  const doy = Math.floor((153 * (month > 2 ? month - 3 : month + 9) + 2) / 5) + day - 1;
  const doe = yoe * 365 + Math.floor(yoe / 4) - Math.floor(yoe / 100) + doy;
  return era * 146_097 + doe - 719_468;
}

const pad = (n: number, width: number) => String(n).padStart(width, "0");

/**
 * The last whole second formatted and parsed: entries cluster in time (one operation shares a
 * timestamp, a ledger is read in order), so the date arithmetic runs about once per second.
 */
let formatCache: { seconds: bigint; text: string } = { seconds: 0n, text: "1970-01-01T00:00:00" };
let parseCache: { text: string; ns: bigint } = { text: "1970-01-01T00:00:00", ns: 0n };

/** `2026-05-20T01:02:03.5Z`: UTC, nanoseconds, trailing zeros trimmed, no fraction when 0. */
export function formatEmittedAt(ns: bigint): string {
  if (typeof ns !== "bigint") fail("emitted_at must be a bigint of nanoseconds");
  // Floor division, so instants before 1970 have a positive fraction.
  let seconds = ns / NS_PER_S;
  let fraction = Number(ns - seconds * NS_PER_S);
  if (fraction < 0) {
    fraction += 1e9;
    seconds -= 1n;
  }
  if (formatCache.seconds !== seconds) formatCache = { seconds, text: formatSeconds(seconds, ns) };
  if (fraction === 0) return `${formatCache.text}Z`;
  let digits = String(fraction).padStart(9, "0");
  let end = digits.length;
  while (digits.charCodeAt(end - 1) === 48 /* "0" */) end--;
  digits = digits.slice(0, end);
  return `${formatCache.text}.${digits}Z`;
}

/** `YYYY-MM-DDTHH:MM:SS` of whole seconds since the epoch. */
function formatSeconds(seconds: bigint, ns: bigint): string {
  let days = seconds / S_PER_DAY;
  let secondOfDay = seconds % S_PER_DAY;
  if (secondOfDay < 0n) {
    secondOfDay += S_PER_DAY;
    days -= 1n;
  }
  // Far outside four-digit years: refuse before converting to a Number.
  if (days < -800_000n || days > 3_000_000n) fail(`emitted_at ${ns} ns is outside years ${MIN_YEAR}..${MAX_YEAR}`);
  const [year, month, day] = civilFromDays(Number(days));
  if (year < MIN_YEAR || year > MAX_YEAR) fail(`emitted_at ${ns} ns is outside years ${MIN_YEAR}..${MAX_YEAR}`);
  const sod = Number(secondOfDay);
  const hms = `${pad(Math.floor(sod / 3600), 2)}:${pad(Math.floor(sod / 60) % 60, 2)}:${pad(sod % 60, 2)}`;
  return `${pad(year, 4)}-${pad(month, 2)}-${pad(day, 2)}T${hms}`;
}

const SECONDS_RE = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})$/;
const FRACTION_RE = /^(?:\.(\d{1,9}))?Z$/;

/**
 * RFC 3339 UTC ("Z") with up to nanosecond precision → ns since the epoch. Trailing zeros are
 * accepted here; parseLedgerLine additionally requires the trimmed form. No leap seconds (":60").
 */
export function parseEmittedAt(text: string): bigint {
  if (typeof text !== "string") fail("emitted_at must be a string");
  const head = text.slice(0, 19);
  const tail = FRACTION_RE.exec(text.slice(19));
  if (!tail) fail(`emitted_at ${JSON.stringify(text)} is not RFC 3339 UTC (YYYY-MM-DDTHH:MM:SS[.fraction]Z)`);
  if (parseCache.text !== head) parseCache = { text: head, ns: parseSeconds(head, text) };
  const fs = (tail as RegExpExecArray)[1];
  return fs === undefined ? parseCache.ns : parseCache.ns + BigInt(fs.padEnd(9, "0"));
}

/** `YYYY-MM-DDTHH:MM:SS` → ns since the epoch of that whole second; `text` is for messages. */
function parseSeconds(head: string, text: string): bigint {
  const m = SECONDS_RE.exec(head);
  if (!m) fail(`emitted_at ${JSON.stringify(text)} is not RFC 3339 UTC (YYYY-MM-DDTHH:MM:SS[.fraction]Z)`);
  const [, ys, mos, ds, hs, mis, ss] = m as RegExpExecArray;
  const year = Number(ys);
  const month = Number(mos);
  const day = Number(ds);
  const hour = Number(hs);
  const minute = Number(mis);
  const second = Number(ss);
  if (month < 1 || month > 12) fail(`emitted_at ${JSON.stringify(text)}: month out of range`);
  const days = daysFromCivil(year, month, day);
  if (day < 1 || civilFromDays(days)[2] !== day) fail(`emitted_at ${JSON.stringify(text)}: day out of range`);
  if (hour > 23 || minute > 59 || second > 59) fail(`emitted_at ${JSON.stringify(text)}: time of day out of range`);
  return (BigInt(days) * S_PER_DAY + BigInt(hour * 3600 + minute * 60 + second)) * NS_PER_S;
}
