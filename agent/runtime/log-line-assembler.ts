import { create } from "@bufbuild/protobuf";
import { TimestampSchema, type Timestamp } from "@bufbuild/protobuf/wkt";
import { LogLineSchema, type LogLine, type LogStream } from "../../gen/fleetlet/agent/v1/runtime_pb.js";

/**
 * The longest LogLine text in bytes (runtime.md "Logs": a longer line is split with
 * `continued`, never cut or allowed to end the stream).
 */
export const MAX_LINE_BYTES = 64 * 1024;

const NEWLINE = 0x0a;

// fatal: tells us when `raw` must carry the bytes. ignoreBOM: a U+FEFF at the start of a line is
// text the container wrote; the default would silently drop it and the bytes would not round-trip.
const strictUtf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
const lenientUtf8 = new TextDecoder("utf-8", { fatal: false, ignoreBOM: true });

/**
 * Turns one output stream's bytes, in chunks cut anywhere (Docker frames, HTTP reads, Kubernetes
 * log chunks), into LogLines. A line stays bytes until it is complete, so a UTF-8 character cut
 * across chunks comes out intact; "\n" ends a line and is stripped, nothing else is touched (a
 * "\r" before it stays in the text: we do not guess whether it was CRLF or a progress bar).
 *
 * Shared by the Docker and Kubernetes runtimes; one instance per stream (stdout, stderr, tty).
 */
export class LogLineAssembler {
  private readonly stream: LogStream;
  private readonly maxLineBytes: number;
  /** The bytes of the current line not yet emitted. */
  private pending: Uint8Array[] = [];
  private pendingBytes = 0;
  /** A line has started (bytes seen or a piece emitted) and has not ended yet. */
  private inLine = false;
  /** The timestamp of the chunk the current line started in: every piece of the line gets it. */
  private lineTimestamp: Timestamp | undefined;

  constructor(stream: LogStream, options?: { maxLineBytes?: number }) {
    const max = options?.maxLineBytes ?? MAX_LINE_BYTES;
    // 4: a piece must be able to hold one whole UTF-8 character.
    if (!Number.isInteger(max) || max < 4) throw new RangeError(`maxLineBytes must be an integer >= 4, got ${max}`);
    this.stream = stream;
    this.maxLineBytes = max;
  }

  /** Adds a chunk; returns the lines (and over-long pieces) it completed, in order. */
  push(chunk: Uint8Array, timestamp?: Timestamp): LogLine[] {
    const out: LogLine[] = [];
    let start = 0;
    while (start < chunk.length) {
      if (!this.inLine) {
        this.inLine = true;
        this.lineTimestamp = timestamp;
      }
      const nl = chunk.indexOf(NEWLINE, start);
      const end = nl < 0 ? chunk.length : nl;
      if (end > start) this.append(chunk.subarray(start, end), out);
      if (nl < 0) break;
      out.push(this.line(this.take(this.pendingBytes), { continued: false, unterminated: false }));
      this.inLine = false;
      this.lineTimestamp = undefined;
      start = nl + 1;
    }
    return out;
  }

  /** The log ended: the unterminated rest of the line, if any (then the assembler is empty). */
  end(): LogLine[] {
    if (this.pendingBytes === 0) {
      // A line whose last piece went out as `continued` with nothing after it cannot happen:
      // pieces are only cut while more bytes are pending.
      this.inLine = false;
      return [];
    }
    const last = this.line(this.take(this.pendingBytes), { continued: false, unterminated: true });
    this.inLine = false;
    this.lineTimestamp = undefined;
    return [last];
  }

  private append(bytes: Uint8Array, out: LogLine[]): void {
    this.pending.push(bytes);
    this.pendingBytes += bytes.length;
    // Cut only while strictly more than the maximum is pending: a line of exactly
    // maxLineBytes followed by "\n" is one LogLine, and no piece is ever empty.
    while (this.pendingBytes > this.maxLineBytes) {
      const joined = this.take(this.pendingBytes);
      const cut = utf8Boundary(joined, this.maxLineBytes);
      out.push(this.line(joined.subarray(0, cut), { continued: true, unterminated: false }));
      const rest = joined.subarray(cut);
      this.pending = [rest];
      this.pendingBytes = rest.length;
    }
  }

