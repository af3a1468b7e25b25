/**
 * An AbortSignal that aborts when any of `sources` does, or after `timeoutMs`; `dispose()`
 * detaches it. Used instead of AbortSignal.any wherever a source lives long (a runtime's or a
 * session's signal): on Node 20, every AbortSignal.any stays referenced by its sources until
 * they abort, so one per call on a long-lived source is a leak that grows with the calls.
 */
export function linkedSignal(sources: readonly (AbortSignal | undefined)[], timeoutMs?: number): { signal: AbortSignal; timedOut(): boolean; dispose(): void } {
  const own = new AbortController();
  let timedOut = false;
  const timer =
    timeoutMs === undefined
      ? undefined
      : setTimeout(() => {
          timedOut = true;
          own.abort(new DOMException(`timed out after ${timeoutMs} ms`, "TimeoutError"));
        }, timeoutMs);
  const attached: [AbortSignal, () => void][] = [];
  for (const s of sources) {
    if (!s) continue;
    if (s.aborted) {
      own.abort(s.reason);
      break;
    }
    const forward = () => own.abort(s.reason);
    s.addEventListener("abort", forward, { once: true });
    attached.push([s, forward]);
  }
  return {
    signal: own.signal,
    timedOut: () => timedOut,
    dispose() {
      clearTimeout(timer);
      for (const [s, f] of attached) s.removeEventListener("abort", f);
      attached.length = 0;
    },
  };
}
