import { EventEmitter } from "node:events";
import { createRequire } from "node:module";
import {
  decodeDatagram,
  dumpRequest,
  NETLINK_NETFILTER,
  NFNLGRP_CONNTRACK_DESTROY,
  NFNLGRP_CONNTRACK_NEW,
  NFNLGRP_CONNTRACK_UPDATE,
  type ConntrackFlow,
} from "./conntrack-decoder.js";

// netlink ships CommonJS with a prebuilt N-API binary; only its raw socket layer is used. Loaded
// on first use, so a platform without a working binary gets "standby unsupported", not an agent
// that cannot start.
const require = createRequire(import.meta.url);
type RawSocket = import("netlink/dist/raw.js").RawNetlinkSocket;
let rawModule: typeof import("netlink/dist/raw.js") | undefined;
function rawSocketClass(): typeof import("netlink/dist/raw.js").RawNetlinkSocket {
  rawModule ??= require("netlink/dist/raw.js") as typeof import("netlink/dist/raw.js");
  return rawModule.RawNetlinkSocket;
}

export interface ConntrackSocketOptions {
  /** SO_RCVBUF asked for the event socket; production hosts overflowed the default about once a minute. */
  receiveBufferBytes?: number;
  dumpTimeoutMs?: number;
  /**
   * Fault injection for tests and drills: drop every "new" event as if the kernel had lost it
   * (dumps are unaffected). The controller must still never put a busy instance on standby.
   */
  dropNewEvents?: boolean;
}

export interface ConntrackCounters {
  events: { new: number; destroy: number };
  /** ENOBUFS on the event socket: events were lost; the owner must resync with a dump. */
  overflows: number;
  decodeErrors: number;
  dumps: number;
  /** "new" events dropped on purpose (dropNewEvents). */
  injectedDrops: number;
}

/**
 * Conntrack over raw NETLINK_NETFILTER sockets (standby.md "Conntrack source"): one socket joined
 * to the NEW/UPDATE/DESTROY groups for live events, one for dumps, so dump replies and events
 * never interleave. Subscribe first (the constructor), dump after: nothing between the dump and
 * the live stream is lost. IPv4 TCP only; other flows are skipped.
 *
 * Events: 'flow' (ConntrackFlow), 'overflow' (events were lost: resync), 'error' (socket
 * failure other than overflow), 'datagram' (raw bytes, for capturing fixtures). Never exits
 * the process on any of them.
 */
export class ConntrackSocket extends EventEmitter {
  readonly counters: ConntrackCounters = { events: { new: 0, destroy: 0 }, overflows: 0, decodeErrors: 0, dumps: 0, injectedDrops: 0 };
  private readonly dropNewEvents: boolean;
  readonly receiveBufferBytes: number;
  private readonly events: RawSocket;
  private readonly dumper: RawSocket;
  private seq = 1;
  private pending: { seq: number; flows: ConntrackFlow[]; resolve: (f: ConntrackFlow[]) => void; reject: (e: Error) => void; timer: NodeJS.Timeout } | undefined;
  private readonly dumpTimeoutMs: number;

  constructor(options: ConntrackSocketOptions = {}) {
    super();
    this.dumpTimeoutMs = options.dumpTimeoutMs ?? 5000;
    this.dropNewEvents = options.dropNewEvents ?? false;
    const RawNetlinkSocket = rawSocketClass();
    this.events = new RawNetlinkSocket(NETLINK_NETFILTER, { recvBufferSize: options.receiveBufferBytes ?? 16 << 20, sendBufferSize: 1 << 16 });
    this.receiveBufferBytes = this.events.getRecvBufferSize();
    for (const group of [NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_UPDATE, NFNLGRP_CONNTRACK_DESTROY]) this.events.addMembership(group);
    this.events.on("message", (msg) => this.onEvent(msg));
    this.events.on("error", (err) => {
      if (err.code === "ENOBUFS") {
        this.counters.overflows++;
        this.emit("overflow");
      } else {
        this.emit("error", err);
      }
    });
    this.dumper = new RawNetlinkSocket(NETLINK_NETFILTER, { recvBufferSize: 4 << 20, sendBufferSize: 1 << 16 });
    this.dumper.on("message", (msg) => this.onDump(msg));
    this.dumper.on("error", (err) => this.failDump(new Error(`conntrack dump: ${err.code ?? err.message}`)));
  }

  /** The current IPv4 TCP flows. One dump at a time; a second caller waits for its own. */
  async dump(): Promise<ConntrackFlow[]> {
    while (this.pending) await new Promise((r) => setImmediate(r));
    const seq = this.seq++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => this.failDump(new Error(`conntrack dump: no answer within ${this.dumpTimeoutMs} ms`)), this.dumpTimeoutMs);
      this.pending = { seq, flows: [], resolve, reject, timer };
      this.dumper.send(dumpRequest(seq), {}, (err) => {
        if (err) this.failDump(new Error(`conntrack dump: ${err.code ?? err.message}`));
      });
    });
  }

  close(): void {
    this.failDump(new Error("conntrack socket closed"));
    this.events.close();
    this.dumper.close();
  }

  private onEvent(msg: Buffer): void {
    if (this.listenerCount("datagram") > 0) this.emit("datagram", msg);
    let messages;
    try {
      messages = decodeDatagram(msg);
    } catch {
      this.counters.decodeErrors++;
      return;
    }
    for (const m of messages) {
      if (m.type !== "flow") continue;
      if (this.dropNewEvents && m.flow.kind === "new") {
        this.counters.injectedDrops++;
        continue;
      }
      this.counters.events[m.flow.kind]++;
      this.emit("flow", m.flow);
    }
  }

  private onDump(msg: Buffer): void {
    if (this.listenerCount("datagram") > 0) this.emit("datagram", msg);
    const p = this.pending;
    if (!p) return;
    let messages;
    try {
      messages = decodeDatagram(msg);
    } catch (e) {
      this.counters.decodeErrors++;
      this.failDump(new Error(`conntrack dump: ${(e as Error).message}`));
      return;
    }
    for (const m of messages) {
      if (m.type === "flow") p.flows.push(m.flow);
      else if (m.type === "error" && m.errno !== 0) {
        // EPERM without CAP_NET_ADMIN; ENOENT/EOPNOTSUPP when conntrack is not there.
        this.failDump(new Error(`conntrack dump: errno ${m.errno}`));
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
