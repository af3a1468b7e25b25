/**
 * Runs `work` over `items` with at most `concurrency` calls in flight and resolves with the
 * results in the order of `items` (not of completion). A fixed set of workers each take the
 * next item when they finish one, so a slow item holds one slot, never the others: the shape
 * of the aggregator's fan-out over hosts, the runtime's stats of every container and Docker's
 * inspect of every listed container. If a call rejects, no further item is started and the
 * pool rejects with that error (calls already in flight run on; their results are dropped).
 * Callers that want a result per item, failed or not, catch inside `work`.
 */
export async function mapBounded<T, R>(items: readonly T[], concurrency: number, work: (item: T, index: number) => Promise<R>): Promise<R[]> {
  if (!(concurrency >= 1)) throw new RangeError(`concurrency must be at least 1, got ${concurrency}`);
  const results: R[] = new Array(items.length);
  let next = 0;
  let failed = false;
  const worker = async () => {
    while (next < items.length && !failed) {
      const i = next++;
      try {
        results[i] = await work(items[i]!, i);
      } catch (e) {
        failed = true;
        throw e;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, worker));
  return results;
}
