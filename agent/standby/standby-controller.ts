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

/**
 * A flow event; `observedAt` (monotonic ms, the seed's ObservedAt) is when the source received
 * it. Without it the controller uses the moment it handles the event.
 */
export type FlowEvent = ConntrackFlow & { observedAt?: number };

/** Conntrack as the controller sees it: dumps, and 'flow' / 'overflow' / 'error' events. */
export interface FlowSource {
  dump(): Promise<ConntrackFlow[]>;
  on(event: "flow", listener: (flow: FlowEvent) => void): unknown;
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
  /** Re-read of the table while an instance has active flows (--standby-reconcile-interval, 2 s). */
  reconcileMs?: number;
  /** Full resync of every instance (--standby-sync-interval, 5 min). */
  syncMs?: number;
  /** Retry of a resync that failed after a stream error or overflow (--standby-reconnect-delay, 200 ms). */
  reconnectMs?: number;
  concurrency?: number;
  /**
   * Whether conntrack is really tracking flows where the agent runs (tracking-check.ts): the
   * reason it is not, or undefined. Run at start, at every periodic sync, and every
   * `trackingRecheckMs` while it fails (a rule may be added later). Absent: assumed tracking.
   */
  checkTracking?: () => Promise<string | undefined>;
  /** How often a failed tracking check is run again (default 30 s). */
  trackingRecheckMs?: number;
  /**
   * How long an instance's interface must carry traffic, sample after sample, with conntrack
   * showing no flow of its address before a dump is asked whether conntrack sees it at all
   * (default 10 s). No flow in that dump either: ERROR / CONNTRACK_BLIND.
   */
  blindWindowMs?: number;
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
  | "OBSERVER_ERROR" | "ACTIVE_INBOUND_CONNECTIONS" | "HOLD" | "IDLE_TIMEOUT_NOT_ELAPSED" | "INTERFACE_TRAFFIC"
  | "CONNTRACK_BLIND";

/** The operations whose failures are counted (fleetlet_standby_controller_errors_total). */
export const CONTROLLER_OPERATIONS = ["refresh_dump", "resync", "confirm_dump", "reconcile", "standby", "wake", "tracking_check", "blind_check"] as const;
export type ControllerOperation = (typeof CONTROLLER_OPERATIONS)[number];

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
  /** Why standby cannot run here, when `supported` is false. */
  unsupportedReason?: string;
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
  /**
   * Busy samples that conntrack did not explain: the first and last of them and how many, since
   * conntrack last showed a flow of this address (evidence older than a timeout is forgotten).
   */
  unseenBusy?: { since: number; last: number; count: number };
  /** Conntrack is blind for this instance (see blindWindowMs): why, for Describe's last_error. */
  blind?: string;
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
  /** Why conntrack is not tracking flows where the agent runs (checkTracking), if it is not. */
  private trackingInactive: string | undefined;
  private trackingTimer: unknown;
  private reconnectTimer: unknown;
  /** When conntrack last showed a flow (any state, either direction) of each tracked address. */
  private readonly lastSeenByIp = new Map<string, number>();
  private blindCheck: Promise<void> | undefined;
  private closed = false;
  private readonly anchor: WallClockAnchor;
  readonly counters = {
    standby: { ok: 0, failed: 0 },
    wake: { ok: 0, failed: 0 },
    confirmFoundFlows: 0,
    confirmFoundTraffic: 0,
    resyncs: 0,
    /** Failures by operation (fleetlet_standby_controller_errors_total{operation}). */
    errors: Object.fromEntries(CONTROLLER_OPERATIONS.map((o) => [o, 0])) as Record<ControllerOperation, number>,
  };

  constructor(private readonly deps: StandbyControllerDeps) {
    this.anchor = new WallClockAnchor(() => deps.clock.now(), () => deps.clock.wallNow());
  }

  /**
   * Standby can run: conntrack can be read and it is tracking flows here. A table that reads
   * but stays empty (no rule in this namespace uses conntrack) would make every instance look
   * idle: that is UNSUPPORTED too, with the reason, never a countdown.
   */
  get supported(): boolean {
    return this.deps.source !== undefined && this.trackingInactive === undefined;
  }

