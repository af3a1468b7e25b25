/** Figures, percentiles and the --smoke flag shared by every benchmark in bench/. */

export interface BenchArgs {
  smoke: boolean;
}

export function parseBenchArgs(argv: string[] = process.argv.slice(2)): BenchArgs {
  for (const a of argv) {
    if (a !== "--smoke") throw new Error(`unknown argument ${JSON.stringify(a)} (only --smoke)`);
  }
  return { smoke: argv.includes("--smoke") };
}

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

/** Prints a block of `label  value` rows; the last thing a benchmark writes. */
export function printFigures(title: string, rows: readonly (readonly [string, string])[]): void {
  const width = Math.max(...rows.map(([label]) => label.length));
  const lines = [`== ${title}`, ...rows.map(([label, value]) => `${label.padEnd(width)}  ${value}`)];
  process.stdout.write(`${lines.join("\n")}\n`);
}

/** A failure that is not about timing (RPC error, wrong count): the benchmark exits 1. */
export class Malfunction extends Error {}

export function check(condition: unknown, message: string): asserts condition {
  if (!condition) throw new Malfunction(message);
}
