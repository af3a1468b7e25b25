import { Code, ConnectError } from "@connectrpc/connect";
import { InstanceState } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import type { StandbyPolicy } from "../../gen/fleetlet/agent/v1/standby_pb.js";
import type { ConntrackFlow } from "../kernel/conntrack-decoder.js";
import { isActiveInbound, isActiveTcpState, type ClassifierTarget } from "./flow-classifier.js";
import { parseGoDuration } from "../../lib/go-duration.js";
import { parseCidr, type ParsedCidr } from "./standby-policy.js";
import type { StandbyRuntime } from "./standby-runtime-store.js";
import { errorMessage } from "../../lib/error-message.js";
import { DriverError } from "./drivers/standby-driver.js";
import { monotonicMs, WallClockAnchor } from "../../lib/monotonic-clock.js";

/** An interface's cumulative rx + tx bytes, and which interface that was. */
export interface InterfaceReading {
  device: string;
  bytes: bigint;
}

/** The instance fields the controller needs (a view of the registry's Instance). */
export interface StandbyInstance {
  id: string;
  state: InstanceState;
  networkEnabled: boolean;
  ip: string;
  hasVgpu: boolean;
  policy: StandbyPolicy | undefined;
}

/**
 * Two clocks: every deadline, countdown and interval is kept on the monotonic one (a wall-clock
 * step must neither put an instance to sleep early nor keep it awake); the wall clock only
 * turns those moments into the timestamps Describe reports and the runtime file keeps.
 */
