import { performance } from "node:perf_hooks";

/**
 * Milliseconds on the monotonic clock (fractional; counted from this process's start). It never
 * steps when the wall clock does (NTP, `date -s`, a resumed VM), so every duration, deadline,
 * interval and age is measured on it; Date.now() is only for timestamps that are reported or
 * persisted (docs/architecture.md "Monotonic durations, wall timestamps").
 */
export function monotonicMs(): number {
  return performance.now();
}

/** How far the wall clock may drift from the anchor before it is taken again. */
const REANCHOR_TOLERANCE_MS = 100;

/**
 * Converts between monotonic moments and wall-clock timestamps (epoch ms) with one offset, taken
 * again only when the wall clock moves more than 100 ms away from it (a step, or slewing that
 * added up). A fixed offset makes the same moment read the same in every answer: recomputed at
 * each call, the two clocks' rounding would make a reported "idle since" flicker by a
 * millisecond, and a watch that compares answers would send a change each time.
 */
export class WallClockAnchor {
  private offset: number | undefined;

  constructor(
    private readonly monoNow: () => number = monotonicMs,
    private readonly wallNow: () => number = Date.now,
  ) {}

  /** The wall-clock timestamp of a monotonic moment, as the wall clock reads now (whole ms). */
  toWall(mono: number): number {
    return Math.round(mono + this.currentOffset());
  }

  /**
   * The monotonic moment of a wall-clock timestamp read back from disk (a persisted deadline or
   * "since"): converted once, on load; from then on it does not move with the wall clock.
   */
  toMonotonic(wall: number): number {
    return wall - this.currentOffset();
  }

  private currentOffset(): number {
    const now = this.wallNow() - this.monoNow();
    if (this.offset === undefined || Math.abs(now - this.offset) > REANCHOR_TOLERANCE_MS) this.offset = now;
    return this.offset;
  }
}
