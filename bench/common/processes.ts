/**
 * Child processes, temp dirs and /proc readings for the benchmarks. Everything a benchmark starts
 * is registered for cleanup and stopped by its own pid, also when the benchmark fails or is
 * interrupted.
 */
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { Malfunction, parseBenchArgs, type BenchArgs } from "./report.js";
import { errorMessage } from "../../lib/error-message.js";
import { parseProcStat } from "../../lib/proc-stat-parser.js";

/** The checkout root: this file runs as dist/bench/common/processes.js. */
export const REPO_ROOT = fileURLToPath(new URL("../../../", import.meta.url));
export const FLEETLET_BIN = join(REPO_ROOT, "bin", "fleetlet.js");

const cleanups: (() => void | Promise<void>)[] = [];

/** Runs at exit in reverse order of registration. */
export function onCleanup(fn: () => void | Promise<void>): void {
  cleanups.push(fn);
}

let cleaning: Promise<void> | undefined;

/** Single-flight: a signal and a failing main may both ask, and both wait for the same run. */
function cleanupAll(): Promise<void> {
  cleaning ??= (async () => {
    while (cleanups.length > 0) {
      const fn = cleanups.pop()!;
      try {
        await fn();
      } catch (e) {
        process.stderr.write(`cleanup: ${errorMessage(e)}\n`);
      }
    }
  })();
  return cleaning;
}

/**
 * Runs a benchmark: exit 0 after printing its figures, 1 on a malfunction or any other error,
 * 130 when interrupted; cleanup runs in every case. process.exit also drops open gRPC channels.
 */
