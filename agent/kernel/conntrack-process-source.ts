import { spawn, type ChildProcess } from "node:child_process";
import { EventEmitter } from "node:events";
import { createInterface } from "node:readline";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import type { ConntrackFlow } from "./conntrack-decoder.js";

const READER = join(dirname(fileURLToPath(import.meta.url)), "conntrack-reader-main.js");

export interface ConntrackProcessCounters {
  events: { new: number; destroy: number };
  overflows: number;
  /** Times the reader process died and was started again (each also counts as an overflow). */
  restarts: number;
}

/**
 * Conntrack through a reader process (conntrack-reader-main.ts), so a native crash of the
 * netlink binding costs lost events — reported as an overflow, answered by the controller with
 * a resync — instead of the agent. Same surface as ConntrackSocket: dump(), and 'flow',
 * 'overflow', 'error' events. `start()` resolves once the reader answered a first dump.
 */
export class ConntrackProcessSource extends EventEmitter {
  readonly counters: ConntrackProcessCounters = { events: { new: 0, destroy: 0 }, overflows: 0, restarts: 0 };
  receiveBufferBytes = 0;
  private child: ChildProcess | undefined;
  private seq = 1;
  private readonly pending = new Map<number, { resolve: (f: ConntrackFlow[]) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>();
  private closed = false;
  private started = false;
  private lastExit = "";
  private restartTimer: NodeJS.Timeout | undefined;

  constructor(private readonly env: NodeJS.ProcessEnv = process.env) {
    super();
  }

  /** The reader process's pid (tests and operators: it is the one holding the netlink sockets). */
  get readerPid(): number | undefined {
    return this.child?.pid;
  }

  async start(): Promise<void> {
    this.spawnReader();
    try {
      await this.dump();
    } catch (e) {
      // Could not read conntrack at all: no restarts, the caller reports UNSUPPORTED.
      this.close();
      throw new Error(this.lastExit ? `${(e as Error).message}: ${this.lastExit}` : (e as Error).message);
    }
    this.started = true;
  }

  dump(timeoutMs = 5000): Promise<ConntrackFlow[]> {
    const child = this.child;
    if (!child || this.closed) return Promise.reject(new Error("conntrack reader is not running"));
    const seq = this.seq++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(seq);
        reject(new Error(`conntrack dump: no answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(seq, { resolve, reject, timer });
      child.stdin!.write(`${seq}\n`);
    });
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.restartTimer);
    this.failPending(new Error("conntrack reader closed"));
    this.child?.stdin?.end();
    this.child?.kill("SIGTERM");
  }

  private spawnReader(): void {
    const child = spawn(process.execPath, [READER], { stdio: ["pipe", "pipe", "pipe"], env: this.env });
    this.child = child;
    let stderr = "";
    child.stderr!.on("data", (b: Buffer) => (stderr = (stderr + b.toString()).slice(-2000)));
    child.stdin!.on("error", () => undefined);
    createInterface({ input: child.stdout! }).on("line", (line) => this.onLine(line));
    child.on("exit", (code, signal) => {
      if (this.child !== child) return;
      this.child = undefined;
      this.lastExit = stderr.trim().split("\n").pop() ?? "";
      this.failPending(new Error(`conntrack reader exited (${signal ?? code})`));
      if (this.closed || !this.started) return;
      // Events were lost while it was down: say so, start it again, and let the owner resync.
      this.counters.restarts++;
      this.counters.overflows++;
      if (this.listenerCount("error") > 0) this.emit("error", new Error(`conntrack reader died (${signal ?? `exit ${code}`})${stderr ? `: ${stderr.trim().split("\n").pop()}` : ""}`));
      this.restartTimer = setTimeout(() => {
        if (this.closed) return;
        this.spawnReader();
        this.emit("overflow");
      }, 200);
    });
  }

  private onLine(line: string): void {
    const tag = line[0];
    const rest = line.slice(1);
    if (tag === "F") {
      const [kind, srcIp, srcPort, dstIp, dstPort, state, id] = rest.split(",");
      const flow: ConntrackFlow = {
        kind: kind === "n" ? "new" : "destroy",
        srcIp: srcIp ?? "",
        srcPort: Number(srcPort),
        dstIp: dstIp ?? "",
        dstPort: Number(dstPort),
        tcpState: Number(state),
        id: id ? Number(id) : undefined,
      };
      this.counters.events[flow.kind]++;
      this.emit("flow", flow);
    } else if (tag === "O") {
      this.counters.overflows++;
      this.emit("overflow");
    } else if (tag === "R") {
      this.receiveBufferBytes = Number(rest);
    } else if (tag === "D" || tag === "X") {
      const comma = rest.indexOf(",");
      const seq = Number(rest.slice(0, comma));
      const p = this.pending.get(seq);
      if (!p) return;
      this.pending.delete(seq);
      clearTimeout(p.timer);
      if (tag === "D") p.resolve(JSON.parse(rest.slice(comma + 1)) as ConntrackFlow[]);
      else p.reject(new Error(rest.slice(comma + 1)));
    } else if (tag === "E") {
      if (this.listenerCount("error") > 0) this.emit("error", new Error(rest));
    }
  }

  private failPending(error: Error): void {
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(error);
    }
    this.pending.clear();
  }
}
