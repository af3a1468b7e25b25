/**
 * `npm run bench:quick`: the short benchmarks (a few minutes in all), their figures compared with
 * the machine-readable baseline committed next to docs/benchmarks.md
 * (docs/benchmarks-baseline.json). Prints every figure that moved more than 20% (either way),
 * then the full table. A report for the closing note of an issue, not a CI gate: it exits 0
 * whatever it finds, also when a benchmark fails or is skipped (both are said in the output).
 *
 *   node dist/bench/quick.js                    run, compare, write the figures to a temp file
 *   node dist/bench/quick.js --write-baseline   run and make this run the baseline
 *                                               (with --only: replace just those benchmarks)
 *   node dist/bench/quick.js --only agent-rpc,metering   a subset
 *   node dist/bench/quick.js --compare FILE     no run: compare a results file written before
 *
 * Each benchmark runs on its own, one after the other, with `--json FILE` (bench/common/report.ts):
 * the figures it prints, machine-readable. Benchmarks that need root or tools missing here print
 * SKIPPED and have no figures.
 */
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { Figure } from "./common/report.js";

const REPO_ROOT = fileURLToPath(new URL("../../", import.meta.url));
const DEFAULT_BASELINE = join(REPO_ROOT, "docs", "benchmarks-baseline.json");
const THRESHOLD_PERCENT = 20;
/** A benchmark that runs longer than this is stopped (SIGTERM: it cleans up) and reported failed. */
const BENCH_TIMEOUT_MS = 10 * 60_000;

interface PlanEntry {
  name: string;
  args: string[];
  /** What it needs, for the plan line (the benchmark itself decides to skip). */
  needs?: string;
  /** Run only when named with --only (figures too noisy in this mode for a default report). */
  optional?: boolean;
}

/**
 * The short benchmarks: full runs of those that take about half a minute, the reduced mode of
 * the longer ones (fanout full ~70 s, wake ~113 s, tls ~2 min: 2,000 farm agents and six
 * 1,000-host storms; its smoke run measures the same ratios at 100 hosts in ~25 s; policies full
 * ~2 min, its smoke run the same measurements over 10,000 instances in ~12 s). inventory
 * --smoke (20 hosts, ~9 s) only with --only: its latencies are a few ms over a few dozen samples,
 * and moved by more than 20% from one run to the next on an idle machine. metering-chaos is left out (its figures are counts of
 * lost/duplicated entries, and its full run takes 8 minutes).
 */
const PLAN: PlanEntry[] = [
  { name: "metrics-sweep", args: [] },
  { name: "agent-rpc", args: [] },
  { name: "metering", args: [] },
  { name: "fanout", args: ["--smoke"] },
  { name: "slow-consumers", args: [] },
  { name: "tls", args: ["--smoke"] },
  { name: "inventory", args: ["--smoke"], optional: true },
  { name: "policies", args: ["--smoke"] },
  { name: "conntrack", args: [], needs: "root, network namespaces" },
  { name: "runtime", args: [], needs: "root, dockerd" },
  { name: "wake", args: ["--smoke"], needs: "root, network namespaces" },
];

interface FigureValue {
  value: number;
  unit: string;
  better: Figure["better"];
}

interface BenchResult {
  args: string[];
  seconds: number;
  /** "ok", "skipped: reason" or "failed: reason". */
  status: string;
  figures: Record<string, FigureValue>;
  /** The rows the benchmark printed (results file only, not the baseline). */
  rows?: [string, string][];
}

interface Results {
  note?: string;
  date: string;
  machine: Record<string, string | number>;
  command: string;
  benches: Record<string, BenchResult>;
}

interface Options {
  baseline: string;
  writeBaseline: boolean;
  only?: Set<string>;
  compare?: string;
  out?: string;
  verbose: boolean;
}

