import { monotonicMs } from "../../monotonic-clock.js";

/**
 * A per-identity rate limit on mutating calls (security.md "Limits": "A per-identity rate limit on
 * mutating calls"): a token bucket per identity, refilled at `perSecond` up to `burst`. One
 * operator's script gone wrong (or a stolen token) cannot keep the agent busy registering,
 * freezing and thawing; reads and other identities are not slowed by it.
 *
 * Buckets live in a map keyed by identity; one that is full again is indistinguishable from a
 * new one, so it is dropped on the next sweep: the map holds only identities active in the last
 * few seconds, however many certificates a CA has issued.
 */
export class MutatingRateLimit {
  private readonly buckets = new Map<string, { tokens: number; atMs: number }>();
  private lastSweepMs: number;

  constructor(
    readonly perSecond: number,
    readonly burst: number = Math.max(1, 2 * perSecond),
    private readonly now: () => number = monotonicMs,
  ) {
    if (!(perSecond > 0) || !(burst >= 1)) throw new RangeError(`rate ${perSecond}/s with burst ${burst}: both must be positive`);
    this.lastSweepMs = now();
  }

  /** Takes one call's token for `identity`; false when its bucket is empty (refuse the call). */
  take(identity: string): boolean {
    const t = this.now();
    this.sweep(t);
    const b = this.buckets.get(identity) ?? { tokens: this.burst, atMs: t };
    b.tokens = Math.min(this.burst, b.tokens + ((t - b.atMs) / 1000) * this.perSecond);
    b.atMs = t;
    const allowed = b.tokens >= 1;
    if (allowed) b.tokens -= 1;
    this.buckets.set(identity, b);
    return allowed;
  }

  /** Identities with a bucket now (tests). */
  get tracked(): number {
    return this.buckets.size;
  }

  private sweep(t: number): void {
    const refillMs = (this.burst / this.perSecond) * 1000;
    if (t - this.lastSweepMs < Math.max(1000, refillMs)) return;
    this.lastSweepMs = t;
    for (const [k, b] of this.buckets) if (b.tokens + ((t - b.atMs) / 1000) * this.perSecond >= this.burst) this.buckets.delete(k);
  }
}
