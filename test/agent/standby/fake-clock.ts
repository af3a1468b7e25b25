import { EventEmitter } from "node:events";
import type { ConntrackFlow } from "../../../agent/kernel/conntrack-decoder.js";
import type { StandbyClock } from "../../../agent/standby/standby-controller.js";

/**
 * A clock whose timers run only when the test advances it. Its wall clock reads `wallStart` at
 * the monotonic `start` (the same by default) and moves with it unless stepped.
 */
export class FakeClock implements StandbyClock {
  private t: number;
  private wallOffset: number;
  private timers = new Map<number, { at: number; fn: () => void }>();
  private nextId = 1;
  constructor(start = Date.UTC(2026, 10, 22, 11, 0, 0), wallStart = start) {
    this.t = start;
    this.wallOffset = wallStart - start;
  }
  now(): number {
    return this.t;
  }
  wallNow(): number {
    return this.t + this.wallOffset;
  }
  /** Steps the wall clock only (NTP, `date -s`): no time passes, no timer fires. */
  stepWall(ms: number): void {
    this.wallOffset += ms;
  }
  setTimeout(fn: () => void, ms: number): unknown {
    const id = this.nextId++;
    this.timers.set(id, { at: this.t + ms, fn });
    return id;
  }
  clearTimeout(handle: unknown): void {
    this.timers.delete(handle as number);
  }
  /** Moves time forward, firing due timers in order and letting their async work settle. */
  async advance(ms: number): Promise<void> {
    const end = this.t + ms;
    for (;;) {
      const due = [...this.timers.entries()].filter(([, v]) => v.at <= end).sort((a, b) => a[1].at - b[1].at)[0];
      if (!due) break;
      this.timers.delete(due[0]);
      this.t = Math.max(this.t, due[1].at);
      due[1].fn();
      await settle();
    }
    this.t = end;
    await settle();
  }
  get pending(): number {
    return this.timers.size;
  }
}

export async function settle(): Promise<void> {
  for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
}

/** A conntrack source the test controls: the table for dumps, and events on demand. */
export class FakeFlowSource extends EventEmitter {
  table: ConntrackFlow[] = [];
  dumps = 0;
  failDumps = false;
  async dump(): Promise<ConntrackFlow[]> {
    this.dumps++;
    if (this.failDumps) throw new Error("dump failed");
    return this.table.map((f) => ({ ...f }));
  }
  /** Adds/updates a flow in the table and, unless `lost`, delivers its event. */
  open(f: Omit<ConntrackFlow, "kind" | "id">, lost = false): ConntrackFlow {
    const flow: ConntrackFlow = { kind: "new", id: this.table.length + 1, ...f };
    this.table.push(flow);
    if (!lost) this.emit("flow", flow);
    return flow;
  }
  close(flow: ConntrackFlow, lost = false): void {
    this.table = this.table.filter((f) => f !== flow);
    if (!lost) this.emit("flow", { ...flow, kind: "destroy", tcpState: 0 });
  }
}
