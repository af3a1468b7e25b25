/**
 * Go's time.ParseDuration and Duration.String, for standby policies (standby.md): operators
 * write "300s" or "1h30m", the agent stores the canonical form ("5m0s", "1h30m0s") so equal
 * durations compare equal. Nanoseconds as a Number: exact up to 2^53 ns (104 days), far above
 * the 30-day bound on idle timeouts.
 */

const UNIT_NS: Record<string, number> = {
  ns: 1,
  us: 1e3,
  "µs": 1e3,
  "μs": 1e3,
  ms: 1e6,
  s: 1e9,
  m: 60e9,
  h: 3600e9,
};

export class DurationSyntaxError extends Error {
  override name = "DurationSyntaxError";
}

/** Parses a Go duration ("1h30m", "1.5s", "-5m", "0") into nanoseconds. */
export function parseGoDuration(text: string): number {
  let s = text;
  let sign = 1;
  if (s.startsWith("-") || s.startsWith("+")) {
    if (s[0] === "-") sign = -1;
    s = s.slice(1);
  }
  if (s === "0") return 0;
  if (s === "") throw new DurationSyntaxError(`invalid duration ${JSON.stringify(text)}`);
  let total = 0;
  const re = /^(\d*)(?:\.(\d*))?([a-zµμ]+)/;
  while (s !== "") {
    const m = re.exec(s);
    if (!m || (m[1] === "" && (m[2] ?? "") === "")) throw new DurationSyntaxError(`invalid duration ${JSON.stringify(text)}`);
    const unit = UNIT_NS[m[3] ?? ""];
    if (unit === undefined) throw new DurationSyntaxError(`unknown unit ${JSON.stringify(m[3])} in duration ${JSON.stringify(text)}`);
    const whole = m[1] === "" ? 0 : Number(m[1]);
    const frac = m[2] ?? "";
    // Fraction in integer arithmetic: round(frac × unit / 10^digits).
    const fracNs = frac === "" ? 0 : Math.round((Number(frac.slice(0, 15)) * unit) / 10 ** Math.min(frac.length, 15));
    total += whole * unit + fracNs;
    if (!Number.isSafeInteger(total)) throw new DurationSyntaxError(`duration ${JSON.stringify(text)} is out of range`);
    s = s.slice(m[0].length);
  }
  return sign * total;
}

/** Go's Duration.String: "1h30m0s", "5m0s", "1.5s", "500ms", "0s". */
export function formatGoDuration(ns: number): string {
  if (ns === 0) return "0s";
  const neg = ns < 0;
  let u = Math.abs(ns);
  let out: string;
  if (u < 1e9) {
    // Below a second: the largest unit that keeps a whole part, with a trimmed fraction.
    const [unit, name] = u < 1e3 ? [1, "ns"] : u < 1e6 ? [1e3, "µs"] : [1e6, "ms"];
    out = `${fraction(u, unit)}${name}`;
  } else {
    const h = Math.floor(u / 3600e9);
    u -= h * 3600e9;
    const m = Math.floor(u / 60e9);
    u -= m * 60e9;
    out = `${h > 0 ? `${h}h` : ""}${h > 0 || m > 0 ? `${m}m` : ""}${fraction(u, 1e9)}s`;
  }
  return neg ? `-${out}` : out;
}

function fraction(value: number, unit: number): string {
  const whole = Math.floor(value / unit);
  const rest = value - whole * unit;
  if (rest === 0) return String(whole);
  const digits = String(unit).length - 1;
  return `${whole}.${String(rest).padStart(digits, "0").replace(/0+$/, "")}`;
}