  /** Why standby cannot run here (undefined while it can). */
  get unsupportedReason(): string | undefined {
    if (!this.deps.source) return this.deps.unsupportedReason ?? "conntrack unavailable";
    return this.trackingInactive;
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
    await this.checkTracking();
    this.armSync();
  }

  close(): void {
    this.closed = true;
    for (const t of this.tracks.values()) this.clearIdleTimer(t);
    for (const timer of [this.reconcileTimer, this.syncTimer, this.trafficTimer, this.trackingTimer, this.reconnectTimer]) {
      if (timer !== undefined) this.deps.clock.clearTimeout(timer);
    }
  }

  /** Runs the tracking check; while it fails, again every trackingRecheckMs. */
  private async checkTracking(): Promise<void> {
    if (!this.deps.checkTracking || this.closed) return;
    let inactive: string | undefined;
    try {
      inactive = await this.deps.checkTracking();
    } catch (e) {
      // A check that cannot run proves nothing either way: keep the last answer.
      this.fail("tracking_check", undefined, e);
      return;
    }
    const was = this.trackingInactive;
    this.trackingInactive = inactive;
    if (this.trackingTimer !== undefined) this.deps.clock.clearTimeout(this.trackingTimer);
    this.trackingTimer = undefined;
    if (inactive !== undefined && !this.closed) {
      this.trackingTimer = this.deps.clock.setTimeout(() => {
        this.trackingTimer = undefined;
        void this.checkTracking();
      }, this.deps.trackingRecheckMs ?? 30_000);
    } else if (was !== undefined) {
      // Tracking came on: nothing seen so far can be trusted, every instance starts afresh.
      for (const t of this.tracks.values()) {
        t.blind = undefined;
        t.unseenBusy = undefined;
        if (t.active.size === 0 && t.idleSince !== undefined) t.idleSince = this.deps.clock.now();
      }
      await this.resync("tracking active");
    }
  }

  /** Counts a failure by operation and reports it (logs). */
  private fail(operation: ControllerOperation, id: string | undefined, e: unknown): void {
    this.counters.errors[operation]++;
    this.deps.onError?.(operation, id, e);
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
    if (!this.deps.source || present.length === 0) return;
    let flows: ConntrackFlow[] | undefined;
    if (present.some((i) => this.isEligible(i))) {
      try {
        flows = await this.deps.source.dump();
      } catch (e) {
        this.fail("refresh_dump", undefined, e);
      }
    }
    for (const instance of present) {
      // Re-read: it may have changed while the dump ran.
      const current = this.deps.instances.get(instance.id);
      if (current) this.seed(current, flows);
    }
    if (flows) this.noteSightings(flows);
    if (this.pendingRefresh.size > 0) await this.runRefresh();
  }

