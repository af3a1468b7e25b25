import { spawn, type ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";
import { repoPath } from "./paths.js";

/** bin/fleetlet.js of this checkout (it runs the compiled dist/). */
export const FLEETLET_BIN = repoPath("bin", "fleetlet.js");

export interface DaemonProcess {
  child: ChildProcess;
  pid: number;
  /** host:port the daemon bound (from its "serving" log line). */
  address: string;
  /** Every stdout/stderr line so far, for assertions and failure messages. */
  lines: string[];
  /** Resolves with the exit code (or signal name) once the process exits. */
  exited: Promise<number | string>;
  /** SIGTERM and wait; SIGKILL after `graceMs`. */
  stop(graceMs?: number): Promise<number | string>;
}

/**
 * Starts `fleetlet agent|aggregator ...` as a separate process (listen on port 0 so parallel
 * tests never clash) and resolves once it logged that it serves, with the address it bound
 * (so the log level must stay at info or below).
 */
export async function startDaemon(
  args: string[],
  timeoutMs = 15_000,
  env?: Record<string, string>,
  options: { wrap?: string[] } = {},
): Promise<DaemonProcess> {
  // `wrap` runs the daemon under a command that execs it in place (`ip netns exec NS`): the child's
  // pid is then the daemon's own, so stop() signals the daemon and not a wrapper.
  const [command, ...prefix] = [...(options.wrap ?? []), process.execPath];
  const child = spawn(command!, [...prefix, FLEETLET_BIN, ...args], { stdio: ["ignore", "pipe", "pipe"], env: env ? { ...process.env, ...env } : process.env });
  const lines: string[] = [];
  const exited = new Promise<number | string>((res) => child.once("exit", (code, signal) => res(code ?? signal ?? -1)));
  const address = await new Promise<string>((res, rej) => {
    const timer = setTimeout(() => rej(new Error(`daemon not serving after ${timeoutMs} ms:\n${lines.join("\n")}`)), timeoutMs);
    const onLine = (line: string) => {
      // Keep the start and the most recent output for failure messages, bounded.
      if (lines.length > 2000) lines.splice(100, 1000);
      lines.push(line);
      if (!line.includes('"msg":"agent serving"') && !line.includes('"msg":"aggregator serving"')) return;
      clearTimeout(timer);
      res((JSON.parse(line) as { address: string }).address);
    };
    createInterface({ input: child.stdout! }).on("line", onLine);
    createInterface({ input: child.stderr! }).on("line", onLine);
    void exited.then((code) => {
      clearTimeout(timer);
      rej(new Error(`daemon exited (${code}) before serving:\n${lines.join("\n")}`));
    });
  });
  return {
    child,
    pid: child.pid!,
    address,
    lines,
    exited,
    async stop(graceMs = 10_000) {
      if (child.exitCode !== null || child.signalCode !== null) return exited;
      // A stopped (SIGSTOP) process cannot act on SIGTERM until continued.
      child.kill("SIGCONT");
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
}

/** Runs `fleetlet ...` to completion and returns its exit code and output. */
export function runFleetlet(args: string[], timeoutMs = 30_000): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((res, rej) => {
    const child = spawn(process.execPath, [FLEETLET_BIN, ...args], { stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      rej(new Error(`fleetlet ${args.join(" ")} did not finish in ${timeoutMs} ms\n${stdout}\n${stderr}`));
    }, timeoutMs);
    child.on("exit", (code) => {
      clearTimeout(timer);
      res({ code, stdout, stderr });
    });
  });
}