function parseArgs(argv: string[]): Options {
  const o: Options = { baseline: DEFAULT_BASELINE, writeBaseline: false, verbose: false };
  const value = (i: number, flag: string) => {
    const v = argv[i + 1];
    if (v === undefined) throw new Error(`${flag} needs a value`);
    return v;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === "--baseline") o.baseline = value(i++, a);
    else if (a === "--write-baseline") o.writeBaseline = true;
    else if (a === "--only") o.only = new Set(value(i++, a).split(",").map((s) => s.trim()).filter(Boolean));
    else if (a === "--compare") o.compare = value(i++, a);
    else if (a === "--out") o.out = value(i++, a);
    else if (a === "--verbose") o.verbose = true;
    else throw new Error(`unknown argument ${JSON.stringify(a)} (--baseline FILE, --write-baseline, --only a,b, --compare FILE, --out FILE, --verbose)`);
  }
  if (o.only) {
    const known = new Set(PLAN.map((p) => p.name));
    for (const n of o.only) if (!known.has(n)) throw new Error(`--only: unknown benchmark ${JSON.stringify(n)} (known: ${[...known].join(", ")})`);
  }
  return o;
}

function machine(): Record<string, string | number> {
  const cpus = os.cpus();
  return {
    cpu: cpus[0]?.model.trim() ?? "unknown",
    nproc: os.availableParallelism(),
    memory_gb: Math.round(os.totalmem() / 1024 ** 3),
    kernel: os.release(),
    node: process.version,
    hostname: os.hostname(),
  };
}

const log = (line: string) => process.stderr.write(`[bench:quick ${new Date().toISOString().slice(11, 19)}] ${line}\n`);

let current: ReturnType<typeof spawn> | undefined;

/** Runs one benchmark with --json; its stdout (the figure block) is kept, its progress dropped unless --verbose. */
async function runOne(entry: PlanEntry, dir: string, verbose: boolean): Promise<BenchResult> {
  const script = join(REPO_ROOT, "dist", "bench", entry.name, "main.js");
  const jsonPath = join(dir, `${entry.name}.json`);
  const started = performance.now();
  const seconds = () => Math.round((performance.now() - started) / 100) / 10;
  if (!existsSync(script)) return { args: entry.args, seconds: 0, status: `failed: ${script} not found (npx tsc -p . first)`, figures: {} };
  const child = spawn(process.execPath, [script, ...entry.args, "--json", jsonPath], { cwd: REPO_ROOT, stdio: ["ignore", "pipe", "pipe"] });
  current = child;
  let stdout = "";
  let stderrTail = "";
  child.stdout.on("data", (d: Buffer) => {
    stdout += d.toString();
    if (verbose) process.stderr.write(d);
  });
  child.stderr.on("data", (d: Buffer) => {
    stderrTail = (stderrTail + d.toString()).slice(-4000);
    if (verbose) process.stderr.write(d);
  });
  const timer = setTimeout(() => child.kill("SIGTERM"), BENCH_TIMEOUT_MS);
  const code = await new Promise<number | string>((resolve) => child.on("close", (c, signal) => resolve(c ?? signal ?? "unknown")));
  clearTimeout(timer);
  current = undefined;

  let written: { rows?: [string, string][]; figures?: Figure[] } = {};
  try {
    written = JSON.parse(readFileSync(jsonPath, "utf8")) as typeof written;
  } catch {
    // No figures written: the benchmark failed before printing them.
  }
  const figures: Record<string, FigureValue> = {};
  for (const f of written.figures ?? []) figures[f.name] = { value: f.value, unit: f.unit, better: f.better };
  const skipped = written.rows?.find(([label]) => label === "SKIPPED");
  let status = "ok";
  if (skipped) status = `skipped: ${skipped[1]}`;
  else if (code !== 0) {
    const lastError = stderrTail.split("\n").find((l) => /^(MALFUNCTION|ERROR)/.test(l)) ?? stderrTail.trim().split("\n").pop() ?? "";
    status = `failed: exit ${code}${lastError ? ` (${lastError.slice(0, 200)})` : ""}`;
  } else if (Object.keys(figures).length === 0) status = `failed: no figures written${stdout ? "" : " and nothing printed"}`;
  return { args: entry.args, seconds: seconds(), status, figures, rows: written.rows };
}

