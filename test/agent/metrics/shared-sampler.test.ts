import { afterEach, describe, it, vi } from "vitest";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { InstanceStatsSchema } from "../../../gen/fleetlet/agent/v1/metrics_pb.js";
import { SharedSampler, WATCH_QUEUE_LIMIT } from "../../../agent/metrics/shared-sampler.js";

const sweepOf = (ids: string[]) => () => ids.map((id) => create(InstanceStatsSchema, { instanceId: id }));

describe("SharedSampler", () => {
  it("many watchers share one sweep per tick", async () => {
    const sampler = new SharedSampler(sweepOf(["a", "b"]));
    const stop = new AbortController();
    const counts = Array.from({ length: 20 }, () => 0);
    const readers = counts.map(async (_, i) => {
      for await (const batch of sampler.watch(100, [], stop.signal)) {
        assert.equal(batch.stats.length, 2);
        counts[i]!++;
      }
    });
    await new Promise((r) => setTimeout(r, 1050));
    stop.abort();
    await Promise.all(readers);
    sampler.close();
    // 20 watchers × ~11 batches each, from about one sweep per 100 ms tick (plus the
    // immediate first batch of each watcher), not 220 sweeps.
    assert.ok(counts.every((c) => c >= 5), `batches per watcher: ${counts.join(",")}`);
    assert.ok(sampler.sweeps <= 20 + 13, `${sampler.sweeps} sweeps for 20 watchers`);
  });

  it("gives each watcher its own interval and id filter", async () => {
    const sampler = new SharedSampler(sweepOf(["a", "b", "c"]));
    const stop = new AbortController();
    let fast = 0;
    let slow = 0;
    const f = (async () => {
      for await (const _ of sampler.watch(100, [], stop.signal)) fast++;
    })();
    const s = (async () => {
      for await (const b of sampler.watch(500, ["b"], stop.signal)) {
        assert.deepEqual(b.stats.map((x) => x.instanceId), ["b"]);
        slow++;
      }
    })();
    await new Promise((r) => setTimeout(r, 1100));
    stop.abort();
    await Promise.all([f, s]);
    sampler.close();
    // Timer-based: loose bounds so a loaded CI machine does not flake, tight enough to tell
    // 100 ms from 500 ms.
    assert.ok(fast >= 5 && fast <= 13, `fast ${fast}`);
    assert.ok(slow >= 1 && slow <= 4 && slow < fast, `slow ${slow}`);
  });

  it("drops the oldest batches of a watcher that does not read, and says how many", async () => {
    const sampler = new SharedSampler(sweepOf(["a"]));
    const stop = new AbortController();
    const it = sampler.watch(100, [], stop.signal)[Symbol.asyncIterator]();
    await it.next(); // subscribed; now stop reading for a while
    await new Promise((r) => setTimeout(r, 100 * (WATCH_QUEUE_LIMIT + 6)));
    let dropped = 0;
    for (let i = 0; i < WATCH_QUEUE_LIMIT; i++) dropped += (await it.next()).value!.dropped;
    stop.abort();
    await it.return?.(undefined);
    sampler.close();
    assert.ok(dropped >= 3, `dropped batches reported: ${dropped}`);
    assert.equal(sampler.watcherCount, 0, "the watcher is gone after return");
  });
  it("counts every dropped batch exactly (hand-driven ticks)", async () => {
    let now = 0;
    const sampler = new SharedSampler(sweepOf(["a"]), () => now);
    const tick = () => (sampler as unknown as { tick(): void }).tick();
    const stop = new AbortController();
    const it = sampler.watch(100, [], stop.signal)[Symbol.asyncIterator]();
    const first = await it.next(); // the immediate first batch
    assert.equal(first.value!.dropped, 0);
    const ticks = 30;
    for (let i = 0; i < ticks; i++) {
      now += 100;
      tick();
    }
    let delivered = 0;
    let dropped = 0;
    for (let i = 0; i < WATCH_QUEUE_LIMIT; i++) {
      const b = (await it.next()).value!;
      delivered++;
      dropped += b.dropped;
    }
    stop.abort();
    await it.return?.(undefined);
    sampler.close();
    assert.equal(delivered, WATCH_QUEUE_LIMIT);
    assert.equal(dropped + delivered, ticks, "every tick's batch is either delivered or counted as dropped");
  });
});

describe("SharedSampler across a wall-clock step", () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it("keeps delivering at its interval when the wall clock steps back an hour; batches carry wall time", async () => {
    // Only Date is faked: the wall clock jumps back, the monotonic clock and the timers do not.
    vi.useFakeTimers({ toFake: ["Date"] });
    const sampler = new SharedSampler(sweepOf(["a"]));
    const stop = new AbortController();
    const it = sampler.watch(100, [], stop.signal)[Symbol.asyncIterator]();
    await it.next(); // the immediate first batch
    vi.setSystemTime(Date.now() - 3_600_000);
    const steppedAt = Date.now();
    const next = await Promise.race([it.next(), new Promise<undefined>((r) => setTimeout(() => r(undefined), 1000))]);
    stop.abort();
    await it.return?.(undefined);
    sampler.close();
    assert.ok(next?.value, "a batch within 1 s of a 100 ms interval");
    assert.ok(Math.abs(next.value.sampledAtMs - steppedAt) < 1000, `sampled_at on the stepped wall clock: ${next.value.sampledAtMs} vs ${steppedAt}`);
  });
});
