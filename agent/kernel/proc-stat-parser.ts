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
  const rest = line.slice(close + 1).trim().split(/\s+/);
  // rest[0] is field 3 (state), so field N is rest[N - 3]. We need up to field 22.
  if (rest.length < 20) {
    throw new ProcParseError(`stat: ${rest.length} fields after comm, need at least 20`);
  }
  return {
    state: rest[0] ?? "",
    utimeTicks: numericField(rest, 14, "utime"),
    stimeTicks: numericField(rest, 15, "stime"),
    startTimeTicks: numericField(rest, 22, "starttime"),
  };
}

function numericField(rest: string[], field: number, name: string): bigint {
  const token = rest[field - 3] ?? "";
  if (!NUMERIC.test(token)) {
    throw new ProcParseError(`stat: field ${field} (${name}) is not a number: ${JSON.stringify(token.slice(0, 32))}`);
  }
  return BigInt(token);
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
