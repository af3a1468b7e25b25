import { readFileSync } from "node:fs";

/** The fields of /proc/<pid>/stat the daemons use (proc(5)); times are in clock ticks. */
export interface ProcStat {
  state: string;
  /** Field 5 (pgrp): the process group; equal to the pid for a group leader. */
  processGroup: number;
  utimeTicks: bigint;
  stimeTicks: bigint;
  /** Field 22: when the process started, in ticks since boot; identifies the process, not just the pid. */
  startTimeTicks: bigint;
}

/** /proc/<pid>/statm: size and resident, in pages (proc(5)). */
export interface ProcStatm {
  sizePages: bigint;
  residentPages: bigint;
}

export class ProcParseError extends Error {
  override name = "ProcParseError";
}

// The parsers work on the bytes of a read (latin1), not on strings: they run for every
// instance on every sweep, and decoding plus splitting cost more than the reads themselves
// (bench/metrics-sweep). The string forms below wrap them for tests and one-off reads.

const CLOSE_PAREN = 0x29;

/**
 * Parses one /proc/<pid>/stat line. The comm field (2) is in parentheses and may itself contain
 * spaces and ')', so we split at the LAST ')' (proc(5)); the tokens after it start at field 3.
 * Anything malformed is an error, never a silent 0.
 */
export function parseProcStatBytes(buf: Uint8Array, length: number): ProcStat {
  let close = length - 1;
  while (close >= 0 && buf[close] !== CLOSE_PAREN) close--;
  if (close < 0) throw new ProcParseError("stat: no ')' closing the comm field");
  let i = close + 1;
  let state = "";
  let pgrp = -1n;
  let utime = -1n;
  let stime = -1n;
  let start = -1n;
  let field = 3;
  for (; field <= 22; field++) {
    while (i < length && isSpace(buf[i]!)) i++;
    if (i >= length) break;
    const from = i;
    while (i < length && !isSpace(buf[i]!)) i++;
    if (field === 3) state = latin1(buf, from, i);
    else if (field === 5) pgrp = number(buf, from, i, `stat: field 5 (pgrp)`);
    else if (field === 14) utime = number(buf, from, i, `stat: field 14 (utime)`);
    else if (field === 15) stime = number(buf, from, i, `stat: field 15 (stime)`);
    else if (field === 22) start = number(buf, from, i, `stat: field 22 (starttime)`);
  }
  if (field <= 22) {
    const count = latin1(buf, close + 1, length).trim().split(/\s+/).filter((t) => t !== "").length;
    throw new ProcParseError(`stat: ${count} fields after comm, need at least 20`);
  }
  return { state, processGroup: Number(pgrp), utimeTicks: utime, stimeTicks: stime, startTimeTicks: start };
}

export function parseProcStatmBytes(buf: Uint8Array, length: number): ProcStatm {
  const tokens: [number, number][] = [];
  let i = 0;
  while (tokens.length < 2) {
    while (i < length && isSpace(buf[i]!)) i++;
    if (i >= length) break;
    const from = i;
    while (i < length && !isSpace(buf[i]!)) i++;
    tokens.push([from, i]);
  }
  if (tokens.length < 2) throw new ProcParseError(`statm: ${tokens.length} tokens, need at least 2`);
  const [[s0, e0], [s1, e1]] = tokens as [[number, number], [number, number]];
  return { sizePages: number(buf, s0, e0, "statm: size is not a number"), residentPages: number(buf, s1, e1, "statm: resident is not a number") };
}

/** A sysfs counter file such as statistics/rx_bytes: one unsigned decimal and a newline. */
export function parseCounterBytes(buf: Uint8Array, length: number, what: string): bigint {
  let from = 0;
  let to = length;
  while (from < to && isSpace(buf[from]!)) from++;
  while (to > from && isSpace(buf[to - 1]!)) to--;
  if (from === to) throw new ProcParseError(`${what}: not a counter: ""`);
  return number(buf, from, to, `${what}: not a counter`);
}

export function parseProcStat(line: string): ProcStat {
  const b = Buffer.from(line, "latin1");
  return parseProcStatBytes(b, b.length);
}

/**
 * /proc/<pid>/stat of `pid` for one-off reads (a pid file's owner, a process group, a start
 * time at registration), or undefined when it cannot be read: there is no such process.
 * Content that does not parse throws ProcParseError, since an unreadable line is not proof that
 * the process is gone.
 */
export function readProcStat(pid: number, procRoot = "/proc"): ProcStat | undefined {
  let line: string;
  try {
    line = readFileSync(`${procRoot}/${pid}/stat`, "latin1");
  } catch {
    return undefined;
  }
  return parseProcStat(line);
}

export function parseProcStatm(text: string): ProcStatm {
  const b = Buffer.from(text, "latin1");
  return parseProcStatmBytes(b, b.length);
}

export function parseCounter(text: string, what: string): bigint {
  const b = Buffer.from(text, "latin1");
  return parseCounterBytes(b, b.length, what);
}

function isSpace(c: number): boolean {
  return c === 32 || c === 10 || c === 9 || c === 13;
}

function latin1(buf: Uint8Array, from: number, to: number): string {
  return Buffer.from(buf.buffer, buf.byteOffset + from, to - from).toString("latin1");
}

/** Decimal digits only; up to 15 digits through a Number (exact), longer ones through BigInt. */
function number(buf: Uint8Array, from: number, to: number, what: string): bigint {
  let n = 0;
  for (let k = from; k < to; k++) {
    const d = buf[k]! - 48;
    if (d < 0 || d > 9) {
      throw new ProcParseError(`${what}${what.includes("not a") ? "" : " is not a number"}: ${JSON.stringify(latin1(buf, from, Math.min(to, from + 32)))}`);
    }
    n = n * 10 + d;
  }
  return to - from <= 15 ? BigInt(n) : BigInt(latin1(buf, from, to));
}