export function runBench(main: (args: BenchArgs) => Promise<void>): void {
  let stopping = false;
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    process.on(signal, () => {
      if (stopping) return;
      stopping = true;
      process.stderr.write(`${signal}: stopping what the benchmark started\n`);
      void cleanupAll().finally(() => process.exit(130));
    });
  }
  const started = performance.now();
  let args: BenchArgs;
  try {
    args = parseBenchArgs();
  } catch (e) {
    process.stderr.write(`${errorMessage(e)}\n`);
    process.exit(2);
  }
  // Once a signal is stopping the run, failures of the interrupted work are expected: not reported.
  main(args).then(
    async () => {
      if (stopping) return;
      await cleanupAll();
      process.stderr.write(`(finished in ${((performance.now() - started) / 1000).toFixed(1)} s)\n`);
      process.exit(0);
    },
    async (e: unknown) => {
      if (stopping) return;
      const kind = e instanceof Malfunction ? "MALFUNCTION" : "ERROR";
      process.stderr.write(`${kind}: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
      await cleanupAll();
      process.exit(1);
    },
  );
}

export function tempDir(name: string): string {
  const dir = mkdtempSync(join(tmpdir(), `fleetlet-bench-${name}-`));
  onCleanup(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

export interface Child {
  child: ChildProcess;
  pid: number;
  exited: Promise<number | string>;
  /** SIGCONT (it may be stopped), SIGTERM, then SIGKILL after graceMs. */
  stop(graceMs?: number): Promise<number | string>;
}

/** Spawns a process that is stopped at cleanup unless stopped before. */
export function startChild(command: string, args: string[], options: Parameters<typeof spawn>[2] = {}): Child {
  const child = spawn(command, args, options);
  if (child.pid === undefined) throw new Error(`could not start ${command}`);
  const pid = child.pid;
  const exited = new Promise<number | string>((resolve) => child.once("exit", (code, signal) => resolve(code ?? signal ?? -1)));
  const done = () => child.exitCode !== null || child.signalCode !== null;
  let stopping: Promise<number | string> | undefined;
  const handle: Child = {
    child,
    pid,
    exited,
    stop(graceMs = 5000) {
      if (done()) return exited;
      stopping ??= (async () => {
        signal(pid, "SIGCONT");
        signal(pid, "SIGTERM");
        const timer = setTimeout(() => signal(pid, "SIGKILL"), graceMs);
        const code = await exited;
        clearTimeout(timer);
        return code;
      })();
      return stopping;
    },
  };
  onCleanup(() => handle.stop().then(() => undefined));
  return handle;
}

/** kill(2) that ignores a process already gone. */
export function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ESRCH") throw e;
  }
}

/**
 * `n` real `sleep` processes (distinct pids) forked by one shell, which is faster than n
 * spawns from Node. Each pid is killed at cleanup; the sleeps also end by themselves.
 */
export async function startSleepers(n: number, seconds: number): Promise<number[]> {
  const script = `i=0; while [ $i -lt ${n} ]; do sleep ${seconds} </dev/null >/dev/null 2>&1 & echo $!; i=$((i+1)); done; wait`;
  const shell = startChild("sh", ["-c", script], { stdio: ["ignore", "pipe", "inherit"] });
  const pids: number[] = [];
  onCleanup(async () => {
    for (const pid of pids) signal(pid, "SIGKILL");
    // Let the shell reap them (its `wait` returns) rather than leave zombies to init.
    await Promise.race([shell.exited, sleep(2000)]);
  });
  let buffered = "";
  await new Promise<void>((resolve, reject) => {
    shell.child.stdout!.on("data", (chunk: Buffer) => {
      buffered += chunk.toString();
      const lines = buffered.split("\n");
      buffered = lines.pop() ?? "";
      for (const line of lines) if (line.trim() !== "") pids.push(Number(line));
      if (pids.length >= n) resolve();
    });
    void shell.exited.then((code) => reject(new Error(`sleep launcher exited (${code}) after ${pids.length} of ${n} processes`)));
  });
  return pids;
}

/** The first stdout line of a child that parses as JSON and passes `accept` (its stdout is a pipe). */
export function readJsonLine<T>(child: Child, accept: (value: T) => boolean, timeoutMs = 60_000): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const lines = createInterface({ input: child.child.stdout! });
    const timer = setTimeout(() => reject(new Error(`pid ${child.pid}: no expected line after ${timeoutMs} ms`)), timeoutMs);
    lines.on("line", (line) => {
      let value: T;
      try {
        value = JSON.parse(line) as T;
      } catch {
        return;
      }
      if (!accept(value)) return;
      clearTimeout(timer);
      lines.close();
      resolve(value);
    });
    void child.exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`pid ${child.pid} exited (${code}) before its expected line`));
    });
  });
}

export interface Daemon extends Child {
  address: string;
  logPath: string;
}

/**
 * Starts `fleetlet agent|aggregator ARGS` with its log going to a file (not a pipe: the
 * benchmark must not spend CPU reading per-RPC log lines) and resolves with the address from
 * its "<kind> serving" line.
 */
export async function startFleetletDaemon(kind: "agent" | "aggregator", args: string[], logPath: string, timeoutMs = 30_000): Promise<Daemon> {
  const fd = openSync(logPath, "a");
  let child: Child;
  try {
    child = startChild(process.execPath, [FLEETLET_BIN, kind, ...args], { stdio: ["ignore", fd, fd] });
  } finally {
    closeSync(fd);
  }
  let exitedWith: number | string | undefined;
  void child.exited.then((code) => (exitedWith = code));
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const text = readFileSync(logPath, "utf8");
    for (const line of text.split("\n")) {
      if (!line.includes(`"msg":"${kind} serving"`)) continue;
      const { address } = JSON.parse(line) as { address: string };
      return { ...child, address, logPath };
    }
    if (exitedWith !== undefined) throw new Error(`fleetlet ${kind} exited (${exitedWith}) before serving:\n${text.slice(-2000)}`);
    if (performance.now() > deadline) throw new Error(`fleetlet ${kind} not serving after ${timeoutMs} ms:\n${text.slice(-2000)}`);
    await sleep(25);
  }
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

let clockTicks: number | undefined;

/** User + system CPU of a whole process (all threads) so far, in ms. */
export function processCpuMs(pid: number): number {
  clockTicks ??= Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
  const stat = parseProcStat(readFileSync(`/proc/${pid}/stat`, "latin1"));
  return (Number(stat.utimeTicks + stat.stimeTicks) * 1000) / clockTicks;
}

/** VmRSS of a process in KiB. */
export function rssKiB(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, "latin1"));
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]);
}

/**
 * What a daemon's log says beyond per-RPC info lines: pino lines at warn or above, and lines
 * that are not JSON (its stderr, e.g. Node process warnings). Shown with the figures so a
 * benchmark run that produced warnings is not mistaken for a clean one.
 */
export function logProblems(path: string): string {
  let nonJson = 0;
  let warnings = 0;
  let first: string | undefined;
  for (const line of readFileSync(path, "utf8").split("\n")) {
    if (line.trim() === "") continue;
    let level: number | undefined;
    try {
      level = (JSON.parse(line) as { level?: number }).level;
    } catch {
      nonJson++;
      first ??= line;
      continue;
    }
    if ((level ?? 0) >= 40) {
      warnings++;
      first ??= line;
    }
  }
  const sample = first === undefined ? "" : `; first: ${first.length > 140 ? `${first.slice(0, 140)}...` : first}`;
  return `${warnings} warn/error lines, ${nonJson} non-JSON (stderr) lines${sample}`;
}
