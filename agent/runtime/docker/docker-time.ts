import { create } from "@bufbuild/protobuf";
import { TimestampSchema, type Timestamp } from "@bufbuild/protobuf/wkt";

/**
 * Docker's times, kept in nanoseconds as BigInt end to end: the Engine speaks RFC 3339 with
 * nanoseconds (inspect, /info SystemTime) and integer nanoseconds since the epoch (events'
 * `timeNano`, ~1.8e18, far past Number's 2^53), and takes "seconds.nanoseconds" for an events
 * `since`. A Number or a Date anywhere in between would lose the nanoseconds — and a resume
 * point rounded down replays events, one rounded up loses them.
 */

const NS_PER_SECOND = 1_000_000_000n;

// Go's zero time.Time, which Docker prints for "never" (FinishedAt of a running container).
const GO_ZERO_YEAR = "0001-01-01";

const RFC3339 = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})$/;

/**
 * An RFC 3339 time as nanoseconds since the epoch; undefined for Go's zero time, an empty
 * string or anything that does not parse (a field Docker left unset is not a date in year 1).
 */
export function parseDockerTime(text: string | undefined | null): bigint | undefined {
  if (!text || text.startsWith(GO_ZERO_YEAR)) return undefined;
  const m = RFC3339.exec(text);
  if (!m) return undefined;
  const [, y, mo, d, h, mi, s, frac, zone] = m;
  const ms = Date.UTC(Number(y), Number(mo) - 1, Number(d), Number(h), Number(mi), Number(s));
  if (Number.isNaN(ms)) return undefined;
  let offsetSeconds = 0;
  if (zone !== "Z") {
    const sign = zone!.startsWith("-") ? -1 : 1;
    offsetSeconds = sign * (Number(zone!.slice(1, 3)) * 3600 + Number(zone!.slice(4, 6)) * 60);
  }
  const nanos = BigInt((frac ?? "").padEnd(9, "0"));
  return (BigInt(ms / 1000) - BigInt(offsetSeconds)) * NS_PER_SECOND + nanos;
}

/** Nanoseconds since the epoch → protobuf Timestamp, exactly. */
export function timestampFromNs(ns: bigint): Timestamp {
  let seconds = ns / NS_PER_SECOND;
  let nanos = ns % NS_PER_SECOND;
  if (nanos < 0n) {
    // BigInt division truncates toward zero; Timestamp wants nanos in [0, 1e9).
    seconds -= 1n;
    nanos += NS_PER_SECOND;
  }
  return create(TimestampSchema, { seconds, nanos: Number(nanos) });
}

/** An RFC 3339 time → Timestamp, or undefined when Docker left it unset. */
export function timestampFromDockerTime(text: string | undefined | null): Timestamp | undefined {
  const ns = parseDockerTime(text);
  return ns === undefined ? undefined : timestampFromNs(ns);
}

/** Nanoseconds → the Engine's "seconds.nanoseconds" form for events `since` / `until`. */
export function dockerSince(ns: bigint): string {
  const seconds = ns / NS_PER_SECOND;
  const nanos = ns % NS_PER_SECOND;
  return `${seconds}.${nanos.toString().padStart(9, "0")}`;
}

/** Wall clock now in nanoseconds (ms precision), for synthetic events and a fallback bookmark. */
export function nowNs(): bigint {
  return BigInt(Date.now()) * 1_000_000n;
}
