import { spawn, type ChildProcess } from "node:child_process";
import { EventEmitter } from "node:events";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { decodeDatagram, dumpRequest, type ConntrackFlow } from "./conntrack-decoder.js";
import { errorMessage } from "../../lib/error-message.js";
import { monotonicMs } from "../../lib/monotonic-clock.js";

/** Where setup.sh compiles native/conntrack-reader.c: next to this file in dist/. */
export const CONNTRACK_READER = join(dirname(fileURLToPath(import.meta.url)), "conntrack-reader");

// Frame kinds written by the reader (see native/conntrack-reader.c).
const F_READY = 1;
const F_EVENT = 2;
const F_DUMP = 3;
const F_OVERFLOW = 4;
const F_ERROR = 5;
/** The event socket's receive buffer unless configured: see ConntrackSourceOptions. */
export const DEFAULT_RECEIVE_BUFFER_BYTES = 32 << 20;
/** Longest stretch of decoding before yielding to the event loop. */
const SLICE_MS = 4;
/** Decoded-later bytes above which the reader's pipe is paused (≈ 20k events). */
const MAX_QUEUED_BYTES = 4 << 20;

export interface ConntrackSourceOptions {
  /**
   * Receive buffer of the event socket. The reader asks with SO_RCVBUFFORCE (CAP_NET_ADMIN,
   * which conntrack needs anyway), so net.core.rmem_max does not cap it. 32 MiB holds about
   * 5 s of a 7k connections/s burst (bench/conntrack) if the agent stalls.
   */
  receiveBufferBytes?: number;
  dumpTimeoutMs?: number;
  /**
   * Fault injection for tests and drills: drop every "new" event as if the kernel had lost it
   * (dumps are unaffected). The controller must still never put a busy instance on standby.
   */
  dropNewEvents?: boolean;
  /**
   * Fault injection: drop every event, "new" and "destroy" (dumps are unaffected), as a lossy or
   * blind event stream would. Interface counters and dumps must still keep a busy instance awake.
   */
  dropAllEvents?: boolean;
  /** Delay before a reader that died is started again (--standby-reconnect-delay, default 200 ms). */
  restartDelayMs?: number;
  /** The reader executable (tests point this at a missing file). */
  readerPath?: string;
}

export interface ConntrackCounters {
  events: { new: number; destroy: number };
  /** Events were lost (ENOBUFS on the event socket, or the reader died): a resync follows. */
  overflows: number;
  /** Times the reader process died and was started again (each also counts as an overflow). */
  restarts: number;
  decodeErrors: number;
  dumps: number;
  /** Events dropped on purpose (dropNewEvents, dropAllEvents). */
  injectedDrops: number;
}

/**
 * A flow event with the moment it was observed: when its bytes arrived from the reader, on the
 * monotonic clock (lib/monotonic-clock.ts), not when it was decoded or handled. Decoding runs in
 * slices behind a queue, so under load the two differ; idle_since and last inbound activity are
 * the moment the connection changed (standby.md, the seed's ObservedAt).
 */
export interface ObservedFlow extends ConntrackFlow {
  observedAt: number;
}

/** Default of ConntrackSourceOptions.restartDelayMs. */
export const DEFAULT_RESTART_DELAY_MS = 200;

interface PendingDump {
  seq: number;
  flows: ConntrackFlow[];
  resolve: (f: ConntrackFlow[]) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

/**
 * Conntrack over raw NETLINK_NETFILTER sockets (standby.md "Conntrack source"), held by a small
 * reader process (native/conntrack-reader.c) that only moves datagrams; decoding is ours, here.
 * One socket joined to NEW/UPDATE/DESTROY, subscribed before the first dump, one for dumps so
 * replies and events never interleave. IPv4 TCP only; other flows are skipped.
 *
 * Events: 'flow' (ConntrackFlow), 'overflow' (events were lost: resync), 'error' (anything
 * else, including the reader dying — it is started again restartDelayMs (200 ms) later and an 'overflow'
 * follows), 'datagram' (raw bytes of each event/dump datagram, for capturing fixtures).
 * `start()` resolves once the reader answered a first dump; it rejects with the reason when
 * conntrack cannot be read here (no CAP_NET_ADMIN, no conntrack, no reader built).
 */
export class ConntrackProcessSource extends EventEmitter {
  readonly counters: ConntrackCounters = { events: { new: 0, destroy: 0 }, overflows: 0, restarts: 0, decodeErrors: 0, dumps: 0, injectedDrops: 0 };
  receiveBufferBytes = 0;
  private readonly options: Required<Omit<ConntrackSourceOptions, "readerPath">> & { readerPath: string };
  private child: ChildProcess | undefined;
  private seq = 1;
  private pending: PendingDump | undefined;
  private dumpQueue: Promise<unknown> = Promise.resolve();
  private leftover: Buffer | undefined;
  /** Chunks read from the reader, not yet decoded (see onChunk), with their arrival time. */
  private readonly queue: { chunk: Buffer; at: number }[] = [];
  private queuedBytes = 0;
  private draining = false;
  private closed = false;
  private started = false;
  private lastExit = "";
  private restartTimer: NodeJS.Timeout | undefined;