export interface StandbyClock {
  /** Monotonic milliseconds. */
  now(): number;
  /** Wall-clock epoch milliseconds. */
  wallNow(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

/** The agent's clock: performance.now() for durations, Date.now() for timestamps. */
export const SYSTEM_STANDBY_CLOCK: StandbyClock = {
  now: monotonicMs,
  wallNow: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
};

/** Conntrack as the controller sees it: dumps, and 'flow' / 'overflow' / 'error' events. */
export interface FlowSource {
  dump(): Promise<ConntrackFlow[]>;
  on(event: "flow", listener: (flow: ConntrackFlow) => void): unknown;
  on(event: "overflow", listener: () => void): unknown;
  on(event: "error", listener: (e: Error) => void): unknown;
}

export interface StandbyControllerDeps {
  clock: StandbyClock;
  /** undefined: conntrack is not usable on this host (Describe says UNSUPPORTED). */
  source: FlowSource | undefined;
  unsupportedReason?: string;
  instances: { list(): StandbyInstance[]; get(id: string): StandbyInstance | undefined };
  runtime: { get(id: string): StandbyRuntime | undefined; set(id: string, r: StandbyRuntime | undefined): void };
  /** Runs the instance's standby driver; resolves when it is on standby. */
  standby(instance: StandbyInstance): Promise<void>;
  wake(instance: StandbyInstance): Promise<void>;
  /** The one place instance state changes (lifecycle transitions for metering). */
  setState(id: string, state: InstanceState): Promise<void>;
  reconcileMs?: number;
  syncMs?: number;
  concurrency?: number;
  onError?: (operation: string, id: string | undefined, e: unknown) => void;
  /** Every wake's duration, from its trigger (the flow's event or the RPC) to RUNNING. */
  onWake?: (ms: number, ok: boolean) => void;
  /**
   * Bytes received plus sent so far on the instance's host-side interface (TAP / veth), or
   * undefined when it has none or it cannot be read. Idleness needs these to stay still too:
   * conntrack can be blind (the kernel tracks flows in a namespace only once a rule there uses
   * conntrack) or lossy, and neither may put a busy instance to sleep.
   */
  interfaceBytes?: (id: string) => InterfaceReading | undefined;
  /** Traffic above this many bytes per second between two samples is activity (default 1024). */
  interfaceIdleBytesPerSecond?: number;
  /** How often the counters of instances counting down are sampled (default 2 s). */
  interfaceSampleMs?: number;
}

export type Phase =
  | "UNSUPPORTED" | "DISABLED" | "INELIGIBLE" | "ACTIVE" | "IDLE_COUNTDOWN"
  | "READY_FOR_STANDBY" | "STANDBY_REQUESTED" | "IN_STANDBY" | "WAKING" | "ERROR";

export type Reason =
  | "UNSUPPORTED_PLATFORM" | "POLICY_MISSING" | "POLICY_DISABLED" | "STANDBY" | "WAKING"
  | "INSTANCE_NOT_RUNNING" | "NETWORK_DISABLED" | "MISSING_IP" | "HAS_VGPU" | "READY_FOR_STANDBY"
  | "OBSERVER_ERROR" | "ACTIVE_INBOUND_CONNECTIONS" | "HOLD" | "IDLE_TIMEOUT_NOT_ELAPSED" | "INTERFACE_TRAFFIC";

/** The Describe table of standby.md, one instance; its moments are wall-clock epoch ms. */
export interface StandbyDescription {
  instanceId: string;
  supported: boolean;
  configured: boolean;
  enabled: boolean;
  eligible: boolean;
  status: Phase;
  reason: Reason;
  activeInboundCount: number;
  idleTimeout: string;
  idleSince?: number;
  lastInboundActivityAt?: number;
  nextStandbyAt?: number;
  countdownRemainingMs?: number;
  holdUntil?: number;
  trackingMode: string;
  lastError?: string;
}

/** One instance's state; its moments are on the monotonic clock (StandbyClock.now). */
interface Track {
  id: string;
  /** Active inbound flows by "srcIp:srcPort>dstIp:dstPort". */
  active: Set<string>;
  idleSince?: number;
  lastInboundAt?: number;
  holdUntil?: number;
  timeoutMs?: number;
  target?: ClassifierTarget;
  idleTimer?: unknown;
  queued: boolean;
  executing: boolean;
  waking: boolean;
  lastError?: string;
  /**
   * The interface's last sample, and since when every interval between samples was quiet. The
   * standby deadline is never before quietSince + timeout: traffic at any point of a window (not
   * its average) restarts it, and a window only counts from the first sample (after a restart,
   * a new interface, or counters that became readable), so it is never shorter than the timeout.
   */
  traffic?: { device: string; at: number; bytes: bigint; quietSince: number };
  /** The last idle window ended with traffic on the interface but no tracked connection. */
  untrackedTrafficAt?: number;
  untrackedTrafficBytesPerSecond?: number;
}

const key = (f: ConntrackFlow) => `${f.srcIp}:${f.srcPort}>${f.dstIp}:${f.dstPort}`;

/**
 * The auto-standby state machine of standby.md, event-driven: conntrack events move instances
 * between ACTIVE and an idle countdown; a countdown that runs out is confirmed with a fresh dump
 * before the driver is asked (lost events must never put a busy instance to sleep); requests
 * run at most `concurrency` at once; new inbound activity cancels a queued request; a new
 * inbound flow wakes an instance on standby when its policy says so.
 */
export class StandbyController {
  private readonly tracks = new Map<string, Track>();
  private readonly byIp = new Map<string, Set<string>>();
  private readonly queue: string[] = [];
  private readonly pendingRefresh = new Set<string>();
  /** Instances on standby that wake on traffic, by IP: the per-event wake check is one lookup. */
  private readonly wakeByIp = new Map<string, Set<string>>();
  private refreshing: Promise<void> | undefined;
  private running = 0;
  private reconcileTimer: unknown;
  private syncTimer: unknown;
  private trafficTimer: unknown;
  private observerError: string | undefined;
  private closed = false;
  private readonly anchor: WallClockAnchor;
  readonly counters = { standby: { ok: 0, failed: 0 }, wake: { ok: 0, failed: 0 }, confirmFoundFlows: 0, confirmFoundTraffic: 0, resyncs: 0 };

  constructor(private readonly deps: StandbyControllerDeps) {
    this.anchor = new WallClockAnchor(() => deps.clock.now(), () => deps.clock.wallNow());
  }

  get supported(): boolean {
    return this.deps.source !== undefined;
  }

  /** Subscribed source first (its constructor), then one dump, then every instance seeded. */
  async start(): Promise<void> {
    const source = this.deps.source;
    if (!source) return;
    source.on("flow", (f) => this.onFlow(f));
    source.on("overflow", () => void this.resync("overflow"));
    source.on("error", (e) => {
      this.observerError = e.message;
      void this.resync("stream error");
    });
    await this.resync("start");
    this.armSync();
  }

  close(): void {
    this.closed = true;
    for (const t of this.tracks.values()) this.clearIdleTimer(t);
    if (this.reconcileTimer) this.deps.clock.clearTimeout(this.reconcileTimer);
    if (this.syncTimer) this.deps.clock.clearTimeout(this.syncTimer);
    if (this.trafficTimer) this.deps.clock.clearTimeout(this.trafficTimer);
  }

  /**
   * An instance was registered, changed (e.g. became RUNNING) or removed. Refreshes asked for in
   * the same tick share one dump: a burst of registrations must not become a burst of dumps.
   */
  refresh(id: string): Promise<void> {
    this.pendingRefresh.add(id);
    this.refreshing ??= new Promise<void>((r) => setImmediate(r))
      .then(() => this.runRefresh())
      .finally(() => (this.refreshing = undefined));
    return this.refreshing;
  }

  private async runRefresh(): Promise<void> {
    const ids = [...this.pendingRefresh];
    this.pendingRefresh.clear();
    const present: StandbyInstance[] = [];
    for (const id of ids) {
      const instance = this.deps.instances.get(id);
      if (instance) present.push(instance);
      else this.drop(id);
    }
    if (!this.supported || present.length === 0) return;
    let flows: ConntrackFlow[] | undefined;
    if (present.some((i) => this.isEligible(i))) {
      try {
        flows = await this.deps.source!.dump();
      } catch (e) {
        this.deps.onError?.("dump", undefined, e);
      }
    }
    for (const instance of present) {
      // Re-read: it may have changed while the dump ran.
      const current = this.deps.instances.get(instance.id);
      if (current) this.seed(current, flows);
    }
    if (this.pendingRefresh.size > 0) await this.runRefresh();
  }

  describe(id: string): StandbyDescription {
    const instance = this.deps.instances.get(id);
    if (!instance) throw new ConnectError(`instance ${JSON.stringify(id)} not found`, Code.NotFound);
    const t = this.tracks.get(id);
    const now = this.deps.clock.now();
    const p = instance.policy;
    const configured = p !== undefined && (p.enabled || p.idleTimeout !== "");
    const base = {
      instanceId: id,
      supported: this.supported,
      configured,
      enabled: p?.enabled ?? false,
      eligible: this.isEligible(instance),
      activeInboundCount: t?.active.size ?? 0,
      idleTimeout: p?.idleTimeout ?? "",
      idleSince: this.wall(t?.idleSince),
      lastInboundActivityAt: this.wall(t?.lastInboundAt),
      holdUntil: t?.holdUntil !== undefined && t.holdUntil > now ? this.wall(t.holdUntil) : undefined,
      trackingMode: !this.supported ? "none" : t?.traffic ? "conntrack_netlink_v4_tcp+interface_bytes" : "conntrack_netlink_v4_tcp",
      lastError: t?.lastError,
    };
    const next = t ? this.deadline(t) : undefined;
    const withNext = { ...base, nextStandbyAt: this.wall(next), countdownRemainingMs: next !== undefined ? Math.max(0, Math.round(next - now)) : undefined };
    const row = (status: Phase, reason: Reason): StandbyDescription => ({ ...withNext, status, reason });
    if (!this.supported) return { ...row("UNSUPPORTED", "UNSUPPORTED_PLATFORM"), supported: false };
    if (!configured) return row("DISABLED", "POLICY_MISSING");
    if (!p!.enabled) return row("DISABLED", "POLICY_DISABLED");
    if (instance.state === InstanceState.STANDBY) return t?.waking ? row("WAKING", "WAKING") : row("IN_STANDBY", "STANDBY");
    if (instance.state !== InstanceState.RUNNING) return row("INELIGIBLE", "INSTANCE_NOT_RUNNING");
    if (!instance.networkEnabled) return row("INELIGIBLE", "NETWORK_DISABLED");
    if (instance.ip === "") return row("INELIGIBLE", "MISSING_IP");
    if (instance.hasVgpu) return row("INELIGIBLE", "HAS_VGPU");
    if (t && (t.queued || t.executing)) return row("STANDBY_REQUESTED", "READY_FOR_STANDBY");
    if (this.observerError !== undefined) return { ...row("ERROR", "OBSERVER_ERROR"), lastError: this.observerError };
    if (t && t.active.size > 0) return row("ACTIVE", "ACTIVE_INBOUND_CONNECTIONS");
    if (t?.untrackedTrafficAt !== undefined && t.idleSince !== undefined && t.untrackedTrafficAt >= t.idleSince) {
      const why = `${t.untrackedTrafficBytesPerSecond ?? 0} bytes/s on the instance's interface and no tracked inbound connection (outbound traffic, or the kernel is not tracking flows here: docs/operations.md); the countdown started again`;
      return { ...row("ACTIVE", "INTERFACE_TRAFFIC"), lastError: t.lastError ?? why };
    }
    if (t?.holdUntil !== undefined && t.holdUntil > now) return row("IDLE_COUNTDOWN", "HOLD");
    if (next !== undefined && next > now) return row("IDLE_COUNTDOWN", "IDLE_TIMEOUT_NOT_ELAPSED");
    if (next !== undefined) return row("READY_FOR_STANDBY", "READY_FOR_STANDBY");
    return row("IDLE_COUNTDOWN", "IDLE_TIMEOUT_NOT_ELAPSED");
  }

  /**
   * No standby before now + ms (the newest hold wins); answers that moment in wall-clock ms.
   * FAILED_PRECONDITION while one runs.
   */
  hold(id: string, ms: number): number {
    const t = this.trackOf(id);
    if (t.executing) throw new ConnectError(`standby of ${JSON.stringify(id)} is in progress`, Code.FailedPrecondition);
    t.holdUntil = this.deps.clock.now() + ms;
    this.unqueue(t);
    this.persist(t);
    this.armIdle(t);
    return this.wall(t.holdUntil)!;
  }

  /** The idle countdown starts again from now. */
  resetIdle(id: string): void {
    const t = this.trackOf(id);
    if (t.active.size === 0) {
      t.idleSince = this.deps.clock.now();
      this.unqueue(t);
      this.persist(t);
      this.armIdle(t);
    }
  }

  /** Leaves standby now through the instance's driver. */
  async wake(id: string): Promise<void> {
    const instance = this.deps.instances.get(id);
    if (!instance) throw new ConnectError(`instance ${JSON.stringify(id)} not found`, Code.NotFound);
    if (instance.state !== InstanceState.STANDBY) {
      throw new ConnectError(`instance ${JSON.stringify(id)} is not on standby (state ${InstanceState[instance.state]})`, Code.FailedPrecondition);
    }
    const t = this.trackOf(id);
    if (t.waking) return;
    t.waking = true;
    const started = this.deps.clock.now();
    try {
      await this.deps.wake(instance);
      await this.deps.setState(id, InstanceState.RUNNING);
      this.counters.wake.ok++;
      this.deps.onWake?.(this.deps.clock.now() - started, true);
      t.lastError = undefined;
    } catch (e) {
      this.counters.wake.failed++;
      this.deps.onWake?.(this.deps.clock.now() - started, false);
      t.lastError = `wake: ${errorMessage(e)}`;
      // Services throw ConnectError (docs/architecture.md "The error rule"): a driver's refusal
      // (no pid, no runtime for it) is the instance's setup, anything else ours.
      if (e instanceof ConnectError) throw e;
      throw new ConnectError(`wake ${id}: ${errorMessage(e)}`, e instanceof DriverError ? Code.FailedPrecondition : Code.Internal, undefined, undefined, e);
    } finally {
      t.waking = false;
    }
    // Running again: seed it (flows, countdown) like any instance that became RUNNING.
    await this.refresh(id);
  }

  // --- internals -------------------------------------------------------------------------

  private isEligible(i: StandbyInstance): boolean {
    return i.state === InstanceState.RUNNING && i.networkEnabled && i.ip !== "" && !i.hasVgpu && i.policy?.enabled === true && i.policy.idleTimeout !== "";
  }

  private trackOf(id: string): Track {
    if (!this.deps.instances.get(id)) throw new ConnectError(`instance ${JSON.stringify(id)} not found`, Code.NotFound);
    let t = this.tracks.get(id);
    if (!t) {
      // The persisted moments are wall time (all that survives a restart): converted to the
      // monotonic clock once, here; a later wall-clock step does not move them.
      const saved = this.deps.runtime.get(id);
      t = { id, active: new Set(), queued: false, executing: false, waking: false, idleSince: this.mono(saved?.idleSince), lastInboundAt: this.mono(saved?.lastInboundAt), holdUntil: this.mono(saved?.holdUntil) };
      this.tracks.set(id, t);
    }
    return t;
  }

  private async resync(why: string): Promise<void> {
    if (!this.deps.source || this.closed) return;
    let flows: ConntrackFlow[];
    try {
      flows = await this.deps.source.dump();
    } catch (e) {
      this.observerError = `${why}: resync failed: ${errorMessage(e)}`;
      this.deps.onError?.("resync", undefined, e);
      return;
    }
    if (why !== "start" && why !== "periodic sync") this.counters.resyncs++;
    this.observerError = undefined;
    const seen = new Set<string>();
    for (const instance of this.deps.instances.list()) {
      seen.add(instance.id);
      this.seed(instance, flows);
    }
    for (const id of [...this.tracks.keys()]) if (!seen.has(id)) this.drop(id);
  }

  private seed(instance: StandbyInstance, flows: ConntrackFlow[] | undefined): void {
    const t = this.trackOf(instance.id);
    this.unindex(t);
    this.indexWake(instance);
    if (!this.isEligible(instance)) {
      this.clearIdleTimer(t);
      this.unqueue(t);
      t.active.clear();
      t.idleSince = undefined;
      t.target = undefined;
      this.deps.runtime.set(instance.id, undefined);
      return;
    }
    const p = instance.policy!;
    t.timeoutMs = parseGoDuration(p.idleTimeout) / 1e6;
    t.target = {
      ip: instance.ip,
      ignoreDestinationPorts: new Set(p.ignoreDestinationPorts),
      ignoreSourceCidrs: p.ignoreSourceCidrs.map((c) => parseCidr(c)).filter((c): c is ParsedCidr => c !== undefined),
    };
    this.index(t);
    if (flows) t.active = new Set(flows.filter((f) => isActiveInbound(f, t.target!)).map(key));
    const now = this.deps.clock.now();
    if (t.active.size > 0) {
      t.idleSince = undefined;
      t.lastInboundAt ??= now;
      this.unqueue(t);
      this.clearIdleTimer(t);
      this.armReconcile();
    } else {
      t.idleSince ??= now;
      this.armIdle(t);
    }
    this.persist(t);
  }

  private onFlow(flow: ConntrackFlow): void {
    const ids = this.byIp.get(flow.dstIp);
    const now = this.deps.clock.now();
    for (const id of ids ?? []) {
      const t = this.tracks.get(id);
      if (!t?.target) continue;
      const k = key(flow);
      if (flow.kind === "new" && isActiveInbound(flow, t.target)) {
        const wasIdle = t.active.size === 0;
        t.active.add(k);
        t.lastInboundAt = now;
        if (wasIdle) {
          t.idleSince = undefined;
          this.clearIdleTimer(t);
          this.unqueue(t);
          this.persist(t);
          this.armReconcile();
        }
      } else if ((flow.kind === "destroy" || !isActiveTcpState(flow.tcpState)) && t.active.delete(k) && t.active.size === 0) {
        t.idleSince = now;
        this.persist(t);
        this.armIdle(t);
      }
    }
    // Wake on traffic: a NEW inbound flow to an instance on standby.
    const sleeping = flow.kind === "new" && isActiveTcpState(flow.tcpState) ? this.wakeByIp.get(flow.dstIp) : undefined;
    for (const id of sleeping ?? []) {
      const instance = this.deps.instances.get(id);
      if (instance?.state !== InstanceState.STANDBY || !instance.policy?.wakeOnTraffic) continue;
      if (this.tracks.get(id)?.waking) continue;
      this.wake(id).catch((e) => this.deps.onError?.("wake", id, e));
    }
  }

  private deadline(t: Track): number | undefined {
    if (t.idleSince === undefined || t.timeoutMs === undefined) return undefined;
    return Math.max(t.idleSince + t.timeoutMs, t.holdUntil ?? 0, t.traffic ? t.traffic.quietSince + t.timeoutMs : 0);
  }

  private armIdle(t: Track): void {
    this.clearIdleTimer(t);
    const at = this.deadline(t);
    if (at === undefined || this.closed) return;
    if (!t.traffic) {
      // The first sample of a window starts it (quietSince = now): re-read the deadline.
      this.sampleTraffic(t);
      if (t.traffic) return this.armIdle(t);
    }
    this.armTrafficSampler();
    t.idleTimer = this.deps.clock.setTimeout(() => void this.onIdleTimer(t.id), Math.max(0, at - this.deps.clock.now()));
  }

  private clearIdleTimer(t: Track): void {
    if (t.idleTimer !== undefined) this.deps.clock.clearTimeout(t.idleTimer);
    t.idleTimer = undefined;
  }

  private async onIdleTimer(id: string): Promise<void> {
    const t = this.tracks.get(id);
    const instance = this.deps.instances.get(id);
    if (!t || !instance || this.closed) return;
    t.idleTimer = undefined;
    const at = this.deadline(t);
    // Stale timer, clock step, activity or a hold since it was armed: re-arm, nothing else.
    if (t.active.size > 0 || at === undefined || this.deps.clock.now() < at || !this.isEligible(instance)) {
      if (t.active.size === 0) this.armIdle(t);
      return;
    }
    // Traffic on the interface is activity whatever conntrack says (blind or lossy tracking
    // must never put a busy instance to sleep): the last interval is sampled now.
    if (this.sampleTraffic(t) === "busy") return;
    if (t.traffic && this.deps.clock.now() < (this.deadline(t) ?? 0)) {
      this.armIdle(t); // the window counts from the first sample, not from idle_since
      return;
    }
    // Confirm with a fresh dump: lost NEW events must never put a busy instance to sleep.
    let flows: ConntrackFlow[];
    try {
      flows = await this.deps.source!.dump();
    } catch (e) {
      this.deps.onError?.("confirm dump", id, e);
      t.idleSince = this.deps.clock.now();
      this.persist(t);
      this.armIdle(t);
      return;
    }
    const active = flows.filter((f) => t.target && isActiveInbound(f, t.target)).map(key);
    if (active.length > 0) {
      this.counters.confirmFoundFlows++;
      t.active = new Set(active);
      t.idleSince = undefined;
      t.lastInboundAt = this.deps.clock.now();
      this.persist(t);
      this.armReconcile();
      return;
    }
    if (t.active.size > 0 || t.queued || t.executing) return; // activity arrived during the dump
    t.queued = true;
    this.queue.push(id);
    this.pump();
  }

  /**
   * Samples the interface of an instance counting down. "busy": more than the threshold's bytes
   * per second since the last sample (or the counter went back: the interface was recreated, what
   * happened is unknown), and the countdown has started again. "unmeasured": no interface or it
   * cannot be read; conntrack decides alone (Describe's tracking_mode says which).
   */
  private sampleTraffic(t: Track): "busy" | "quiet" | "unmeasured" {
    const reading = this.deps.interfaceBytes?.(t.id);
    const now = this.deps.clock.now();
    if (!reading) {
      t.traffic = undefined;
      return "unmeasured";
    }
    const prev = t.traffic;
    if (!prev || prev.device !== reading.device) {
      t.traffic = { device: reading.device, at: now, bytes: reading.bytes, quietSince: now };
      return "quiet";
    }
    const seconds = (now - prev.at) / 1000;
    const rate = reading.bytes < prev.bytes ? Number.POSITIVE_INFINITY : Number(reading.bytes - prev.bytes) / Math.max(1, seconds);
    if (rate <= (this.deps.interfaceIdleBytesPerSecond ?? 1024)) {
      // Short intervals keep accumulating into the next one instead of diluting it.
      if (seconds >= 1) t.traffic = { ...prev, at: now, bytes: reading.bytes };
      return "quiet";
    }
    t.traffic = { device: reading.device, at: now, bytes: reading.bytes, quietSince: now };
    this.counters.confirmFoundTraffic++;
    t.untrackedTrafficAt = now;
    t.untrackedTrafficBytesPerSecond = Math.round(rate);
    t.lastInboundAt = now;
    if (t.active.size === 0) t.idleSince = now;
    this.unqueue(t);
    this.persist(t);
    this.armIdle(t);
    return "busy";
  }

  /** One timer samples every instance counting down (idle, no tracked connection). */
  private armTrafficSampler(): void {
    if (this.trafficTimer !== undefined || this.closed || !this.deps.interfaceBytes) return;
    this.trafficTimer = this.deps.clock.setTimeout(() => {
      this.trafficTimer = undefined;
      let counting = false;
      for (const t of this.tracks.values()) {
        if (t.idleSince === undefined || t.active.size > 0 || t.executing || t.waking) continue;
        const instance = this.deps.instances.get(t.id);
        if (!instance || !this.isEligible(instance)) continue;
        counting = true;
        this.sampleTraffic(t);
      }
      if (counting) this.armTrafficSampler();
    }, this.deps.interfaceSampleMs ?? 2000);
  }

  private unqueue(t: Track): void {
    if (!t.queued) return;
    t.queued = false;
    const i = this.queue.indexOf(t.id);
    if (i >= 0) this.queue.splice(i, 1);
  }

  /** Runs queued standby requests, at most `concurrency` at once, off the event loop's path. */
  private pump(): void {
    const limit = this.deps.concurrency ?? 16;
    while (this.running < limit && this.queue.length > 0) {
      const id = this.queue.shift()!;
      const t = this.tracks.get(id);
      const instance = this.deps.instances.get(id);
      if (!t || !instance || !t.queued) continue;
      t.queued = false;
      // It may have waited in the queue: traffic since the confirm calls it off.
      if (this.sampleTraffic(t) === "busy") continue;
      t.executing = true;
      this.running++;
      void (async () => {
        try {
          await this.deps.standby(instance);
          await this.deps.setState(id, InstanceState.STANDBY);
          this.counters.standby.ok++;
          t.lastError = undefined;
          t.idleSince = undefined;
          // Its last sample is from before the standby: after a wake, the window starts afresh.
          t.traffic = undefined;
          // A client that connected while the driver was still working must not be stranded.
          const arrivedMeanwhile = t.active.size > 0;
          t.active.clear();
          this.deps.runtime.set(id, undefined);
          const now = this.deps.instances.get(id);
          if (now) this.indexWake(now);
          if (arrivedMeanwhile && now?.policy?.wakeOnTraffic) {
            setImmediate(() => this.wake(id).catch((e) => this.deps.onError?.("wake", id, e)));
          }
        } catch (e) {
          this.counters.standby.failed++;
          t.lastError = `standby: ${errorMessage(e)}`;
          this.deps.onError?.("standby", id, e);
          // Retried one timeout later.
          t.idleSince = this.deps.clock.now();
          this.persist(t);
          this.armIdle(t);
        } finally {
          t.executing = false;
          this.running--;
          this.pump();
        }
      })();
    }
  }

  private armReconcile(): void {
    if (this.reconcileTimer !== undefined || this.closed || !this.deps.source) return;
    this.reconcileTimer = this.deps.clock.setTimeout(() => {
      this.reconcileTimer = undefined;
      void this.reconcile();
    }, this.deps.reconcileMs ?? 2000);
  }

  /** One dump for every instance with active flows; their sets are replaced by what it shows. */
  private async reconcile(): Promise<void> {
    const busy = [...this.tracks.values()].filter((t) => t.active.size > 0 && t.target);
    if (busy.length === 0 || this.closed) return;
    let flows: ConntrackFlow[];
    try {
      flows = await this.deps.source!.dump();
    } catch (e) {
      this.deps.onError?.("reconcile", undefined, e);
      this.armReconcile();
      return;
    }
    const ips = new Set(busy.map((t) => t.target!.ip));
    const relevant = flows.filter((f) => ips.has(f.dstIp));
    for (const t of busy) {
      t.active = new Set(relevant.filter((f) => isActiveInbound(f, t.target!)).map(key));
      if (t.active.size === 0) {
        t.idleSince = this.deps.clock.now();
        this.persist(t);
        this.armIdle(t);
      }
    }
    if ([...this.tracks.values()].some((t) => t.active.size > 0)) this.armReconcile();
  }

  private armSync(): void {
    if (this.closed) return;
    this.syncTimer = this.deps.clock.setTimeout(() => {
      void this.resync("periodic sync").finally(() => this.armSync());
    }, this.deps.syncMs ?? 300_000);
  }

  private persist(t: Track): void {
    this.deps.runtime.set(t.id, { idleSince: this.wall(t.idleSince), lastInboundAt: this.wall(t.lastInboundAt), holdUntil: this.wall(t.holdUntil) });
  }

  /** A monotonic moment as a wall-clock timestamp (reported, persisted). */
  private wall(mono: number | undefined): number | undefined {
    return mono === undefined ? undefined : this.anchor.toWall(mono);
  }

  /** A persisted wall-clock timestamp as a monotonic moment. */
  private mono(wall: number | undefined): number | undefined {
    return wall === undefined ? undefined : this.anchor.toMonotonic(wall);
  }

  private index(t: Track): void {
    if (!t.target) return;
    let ids = this.byIp.get(t.target.ip);
    if (!ids) this.byIp.set(t.target.ip, (ids = new Set()));
    ids.add(t.id);
  }

  private indexWake(instance: StandbyInstance): void {
    for (const [ip, ids] of this.wakeByIp) {
      if (ids.delete(instance.id) && ids.size === 0) this.wakeByIp.delete(ip);
    }
    if (instance.state !== InstanceState.STANDBY || !instance.policy?.wakeOnTraffic || instance.ip === "") return;
    let ids = this.wakeByIp.get(instance.ip);
    if (!ids) this.wakeByIp.set(instance.ip, (ids = new Set()));
    ids.add(instance.id);
  }

  private unindex(t: Track): void {
    if (!t.target) return;
    const ids = this.byIp.get(t.target.ip);
    ids?.delete(t.id);
    if (ids?.size === 0) this.byIp.delete(t.target.ip);
  }

  private drop(id: string): void {
    for (const [ip, ids] of this.wakeByIp) {
      if (ids.delete(id) && ids.size === 0) this.wakeByIp.delete(ip);
    }
    const t = this.tracks.get(id);
    if (!t) return;
    this.clearIdleTimer(t);
    this.unqueue(t);
    this.unindex(t);
    this.tracks.delete(id);
    this.deps.runtime.set(id, undefined);
  }
}
