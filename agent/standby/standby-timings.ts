/**
 * The standby controller's timings, agent flags with standby.md's defaults. Kept apart from the
 * wiring (standby-setup.ts) so the CLI can show the defaults without loading the agent.
 */
export interface StandbyTimings {
  /** --standby-reconcile-interval: conntrack re-read while an instance has active flows. */
  reconcileMs: number;
  /** --standby-sync-interval: full resync of every instance, and the tracking check. */
  syncMs: number;
  /** --standby-reconnect-delay: restart of a dead conntrack reader, retry of a failed resync. */
  reconnectMs: number;
}

export const DEFAULT_STANDBY_TIMINGS: StandbyTimings = { reconcileMs: 2000, syncMs: 300_000, reconnectMs: 200 };

/** --standby-min-idle: the shortest idle_timeout a policy may have. */
export const DEFAULT_MIN_IDLE_MS = 5000;