  constructor(options: ConntrackSourceOptions = {}) {
    super();
    this.options = {
      receiveBufferBytes: options.receiveBufferBytes ?? DEFAULT_RECEIVE_BUFFER_BYTES,
      dumpTimeoutMs: options.dumpTimeoutMs ?? 5000,
      dropNewEvents: options.dropNewEvents ?? false,
      dropAllEvents: options.dropAllEvents ?? false,
      restartDelayMs: options.restartDelayMs ?? DEFAULT_RESTART_DELAY_MS,
      readerPath: options.readerPath ?? CONNTRACK_READER,
    };
  }

  /** The reader process's pid (tests and operators: it is the one holding the netlink sockets). */
  get readerPid(): number | undefined {
    return this.child?.pid;
  }

  async start(): Promise<void> {
    if (!existsSync(this.options.readerPath)) {
      throw new Error(`the conntrack reader is not built (${this.options.readerPath}; scripts/setup.sh compiles it with gcc)`);
    }
    this.spawnReader();
    try {
      await this.dump();
    } catch (e) {
      // Could not read conntrack at all: no restarts, the caller reports UNSUPPORTED.
      const reason = await this.exitReason();
      this.close();
      throw new Error(reason ? `${errorMessage(e)}: ${reason}` : errorMessage(e));
    }
    this.started = true;
  }

  /** The current IPv4 TCP flows. One dump at a time; callers queue. */
  dump(): Promise<ConntrackFlow[]> {
    const run = this.dumpQueue.then(() => this.dumpNow());
    this.dumpQueue = run.catch(() => undefined);
    return run;
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.restartTimer);
    this.failDump(new Error("conntrack reader closed"));
    this.child?.stdin?.end();
    this.child?.kill("SIGTERM");
  }

