/**
 * Run as `node dist/test/helpers/young-generation-process.js CAP_MIB` (0 = no cap): allocates
 * short-lived garbage with a share of survivors for a while, then prints {"maxNewSpaceBytes": N},
 * the largest new-space size seen after a garbage collection (test/lib/young-generation.test.ts).
 */
import { PerformanceObserver } from "node:perf_hooks";
import v8 from "node:v8";
import { capYoungGeneration } from "../../lib/young-generation.js";

const capMiB = Number(process.argv[2] ?? "0");
if (capMiB > 0) capYoungGeneration(capMiB);
let maxNewSpaceBytes = 0;
const sample = () => {
  const s = v8.getHeapSpaceStatistics().find((x) => x.space_name === "new_space");
  if (s) maxNewSpaceBytes = Math.max(maxNewSpaceBytes, s.space_size);
};
const observer = new PerformanceObserver(sample);
observer.observe({ entryTypes: ["gc"] });

// Survivors make V8 grow the new space (it grows when much survives a scavenge). Work comes in
// small tasks with the event loop turning in between, as in a daemon: the cap is applied from a
// gc observer, which runs between tasks (one long synchronous burst can grow the new space past
// the cap before it runs; V8 shrinks it again once allocation slows down).
let keep: { a: number; b: string }[] = [];
for (let task = 0; task < 1000; task++) {
  for (let i = 0; i < 4000; i++) {
    keep.push({ a: i, b: `x${i}` });
    if (keep.length > 60_000) keep = [];
  }
  await new Promise((resolve) => setImmediate(resolve));
}
sample();
observer.disconnect();
process.stdout.write(`${JSON.stringify({ maxNewSpaceBytes })}\n`);