  describe(id: string): StandbyDescription {
    const instance = this.deps.instances.get(id);
    if (!instance) throw new ConnectError(`instance ${JSON.stringify(id)} not found`, Code.NotFound);
    const t = this.tracks.get(id);
    const now = this.deps.clock.now();
    const p = instance.policy;
    // Presence is the policy's: `{enabled: false}` without a timeout is a policy that is off
    // (POLICY_DISABLED, seed 002), not a missing one; registration keeps a missing one absent.
    const configured = p !== undefined;
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
      unsupportedReason: this.unsupportedReason,
    };
    const next = t ? this.deadline(t) : undefined;
    const withNext = { ...base, nextStandbyAt: this.wall(next), countdownRemainingMs: next !== undefined ? Math.max(0, Math.round(next - now)) : undefined };
    const row = (status: Phase, reason: Reason): StandbyDescription => ({ ...withNext, status, reason });
    // No countdown where none can end in a standby (a NEXT-STANDBY "in 9s" next to UNSUPPORTED
    // read as if it would).
    const still = (status: Phase, reason: Reason): StandbyDescription => ({ ...base, status, reason });
    if (!this.supported) return { ...still("UNSUPPORTED", "UNSUPPORTED_PLATFORM"), supported: false };
    if (!configured) return still("DISABLED", "POLICY_MISSING");
    if (!p!.enabled) return still("DISABLED", "POLICY_DISABLED");
    if (instance.state === InstanceState.STANDBY) return t?.waking ? still("WAKING", "WAKING") : still("IN_STANDBY", "STANDBY");
    if (instance.state !== InstanceState.RUNNING) return still("INELIGIBLE", "INSTANCE_NOT_RUNNING");
    if (!instance.networkEnabled) return still("INELIGIBLE", "NETWORK_DISABLED");
    if (instance.ip === "") return still("INELIGIBLE", "MISSING_IP");
    if (instance.hasVgpu) return still("INELIGIBLE", "HAS_VGPU");
    if (t && (t.queued || t.executing)) return row("STANDBY_REQUESTED", "READY_FOR_STANDBY");
    if (this.observerError !== undefined) return { ...still("ERROR", "OBSERVER_ERROR"), lastError: this.observerError };
    if (t?.blind !== undefined) return { ...still("ERROR", "CONNTRACK_BLIND"), lastError: t.blind };
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
    // Without conntrack (--standby off, or unavailable at start) this agent never put anything on
    // standby: a STANDBY set through SetInstanceState must not become a SIGCONT / thaw / unpause.
    if (!this.deps.source) {
      throw new ConnectError(`wake ${JSON.stringify(id)}: standby is not running on this agent (${this.unsupportedReason ?? "conntrack unavailable"}): no driver acts`, Code.FailedPrecondition);
    }
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
      this.fail("resync", undefined, e);
      // Events may be lost until a resync succeeds: try again soon, not at the next sync.
      if (this.reconnectTimer === undefined && !this.closed) {
        this.reconnectTimer = this.deps.clock.setTimeout(() => {
          this.reconnectTimer = undefined;
          if (this.observerError !== undefined) void this.resync("reconnect");
        }, this.deps.reconnectMs ?? 200);
      }
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
    for (const ip of this.lastSeenByIp.keys()) if (!this.byIp.has(ip)) this.lastSeenByIp.delete(ip);
    this.noteSightings(flows);
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
      t.blind = undefined;
      t.unseenBusy = undefined;
      // A hold in force is kept (persisted like any other): placed on a stopped instance, it
      // must still be there when the instance runs again, across agent restarts too.
      const hold = t.holdUntil !== undefined && t.holdUntil > this.deps.clock.now() ? this.wall(t.holdUntil) : undefined;
      this.deps.runtime.set(instance.id, hold !== undefined ? { holdUntil: hold } : undefined);
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

  private onFlow(flow: FlowEvent): void {
    const ids = this.byIp.get(flow.dstIp);
    // When the source received it (never later than now): idle_since and last inbound activity
    // are the moment the connection changed, not when the event was handled.
    const now = Math.min(flow.observedAt ?? Number.POSITIVE_INFINITY, this.deps.clock.now());
    this.sighted(flow.dstIp, now);
    this.sighted(flow.srcIp, now);
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
      this.wake(id).catch((e) => this.fail("wake", id, e));
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
    // Conntrack not tracking (here, or for this instance): no countdown ends in a standby. A
    // tracking check that succeeds, or a flow of this instance, starts the countdown again.
    if (this.trackingInactive !== undefined || t.blind !== undefined) return;
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
      this.fail("confirm_dump", id, e);
      t.idleSince = this.deps.clock.now();
      this.persist(t);
      this.armIdle(t);
      return;
    }
    this.noteSightings(flows);
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
    if (this.trackingInactive !== undefined || t.blind !== undefined) return;
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
    this.watchForBlindness(t, now);
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