interface Row {
  bench: string;
  name: string;
  unit: string;
  base?: number;
  now?: number;
  /** Percent change, or undefined when it cannot be computed. */
  change?: number;
  moved: boolean;
  note: string;
}

function compare(baseline: Results | undefined, now: Results): Row[] {
  const rows: Row[] = [];
  const benches = new Set([...Object.keys(now.benches), ...Object.keys(baseline?.benches ?? {})]);
  for (const bench of benches) {
    const b = baseline?.benches[bench];
    const n = now.benches[bench];
    if (!n) continue; // not run this time (--only)
    const sameMode = !b || JSON.stringify(b.args) === JSON.stringify(n.args);
    const names = new Set([...Object.keys(n.figures), ...Object.keys(b?.figures ?? {})]);
    for (const name of names) {
      const bf = b?.figures[name];
      const nf = n.figures[name];
      const row: Row = { bench, name, unit: (nf ?? bf)!.unit, base: bf?.value, now: nf?.value, moved: false, note: "" };
      if (!sameMode) row.note = `mode differs (baseline ${b!.args.join(" ") || "full"})`;
      else if (bf === undefined) row.note = baseline ? "new figure" : "";
      else if (nf === undefined) row.note = n.status === "ok" ? "not reported" : n.status.split(":")[0]!;
      else {
        if (bf.value === 0) row.change = nf.value === 0 ? 0 : undefined;
        else row.change = ((nf.value - bf.value) / Math.abs(bf.value)) * 100;
        row.moved = row.change === undefined || Math.abs(row.change) > THRESHOLD_PERCENT;
        const direction = nf.value === bf.value ? 0 : nf.value > bf.value ? 1 : -1;
        const better = (nf.better === "higher" ? direction : -direction) > 0;
        if (row.moved) row.note = `${better ? "better" : "WORSE"}${row.change === undefined ? " (from 0)" : ""}`;
      }
      rows.push(row);
    }
  }
  return rows;
}