  private dumpNow(): Promise<ConntrackFlow[]> {
    const child = this.child;
    if (!child || this.closed) return Promise.reject(new Error("conntrack reader is not running"));
    const seq = this.seq++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => this.failDump(new Error(`conntrack dump: no answer within ${this.options.dumpTimeoutMs} ms`)), this.options.dumpTimeoutMs);
      this.pending = { seq, flows: [], resolve, reject, timer };
      const req = dumpRequest(seq);
      const frame = Buffer.alloc(4 + req.length);
      frame.writeUInt32LE(req.length, 0);
      req.copy(frame, 4);
      child.stdin!.write(frame);
    });
  }

  private spawnReader(): void {
    const child = spawn(this.options.readerPath, [String(this.options.receiveBufferBytes)], { stdio: ["pipe", "pipe", "pipe"] });
    this.child = child;
    this.leftover = undefined;
    this.queue.length = 0;
    this.queuedBytes = 0;
    let stderr = "";
    child.stderr!.on("data", (b: Buffer) => (stderr = (stderr + b.toString()).slice(-2000)));
    child.stdin!.on("error", () => undefined);
    child.stdout!.on("data", (chunk: Buffer) => {
      if (this.child === child) this.onChunk(chunk);
    });
    child.on("error", (e) => (stderr = e.message));
    child.on("exit", (code, signal) => {
      if (this.child !== child) return;
      this.child = undefined;
      this.lastExit = stderr.trim().split("\n").pop() ?? "";
      this.failDump(new Error(`conntrack reader exited (${signal ?? code})`));
      if (this.closed || !this.started) return;
      // Events were lost while it was down: say so, start it again, and let the owner resync.
      this.counters.restarts++;
      this.counters.overflows++;
      if (this.listenerCount("error") > 0) this.emit("error", new Error(`conntrack reader died (${signal ?? `exit ${code}`})${this.lastExit ? `: ${this.lastExit}` : ""}`));
      this.restartTimer = setTimeout(() => {
        if (this.closed) return;
        this.spawnReader();
        this.emit("overflow");
      }, this.options.restartDelayMs);
    });
  }

  /** Why the reader stopped, once it has (start() failures carry it to the UNSUPPORTED reason). */
  private async exitReason(): Promise<string> {
    const child = this.child;
    if (child && child.exitCode === null && child.signalCode === null) {
      await new Promise((r) => setTimeout(r, 100));
    }
    return this.lastExit;
  }

  // libuv reads a pipe up to 32 × 64 KiB per turn; decoding that much at once (~10k events)
  // blocked the event loop for 20-45 ms at 80k events/s (bench/conntrack). So chunks are queued
  // and decoded in slices of at most SLICE_MS, yielding to timers and I/O in between; above
  // MAX_QUEUED_BYTES the pipe is paused, the reader blocks, and the kernel's socket buffer takes
  // the burst (and says ENOBUFS if that fills: an explicit overflow, never a silent one).
  private onChunk(chunk: Buffer): void {
    this.queue.push({ chunk, at: monotonicMs() });
    this.queuedBytes += chunk.length;
    if (this.queuedBytes > MAX_QUEUED_BYTES) this.child?.stdout?.pause();
    if (!this.draining) {
      this.draining = true;
      setImmediate(() => this.drain());
    }
  }

  private drain(): void {
    const until = performance.now() + SLICE_MS;
    let item: { chunk: Buffer; at: number } | undefined;
    while ((item = this.queue.shift()) !== undefined) {
      this.queuedBytes -= item.chunk.length;
      this.decodeChunk(item.chunk, item.at);
      if (performance.now() >= until) break;
    }
    if (this.queue.length > 0) {
      setImmediate(() => this.drain());
      return;
    }
    this.draining = false;
    this.child?.stdout?.resume();
  }

  /** `at`: when the chunk arrived; a frame split over two chunks is observed with the second. */
  private decodeChunk(chunk: Buffer, at: number): void {
    let buf = chunk;
    if (this.leftover) {
      buf = Buffer.concat([this.leftover, chunk]);
      this.leftover = undefined;
    }
    let off = 0;
    while (buf.length - off >= 8) {
      const kind = buf.readUInt32LE(off);
      const len = buf.readUInt32LE(off + 4);
      if (buf.length - off - 8 < len) break;
      this.onFrame(kind, buf.subarray(off + 8, off + 8 + len), at);
      off += 8 + len;
    }
    if (off < buf.length) this.leftover = Buffer.from(buf.subarray(off));
  }

  private onFrame(kind: number, body: Buffer, at: number): void {
    if (kind === F_EVENT) this.onEvent(body, at);
    else if (kind === F_DUMP) this.onDump(body);
    else if (kind === F_OVERFLOW) {
      this.counters.overflows++;
      this.emit("overflow");
    } else if (kind === F_READY) {
      this.receiveBufferBytes = body.readUInt32LE(0);
    } else if (kind === F_ERROR) {
      const message = body.toString();
      if (this.pending) this.failDump(new Error(message));
      else if (this.listenerCount("error") > 0) this.emit("error", new Error(message));
    }
  }

  private onEvent(datagram: Buffer, at: number): void {
    if (this.listenerCount("datagram") > 0) this.emit("datagram", datagram);
    let messages;
    try {
      messages = decodeDatagram(datagram);
    } catch {
      this.counters.decodeErrors++;
      return;
    }
    for (const m of messages) {
      if (m.type !== "flow") continue;
      if (this.options.dropAllEvents || (this.options.dropNewEvents && m.flow.kind === "new")) {
        this.counters.injectedDrops++;
        continue;
      }
      this.counters.events[m.flow.kind]++;
      const flow: ObservedFlow = Object.assign(m.flow, { observedAt: at });
      this.emit("flow", flow);
    }
  }

  private onDump(datagram: Buffer): void {
    if (this.listenerCount("datagram") > 0) this.emit("datagram", datagram);
    const p = this.pending;
    // A late reply to a dump that already timed out carries an older sequence number.
    if (!p || datagram.length < 16 || datagram.readUInt32LE(8) !== p.seq) return;
    let messages;
    try {
      messages = decodeDatagram(datagram);
    } catch (e) {
      this.counters.decodeErrors++;
      this.failDump(new Error(`conntrack dump: ${errorMessage(e)}`));
      return;
    }
    for (const m of messages) {
      if (m.type === "flow") p.flows.push(m.flow);
      else if (m.type === "error" && m.errno !== 0) {
        // EPERM without CAP_NET_ADMIN; ENOENT/EOPNOTSUPP when conntrack is not there.
        this.failDump(new Error(`conntrack dump: ${errnoName(m.errno)}`));
        return;
      } else if (m.type === "done") {
        clearTimeout(p.timer);
        this.pending = undefined;
        this.counters.dumps++;
        p.resolve(p.flows);
        return;
      }
    }
  }

  private failDump(error: Error): void {
    const p = this.pending;
    if (!p) return;
    clearTimeout(p.timer);
    this.pending = undefined;
    p.reject(error);
  }
}

const ERRNO_NAMES: Record<number, string> = { 1: "EPERM (no CAP_NET_ADMIN)", 2: "ENOENT", 13: "EACCES", 95: "EOPNOTSUPP", 97: "EAFNOSUPPORT" };
function errnoName(errno: number): string {
  return ERRNO_NAMES[errno] ?? `errno ${errno}`;
}