  /** Removes and returns the pending bytes as one array (all of them: `n` is pendingBytes). */
  private take(n: number): Uint8Array {
    const parts = this.pending;
    this.pending = [];
    this.pendingBytes = 0;
    if (parts.length === 1) return parts[0]!;
    const joined = new Uint8Array(n);
    let at = 0;
    for (const p of parts) {
      joined.set(p, at);
      at += p.length;
    }
    return joined;
  }

  private line(bytes: Uint8Array, flags: { continued: boolean; unterminated: boolean }): LogLine {
    const line = create(LogLineSchema, { stream: this.stream, continued: flags.continued, unterminated: flags.unterminated });
    if (this.lineTimestamp) line.timestamp = this.lineTimestamp;
    try {
      line.text = strictUtf8.decode(bytes);
    } catch {
      line.text = lenientUtf8.decode(bytes);
      // A copy: `bytes` may be a view of the caller's chunk.
      line.raw = bytes.slice();
    }
    return line;
  }
}

/**
 * Where to cut `bytes` at or before `max` so no UTF-8 character is split: back up over at most
 * three continuation bytes (10xxxxxx). Bytes that are not UTF-8 anyway are cut at `max`.
 */
function utf8Boundary(bytes: Uint8Array, max: number): number {
  for (let cut = max; cut > max - 4 && cut > 0; cut--) {
    if ((bytes[cut]! & 0xc0) !== 0x80) return cut;
  }
  return max;
}

// RFC 3339 as Docker (Go's time.RFC3339Nano) and Kubernetes write it. Go trims trailing zeros of
// the fraction (and drops it when zero), so 0..9 digits; more digits are accepted and truncated
// to nanoseconds like Go's time.Parse does.
const RFC3339 = /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))$/;

/**
 * Parses an RFC 3339 timestamp ("2026-11-22T03:04:05.123456789Z", "...+01:00") keeping
 * nanosecond precision (a Date would keep milliseconds). Undefined when it is not one.
 */
export function parseRfc3339Nano(text: string): Timestamp | undefined {
  const m = RFC3339.exec(text);
  if (!m) return undefined;
  const [year, month, day, hour, minute, second] = m.slice(1, 7).map(Number) as [number, number, number, number, number, number];
  if (month < 1 || month > 12 || day < 1 || day > daysInMonth(year, month)) return undefined;
  // Go rejects second 60 too, so no engine writes a leap second.
  if (hour > 23 || minute > 59 || second > 59) return undefined;
  let offsetSeconds = 0;
  if (!m[8]) {
    const oh = Number(m[10]);
    const om = Number(m[11]);
    if (oh > 23 || om > 59) return undefined;
    offsetSeconds = (m[9] === "-" ? -1 : 1) * (oh * 3600 + om * 60);
  }
  const nanos = m[7] ? Number(m[7].slice(0, 9).padEnd(9, "0")) : 0;
  const seconds = BigInt(daysFromCivil(year, month, day)) * 86400n + BigInt(hour * 3600 + minute * 60 + second - offsetSeconds);
  return create(TimestampSchema, { seconds, nanos });
}

function daysInMonth(year: number, month: number): number {
  if (month === 2) return year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0) ? 29 : 28;
  return [4, 6, 9, 11].includes(month) ? 30 : 31;
}

/**
 * Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil), so years
 * 0000..0099 are not taken for 19xx as Date.UTC would.
 */
function daysFromCivil(year: number, month: number, day: number): number {
  const y = month <= 2 ? year - 1 : year;
  const era = Math.floor(y / 400);
  const yoe = y - era * 400;
  const doy = Math.floor((153 * (month + (month > 2 ? -3 : 9)) + 2) / 5) + day - 1;
  const doe = yoe * 365 + Math.floor(yoe / 4) - Math.floor(yoe / 100) + doy;
  return era * 146097 + doe - 719468;
}
