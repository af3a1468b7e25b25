/**
 * The longest deadline a host's part of a fan-out may have, from any source (flag, hosts file,
 * AddHost, per call): a typo must not hold a fan-out for hours (and Node timers overflow past
 * 2^31 ms). In lib/ because the CLI checks `--per-host-timeout` with the same rule as the
 * aggregator, without loading the aggregator's host connections.
 */
const MAX_HOST_TIMEOUT_MS = 300_000;

/** Why `ms` is not a usable host deadline, or undefined when it is. */
export function hostTimeoutProblem(ms: number): string | undefined {
  if (!(ms > 0) || ms > MAX_HOST_TIMEOUT_MS) return `must be > 0 and <= ${MAX_HOST_TIMEOUT_MS / 1000}s, got ${ms} ms`;
  return undefined;
}
