import { spawn, type ChildProcess } from "node:child_process";
import net from "node:net";
import { FLEETLET_BIN } from "./daemon-process.js";

/** A `fleetlet up` run as a user starts it, with its output collected as it comes. */
export interface UpProcess {
  child: ChildProcess;
  stdout(): string;
  stderr(): string;
  /** Resolves with the first match of `re` in stdout (rejects after `ms`, or if `up` exits first). */
  waitFor(re: RegExp, ms: number): Promise<RegExpMatchArray>;
  /** SIGTERM and the exit code; SIGKILL after `graceMs`. */
  stop(graceMs?: number): Promise<number | string>;
  /** Ctrl-C in a terminal: SIGINT to `up` and every process of its group (its daemons and demos too). */
  interrupt(): void;
  exited: Promise<number | string>;
}

/** `env` is added to this process's environment (the daemons `up` starts inherit it). */
export function startUp(args: string[], env: Record<string, string> = {}): UpProcess {
  // A process group of its own, as a shell gives a foreground job: interrupt() reaches exactly it.
  const child = spawn(process.execPath, [FLEETLET_BIN, "up", ...args], { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, ...env }, detached: true });
  let out = "";
  let err = "";
  child.stdout!.on("data", (d: Buffer) => (out += d.toString()));
  child.stderr!.on("data", (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | string>((r) => child.once("exit", (code, signal) => r(code ?? signal ?? -1)));
  return {
    child,
    stdout: () => out,
    stderr: () => err,
    exited,
    async waitFor(re, ms) {
      const end = Date.now() + ms;
      for (;;) {
        const m = re.exec(out);
        if (m) return m;
        if (child.exitCode !== null || child.signalCode !== null) throw new Error(`fleetlet up exited before ${re}:\n${out}\n${err}`);
        if (Date.now() > end) throw new Error(`fleetlet up: no ${re} within ${ms} ms:\n${out}\n${err}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    },
    interrupt() {
      if (child.exitCode === null && child.signalCode === null) process.kill(-child.pid!, "SIGINT");
    },
    async stop(graceMs = 30_000) {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
}

/** A port free on loopback right now (the daemons bind it a moment later). */
export function freePort(): Promise<number> {
  return new Promise((res) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => res(port));
    });
  });
}
