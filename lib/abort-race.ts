/**
 * Settles like `work`, or rejects as soon as `signal` aborts, whichever comes first; the abort
 * listener is removed when `work` settles, so racing many calls against one long-lived signal
 * (a runtime's, a server's) leaves no listener behind. `work` itself is not stopped: pass the
 * signal to it as well when it can be. The rejection is the signal's reason unless
 * `abortError` makes another error of it (a caller whose contract says AbortError).
 */
export function raceAbort<T>(
  work: T | PromiseLike<T>,
  signal: AbortSignal | undefined,
  abortError: (signal: AbortSignal) => unknown = (s) => s.reason,
): Promise<T> {
  if (signal?.aborted) return Promise.reject(abortError(signal));
  // A handler that answered synchronously has nothing to race: no listener for it.
  if (!signal || !isThenable(work)) return Promise.resolve(work);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(abortError(signal));
    signal.addEventListener("abort", onAbort, { once: true });
    Promise.resolve(work)
      .finally(() => signal.removeEventListener("abort", onAbort))
      .then(resolve, reject);
  });
}

function isThenable(value: unknown): value is PromiseLike<unknown> {
  return (typeof value === "object" || typeof value === "function") && value !== null && typeof (value as { then?: unknown }).then === "function";
}

/**
 * Waits `ms`, or less if `signal` aborts first; never rejects (a backoff or a poll interval that
 * ends early because its caller is done). Its abort listener goes when the wait ends either
 * way: a loop that waits on one long-lived signal must not leave a listener per turn.
 */
export function sleepUnlessAborted(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done, { once: true });
  });
}