function num(v: number | undefined): string {
  if (v === undefined) return "-";
  if (Number.isInteger(v)) return v.toLocaleString("en-US");
  const a = Math.abs(v);
  const digits = a >= 1000 ? 0 : a >= 100 ? 1 : a >= 1 ? 2 : 3;
  return v.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

function table(rows: Row[]): string[] {
  const cells = rows.map((r) => [
    `${r.bench}/${r.name}`,
    `${num(r.base)}`,
    `${num(r.now)}`,
    r.unit,
    r.change === undefined ? "" : `${r.change >= 0 ? "+" : ""}${r.change.toFixed(1)}%`,
    r.note,
  ]);
  const header = ["figure", "baseline", "now", "unit", "change", ""];
  const all = [header, ...cells];
  const widths = header.map((_, i) => Math.max(...all.map((c) => c[i]!.length)));
  const right = new Set([1, 2, 4]);
  return all.map((c) => c.map((cell, i) => (right.has(i) ? cell.padStart(widths[i]!) : cell.padEnd(widths[i]!))).join("  ").trimEnd());
}

function describeMachine(m: Record<string, string | number> | undefined): string {
  if (!m) return "unknown machine";
  return `${m.nproc} CPU ${m.cpu}, ${m.memory_gb} GB, Linux ${m.kernel}, Node ${m.node}`;
}

function report(baseline: Results | undefined, baselinePath: string, now: Results, resultsPath: string | undefined): void {
  const out: string[] = [];
  const rows = compare(baseline, now);
  out.push(`== bench:quick (${now.date}, ${describeMachine(now.machine)})`);
  if (baseline) {
    out.push(`baseline: ${baselinePath} (${baseline.date}, ${describeMachine(baseline.machine)})`);
    const differs = ["cpu", "nproc", "node"].filter((k) => baseline.machine[k] !== now.machine[k]);
    if (differs.length > 0) out.push(`NOTE: not the baseline's machine (${differs.join(", ")} differ): compare with care`);
  } else out.push(`baseline: none at ${baselinePath} (write one with --write-baseline)`);
  for (const [bench, r] of Object.entries(now.benches)) {
    const mode = r.args.join(" ") || "full";
    out.push(`  ${bench.padEnd(14)} ${mode.padEnd(8)} ${String(r.seconds).padStart(6)} s  ${r.status}`);
  }
  if (baseline) {
    const moved = rows.filter((r) => r.moved);
    out.push("", `moved more than ${THRESHOLD_PERCENT}% since the baseline: ${moved.length === 0 ? "none" : moved.length}`);
    if (moved.length > 0) out.push(...table(moved).map((l) => `  ${l}`));
  }
  out.push("", "all figures:", ...table(rows).map((l) => `  ${l}`));
  const total = Object.values(now.benches).reduce((a, r) => a + r.seconds, 0);
  out.push("", `benchmarks ran ${Math.round(total)} s${resultsPath ? `; figures written to ${resultsPath}` : ""}`);
  process.stdout.write(`${out.join("\n")}\n`);
}

function readResults(path: string): Results | undefined {
  if (!existsSync(path)) return undefined;
  return JSON.parse(readFileSync(path, "utf8")) as Results;
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  const baseline = readResults(o.baseline);
  let now: Results;
  let resultsPath: string | undefined;
  if (o.compare) {
    now = readResults(o.compare) ?? (() => { throw new Error(`--compare: ${o.compare} not found`); })();
    resultsPath = o.compare;
  } else {
    const plan = PLAN.filter((p) => (o.only ? o.only.has(p.name) : !p.optional));
    const dir = mkdtempSync(join(os.tmpdir(), "fleetlet-bench-quick-"));
    now = { date: new Date().toISOString().slice(0, 10), machine: machine(), command: "npm run bench:quick", benches: {} };
    try {
      for (const entry of plan) {
        log(`${entry.name} ${entry.args.join(" ") || "(full)"}${entry.needs ? ` [needs ${entry.needs}]` : ""}`);
        const r = await runOne(entry, dir, o.verbose);
        now.benches[entry.name] = r;
        log(`${entry.name}: ${r.status} in ${r.seconds} s, ${Object.keys(r.figures).length} figures`);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
    resultsPath = o.out ?? join(os.tmpdir(), `fleetlet-bench-quick-${new Date().toISOString().replace(/[:.]/g, "-")}.json`);
    writeFileSync(resultsPath, `${JSON.stringify(now, null, 2)}\n`);
    if (o.writeBaseline) {
      const note = "Figures of `npm run bench:quick` (bench/quick.ts) on the machine below; it prints every figure that moved more than 20% from these. Refresh with `npm run bench:quick -- --write-baseline` on the same machine class (with --only, only those benchmarks are replaced).";
      // With --only, the other benchmarks keep their baseline figures.
      const lean = Object.fromEntries(Object.entries(now.benches).map(([name, { rows: _rows, ...r }]) => [name, r]));
      const benches = o.only && baseline ? { ...baseline.benches, ...lean } : lean;
      writeFileSync(o.baseline, `${JSON.stringify({ note, ...now, command: "npm run bench:quick -- --write-baseline", benches }, null, 2)}\n`);
      log(`baseline written: ${o.baseline}${o.only && baseline ? ` (${[...o.only].join(", ")} replaced)` : ""}`);
    }
  }
  report(o.writeBaseline ? undefined : baseline, o.baseline, now, resultsPath);
}

for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.on(signal, () => {
    // The running benchmark stops what it started on the same signal; then stop here.
    if (current) {
      current.kill(signal);
      current.on("close", () => process.exit(130));
    } else process.exit(130);
  });
}

main().then(
  () => process.exit(0),
  (e: unknown) => {
    // Not a gate: even its own failure is a report line and exit 0.
    process.stdout.write(`bench:quick could not run: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(0);
  },
);
