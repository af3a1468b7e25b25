import { setTimeout as sleep } from "node:timers/promises";
import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { mapBounded } from "../../lib/worker-pool.js";

describe("mapBounded", () => {
  it("never has more than `concurrency` calls in flight, and uses every slot", async () => {
    let inFlight = 0;
    let peak = 0;
    const items = Array.from({ length: 20 }, (_, i) => i);
    await mapBounded(items, 3, async (i) => {
      inFlight++;
      peak = Math.max(peak, inFlight);
      await sleep(1 + (i % 4) * 3);
      inFlight--;
    });
    assert.equal(peak, 3);
    assert.equal(inFlight, 0);
  });

  it("keeps the order of the items, not the order of completion", async () => {
    const done: number[] = [];
    const out = await mapBounded([40, 5, 20, 1], 4, async (ms, i) => {
      await sleep(ms);
      done.push(i);
      return `item ${i} after ${ms} ms`;
    });
    assert.deepEqual(done, [3, 1, 2, 0]);
    assert.deepEqual(out, ["item 0 after 40 ms", "item 1 after 5 ms", "item 2 after 20 ms", "item 3 after 1 ms"]);
  });

  it("a slow item holds one slot: the others go through the remaining ones", async () => {
    const started: number[] = [];
    const t0 = Date.now();
    await mapBounded([0, 1, 2, 3, 4, 5], 2, async (i) => {
      started.push(i);
      await sleep(i === 0 ? 150 : 10);
    });
    // Items 1..5 ran one after another in the second slot while item 0 held the first.
    assert.deepEqual(started, [0, 1, 2, 3, 4, 5]);
    assert.ok(Date.now() - t0 < 300, `took ${Date.now() - t0} ms`);
  });

  it("rejects with the first failure and starts no further item", async () => {
    const started: number[] = [];
    await assert.rejects(
      mapBounded([0, 1, 2, 3, 4, 5, 6, 7], 2, async (i) => {
        started.push(i);
        await sleep(5);
        if (i === 2) throw new Error("item 2 failed");
      }),
      /^Error: item 2 failed$/,
    );
    await sleep(30);
    // 0 and 1 first, then 2 and 3; 2 fails, so 3 (already running) is the last one started.
    assert.deepEqual(started, [0, 1, 2, 3]);
  });

  it("resolves at once for no items and refuses a concurrency below 1", async () => {
    assert.deepEqual(await mapBounded([], 4, async () => 1), []);
    await assert.rejects(mapBounded([1], 0, async () => 1), /concurrency must be at least 1, got 0/);
  });
});