  /**
   * A busy sample with no tracked inbound connection. At least three such samples spanning a
   * whole blindWindowMs (none more than a timeout after the previous one) while conntrack shows
   * no flow of the address (no event; then not in a fresh dump either, which also finds
   * long-lived flows that send no events) mean conntrack does not see this instance: ERROR /
   * CONNTRACK_BLIND, and no countdown until it does. One burst is not enough evidence.
   */
  private watchForBlindness(t: Track, now: number): void {
    const ip = t.target?.ip;
    // Not tracking anywhere here already says it all (UNSUPPORTED, no countdown).
    if (ip === undefined || t.blind !== undefined || this.trackingInactive !== undefined) return;
    const seen = this.lastSeenByIp.get(ip);
    const u = t.unseenBusy;
    if (!u || (seen !== undefined && seen >= u.since) || now - u.last > (t.timeoutMs ?? 0)) {
      t.unseenBusy = { since: now, last: now, count: 1 };
      return;
    }
    u.last = now;
    u.count++;
    if (u.count < 3 || now - u.since < (this.deps.blindWindowMs ?? 10_000) || this.blindCheck) return;
    this.blindCheck = this.checkBlind().finally(() => (this.blindCheck = undefined));
  }

  /** One dump for every instance whose traffic conntrack has not shown for a whole window. */
  private async checkBlind(): Promise<void> {
    let flows: ConntrackFlow[];
    try {
      flows = await this.deps.source!.dump();
    } catch (e) {
      this.fail("blind_check", undefined, e);
      return;
    }
    this.noteSightings(flows);
    const window = this.deps.blindWindowMs ?? 10_000;
    const now = this.deps.clock.now();
    for (const t of this.tracks.values()) {
      const u = t.unseenBusy;
      if (!u || u.count < 3 || t.blind !== undefined || !t.target || now - u.since < window) continue;
      const seen = this.lastSeenByIp.get(t.target.ip);
      if (seen !== undefined && seen >= u.since) continue;
      const active = flows.filter((f) => isActiveInbound(f, t.target!)).map(key);
      if (active.length > 0) {
        // Seen after all (sightings above): the events for it were lost. Active, as a confirm.
        t.active = new Set(active);
        t.idleSince = undefined;
        t.lastInboundAt = now;
        this.clearIdleTimer(t);
        this.unqueue(t);
        this.persist(t);
        this.armReconcile();
        continue;
      }
      t.blind =
        `conntrack shows no flow of ${t.target.ip} while its interface carried ${t.untrackedTrafficBytesPerSecond ?? 0} bytes/s in ${u.count} samples over ${Math.round((now - u.since) / 1000)} s ` +
        "(its traffic bypasses the tracked hooks, or is not TCP); no standby until conntrack shows a flow of it: docs/operations.md";
      this.clearIdleTimer(t);
      this.unqueue(t);
    }
  }

  /** Conntrack showed a flow of `ip` at `at`: tracking sees it; a blind instance counts again. */
  private sighted(ip: string, at: number): void {
    const ids = this.byIp.get(ip);
    if (!ids) return;
    this.lastSeenByIp.set(ip, Math.max(at, this.lastSeenByIp.get(ip) ?? at));
    for (const id of ids) {
      const t = this.tracks.get(id);
      if (t?.blind === undefined) continue;
      t.blind = undefined;
      t.unseenBusy = undefined;
      if (t.active.size === 0) {
        // Nothing it did while unseen can be trusted: a whole window from now.
        t.idleSince = this.deps.clock.now();
        this.persist(t);
        this.armIdle(t);
      }
    }
  }

  /** Every flow of a dump is a sighting of both its addresses. */
  private noteSightings(flows: ConntrackFlow[]): void {
    if (this.byIp.size === 0) return;
    const now = this.deps.clock.now();
    for (const f of flows) {
      if (this.byIp.has(f.dstIp)) this.sighted(f.dstIp, now);
      if (this.byIp.has(f.srcIp)) this.sighted(f.srcIp, now);
    }
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
            setImmediate(() => this.wake(id).catch((e) => this.fail("wake", id, e)));
          }
        } catch (e) {
          this.counters.standby.failed++;
          t.lastError = `standby: ${errorMessage(e)}`;
          this.fail("standby", id, e);
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
      this.fail("reconcile", undefined, e);
      this.armReconcile();
      return;
    }
    this.noteSightings(flows);
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
      // The tracking check too: a rule that used conntrack may have been removed since.
      void this.resync("periodic sync")
        .then(() => this.checkTracking())
        .finally(() => this.armSync());
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
