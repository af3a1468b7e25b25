import { PerformanceObserver } from "node:perf_hooks";
import v8 from "node:v8";

/**
 * Caps V8's young generation (new space) of this process at `semiSpaceMiB` per semi-space, from
 * inside the process.
 *
 * `--max-semi-space-size` only counts when V8 creates the heap (node's command line or
 * NODE_OPTIONS); set later with `v8.setFlagsFromString`, as bin/fleetlet.js used to, it changes
 * nothing: on Node 20 the new space of a loaded daemon still grows to its default maximum, 2 × 16
 * MiB here, and nearly all of it is resident (docs/benchmarks.md, P2). What V8 does read each time
 * it grows the new space is `--semi-space-growth-factor`: it stays at V8's default (2, doubling)
 * while the new space is below the cap and is set to 1 (no growth) once the cap is reached. V8
 * shrinks the new space by itself when allocation slows down; the next garbage collection sees it
 * below the cap and lets it grow again.
 *
 * Checked after every garbage collection (a `gc` performance observer). The observer runs between
 * tasks of the event loop, so one long synchronous burst of allocation can still grow the new
 * space past the cap before it runs; V8 shrinks it again once allocation slows down. Returns a
 * function that stops the observer (the factor stays as it was last set).
 */
export function capYoungGeneration(semiSpaceMiB: number): () => void {
  const capBytes = 2 * semiSpaceMiB * 1024 * 1024;
  let factor = 0;
  const check = () => {
    const newSpace = v8.getHeapSpaceStatistics().find((s) => s.space_name === "new_space");
    if (!newSpace) return;
    const want = newSpace.space_size >= capBytes ? 1 : 2;
    if (want === factor) return;
    factor = want;
    v8.setFlagsFromString(`--semi-space-growth-factor=${want}`);
  };
  check();
  const observer = new PerformanceObserver(check);
  observer.observe({ entryTypes: ["gc"] });
  return () => observer.disconnect();
}
