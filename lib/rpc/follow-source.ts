/**
 * The shape of a watch that always reads from its durable source (a ledger, a store) instead
 * of queueing per stream, so a slow client only falls behind: `nextPage()` returns what is new
 * since the caller's own cursor (undefined when nothing is), and the loop sleeps until the
 * source says something changed or the call ends. `nextPage` may throw to end the stream.
 */
export async function* followSource<P>(
  signal: AbortSignal,
  subscribe: (notify: () => void) => () => void,
  nextPage: () => P | undefined,
): AsyncGenerator<P> {
  let wake: (() => void) | undefined;
  const notify = () => {
    wake?.();
    wake = undefined;
  };
  const unsubscribe = subscribe(notify);
  signal.addEventListener("abort", notify);
  try {
    while (!signal.aborted) {
      const page = nextPage();
      if (page !== undefined) {
        yield page;
        continue;
      }
      await new Promise<void>((resolve) => (wake = resolve));
    }
  } finally {
    unsubscribe();
    signal.removeEventListener("abort", notify);
  }
}
