/** The fields of /proc/<pid>/stat the agent uses (proc(5)); times are in clock ticks. */
export interface ProcStat {
  state: string;
  utimeTicks: bigint;
  stimeTicks: bigint;
  /** Field 22: when the process started, in ticks since boot; identifies the process, not just the pid. */
  startTimeTicks: bigint;
}

export class ProcParseError extends Error {
  override name = "ProcParseError";
}

const NUMERIC = /^\d+$/;

/**
 * Parses one /proc/<pid>/stat line. The comm field (2) is in parentheses and may itself contain
 * spaces and ')', so we split at the LAST ')' (proc(5)); the tokens after it start at field 3.
 * Anything malformed is an error, never a silent 0.
 */
export function parseProcStat(line: string): ProcStat {
  const close = line.lastIndexOf(")");
  if (close < 0) throw new ProcParseError("stat: no ')' closing the comm field");
  // Walk the tokens once and slice out only the four we need: this runs for every instance on
  // every sweep, so no split() into ~50 strings (bench/metrics-sweep).
  const n = line.length;
  let i = close + 1;
  let state = "";
  let utime = -1n;
  let stime = -1n;
  let start = -1n;
  let field = 3;
  for (; field <= 22; field++) {
    while (i < n && isSpace(line.charCodeAt(i))) i++;
    if (i >= n) break;
    const from = i;
    while (i < n && !isSpace(line.charCodeAt(i))) i++;
    if (field === 3) state = line.slice(from, i);
    else if (field === 14) utime = numericToken(line, from, i, 14, "utime");
    else if (field === 15) stime = numericToken(line, from, i, 15, "stime");
    else if (field === 22) start = numericToken(line, from, i, 22, "starttime");
  }
  if (field <= 22) {
    const count = line.slice(close + 1).trim().split(/\s+/).filter((t) => t !== "").length;
    throw new ProcParseError(`stat: ${count} fields after comm, need at least 20`);
  }
  return { state, utimeTicks: utime, stimeTicks: stime, startTimeTicks: start };
}

function isSpace(c: number): boolean {
  return c === 32 || c === 10 || c === 9 || c === 13;
}

function numericToken(line: string, from: number, to: number, field: number, name: string): bigint {
  for (let k = from; k < to; k++) {
    const c = line.charCodeAt(k);
    if (c < 48 || c > 57) {
      throw new ProcParseError(`stat: field ${field} (${name}) is not a number: ${JSON.stringify(line.slice(from, Math.min(to, from + 32)))}`);
    }
  }
  return BigInt(line.slice(from, to));
}

/** /proc/<pid>/statm: size and resident, in pages (proc(5)). */
export interface ProcStatm {
  sizePages: bigint;
  residentPages: bigint;
}

export function parseProcStatm(text: string): ProcStatm {
  const tokens = text.trim().split(/\s+/);
  if (tokens.length < 2 || tokens[0] === "") {
    throw new ProcParseError(`statm: ${tokens[0] === "" ? 0 : tokens.length} tokens, need at least 2`);
  }
  const [size = "", resident = ""] = tokens;
  if (!NUMERIC.test(size) || !NUMERIC.test(resident)) {
    throw new ProcParseError("statm: size or resident is not a number");
  }
  return { sizePages: BigInt(size), residentPages: BigInt(resident) };
}

/** A sysfs counter file such as statistics/rx_bytes: one unsigned decimal and a newline. */
export function parseCounter(text: string, what: string): bigint {
  const token = text.trim();
  if (!NUMERIC.test(token)) {
    throw new ProcParseError(`${what}: not a counter: ${JSON.stringify(token.slice(0, 32))}`);
  }
  return BigInt(token);
}
