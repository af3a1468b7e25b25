import { writeFileSync } from "node:fs";

/** Figures, percentiles and the --smoke and --json flags shared by every benchmark in bench/. */

export interface BenchArgs {
  smoke: boolean;
  /** --json FILE: printFigures also writes the figures there, machine-readable (bench/quick.ts). */
  json?: string;
}

/** Set by parseBenchArgs from --json FILE; printFigures writes there. */
let figuresFile: string | undefined;

export function parseBenchArgs(argv: string[] = process.argv.slice(2)): BenchArgs {
  const args: BenchArgs = { smoke: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === "--smoke") args.smoke = true;
    else if (a === "--json" && argv[i + 1] !== undefined) args.json = argv[++i];
    else if (a.startsWith("--json=") && a.length > 7) args.json = a.slice(7);
    else throw new Error(`unknown argument ${JSON.stringify(a)} (only --smoke and --json FILE)`);
  }
  figuresFile = args.json;
  return args;
}

/**
 * One figure of a benchmark, machine-readable: `name` is stable (snake_case, unit in it where it
 * helps), `better` says which way is an improvement. bench/quick.ts compares these with
 * docs/benchmarks-baseline.json.
 */
export interface Figure {
  name: string;
  value: number;
  unit: string;
  better: "lower" | "higher";
}

/** Shorthand for a Figure. */
export const figure = (name: string, value: number, unit: string, better: Figure["better"]): Figure => ({ name, value, unit, better });

/** Nearest-rank percentile (p in 0..100) of unsorted values; NaN when empty. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))]!;
}

export const median = (values: readonly number[]): number => percentile(values, 50);

export function fmt(n: number, digits = 2): string {
  if (!Number.isFinite(n)) return String(n);
  return n.toFixed(digits);
}

/** "met" / "NOT met": benchmarks report targets, they never fail on timing. */
export const verdict = (ok: boolean): string => (ok ? "met" : "NOT met");

/** Progress goes to stderr so the figures stay the last lines of stdout. */
export function progress(message: string): void {
  process.stderr.write(`[${new Date().toISOString().slice(11, 23)}] ${message}\n`);
}

/**
 * Prints a block of `label  value` rows; the last thing a benchmark writes. With --json FILE, also
 * writes {title, rows, figures} there (figures that are not finite numbers are left out).
 */
export function printFigures(title: string, rows: readonly (readonly [string, string])[], figures: readonly Figure[] = []): void {
  const width = Math.max(...rows.map(([label]) => label.length));
  const lines = [`== ${title}`, ...rows.map(([label, value]) => `${label.padEnd(width)}  ${value}`)];
  process.stdout.write(`${lines.join("\n")}\n`);
  if (figuresFile !== undefined) {
    const finite = figures.filter((f) => Number.isFinite(f.value));
    writeFileSync(figuresFile, `${JSON.stringify({ title, rows, figures: finite }, null, 2)}\n`);
  }
}

/** A failure that is not about timing (RPC error, wrong count): the benchmark exits 1. */
export class Malfunction extends Error {}

export function check(condition: unknown, message: string): asserts condition {
  if (!condition) throw new Malfunction(message);
}
