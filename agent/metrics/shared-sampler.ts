import { Code, ConnectError } from "@connectrpc/connect";
import type { InstanceStats } from "../../gen/fleetlet/agent/v1/metrics_pb.js";
import { monotonicMs } from "../../lib/monotonic-clock.js";

export const MIN_INTERVAL_MS = 100;
export const DEFAULT_INTERVAL_MS = 1000;
/** Batches a watcher may have waiting before older ones are dropped (and counted). */
export const WATCH_QUEUE_LIMIT = 8;
/** Streams one agent serves at once; more get RESOURCE_EXHAUSTED. */
export const MAX_WATCHERS = 1024;
/** Stats watches one client (peer address) may hold: a share, so one client cannot take all slots. */
export const MAX_WATCHERS_PER_PEER = MAX_WATCHERS / 4;

export interface SampleBatch {
  /** Wall-clock epoch ms (reported as sampled_at). */
  sampledAtMs: number;
  stats: InstanceStats[];
  /** Batches dropped for this watcher just before this one because it read too slowly. */
  dropped: number;
}

interface Watcher {
  peer: string;
  intervalMs: number;
  ids: ReadonlySet<string>;
  /** Monotonic ms: when a watcher is due is a duration, whatever the wall clock does. */
  lastDeliveredMs: number;
  queue: SampleBatch[];
  dropped: number;
  wake: (() => void) | undefined;
}

/**
 * One sampler for every WatchInstanceStats stream: it sweeps at the shortest interval any
 * watcher asked for, and each watcher takes the sweeps that fall due for its own interval.
 * A hundred watchers cost one /proc sweep per tick, not a hundred.
 */
export class SharedSampler {
  private readonly watchers = new Set<Watcher>();
  private readonly perPeer = new Map<string, number>();
  private timer: NodeJS.Timeout | undefined;
  private tickMs = 0;
  /** Sweeps done since start; tests use it to check that watchers share them. */
  sweeps = 0;

  constructor(
    private readonly sweep: (extraIds: string[]) => InstanceStats[],
    private readonly monoMs: () => number = monotonicMs,
    private readonly wallMs: () => number = () => Date.now(),
  ) {}

  /** Streams batches until `signal` aborts; `peer` is the client's address, for its share. */
  async *watch(intervalMs: number, ids: string[], signal: AbortSignal, peer = ""): AsyncGenerator<SampleBatch> {
    const held = this.perPeer.get(peer) ?? 0;
    if (held >= MAX_WATCHERS_PER_PEER) {
      throw new ConnectError(`at most ${MAX_WATCHERS_PER_PEER} stats watches per client (a quarter of the agent's ${MAX_WATCHERS}); ${peer || "this client"} has ${held}`, Code.ResourceExhausted);
    }
    if (this.watchers.size >= MAX_WATCHERS) {
      throw new ConnectError(`at most ${MAX_WATCHERS} stats watches at once; this agent has ${this.watchers.size}`, Code.ResourceExhausted);
    }
    this.perPeer.set(peer, held + 1);
    const watcher: Watcher = {
      peer,
      intervalMs,
      ids: new Set(ids),
      lastDeliveredMs: 0,
      queue: [],
      dropped: 0,
      wake: undefined,
    };
    this.watchers.add(watcher);
    this.reschedule();
    // The first batch goes out at once rather than after a whole interval.
    this.tick(new Set([watcher]));
    const onAbort = () => watcher.wake?.();
    signal.addEventListener("abort", onAbort, { once: true });
    try {
      while (!signal.aborted) {
        const batch = watcher.queue.shift();
        if (batch) {
          yield batch;
          continue;
        }
        await new Promise<void>((resolve) => (watcher.wake = resolve));
        watcher.wake = undefined;
      }
    } finally {
      signal.removeEventListener("abort", onAbort);
      this.watchers.delete(watcher);
      const left = (this.perPeer.get(peer) ?? 1) - 1;
      if (left > 0) this.perPeer.set(peer, left);
      else this.perPeer.delete(peer);
      this.reschedule();
    }
  }

  get watcherCount(): number {
    return this.watchers.size;
  }

  close(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    for (const w of this.watchers) w.wake?.();
  }

  private reschedule(): void {
    const shortest = Math.min(...[...this.watchers].map((w) => w.intervalMs));
    if (!Number.isFinite(shortest)) {
      if (this.timer) clearInterval(this.timer);
      this.timer = undefined;
      this.tickMs = 0;
      return;
    }
    if (shortest === this.tickMs && this.timer) return;
    if (this.timer) clearInterval(this.timer);
    this.tickMs = shortest;
    this.timer = setInterval(() => this.tick(), shortest);
    this.timer.unref();
  }

  private tick(only?: Set<Watcher>): void {
    const now = this.monoMs();
    // Due when at least its interval has passed, minus half a tick of timer jitter.
    const due = [...(only ?? this.watchers)].filter(
      (w) => only !== undefined || now - w.lastDeliveredMs >= w.intervalMs - this.tickMs / 2,
    );
    if (due.length === 0) return;
    const extra = new Set<string>();
    for (const w of due) for (const id of w.ids) extra.add(id);
    const sampledAtMs = this.wallMs();
    const all = this.sweep([...extra]);
    this.sweeps++;
    for (const w of due) {
      const stats = w.ids.size === 0 ? all : all.filter((s) => w.ids.has(s.instanceId));
      if (w.queue.length >= WATCH_QUEUE_LIMIT) {
        // The dropped batch's own count of earlier drops moves on with it.
        const shifted = w.queue.shift()!;
        w.dropped += 1 + shifted.dropped;
      }
      w.queue.push({ sampledAtMs, stats, dropped: w.dropped });
      w.dropped = 0;
      w.lastDeliveredMs = now;
      w.wake?.();
    }
  }
}
