import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { MutatingRateLimit } from "../../../../lib/rpc/authz/mutating-rate-limit.js";

describe("MutatingRateLimit", () => {
  it("allows a burst, then the rate; identities have their own buckets", () => {
    let now = 0;
    const limit = new MutatingRateLimit(10, 20, () => now);
    const taken = (id: string, n: number) => Array.from({ length: n }, () => limit.take(id)).filter(Boolean).length;
    assert.equal(taken("alice", 25), 20, "the burst, then refused");
    assert.equal(taken("bob", 5), 5, "bob is not slowed by alice");
    now += 500; // half a second refills 5
    assert.equal(taken("alice", 10), 5);
    now += 10_000; // never above the burst
    assert.equal(taken("alice", 30), 20);
  });

  it("forgets identities whose bucket is full again, so the map stays small", () => {
    let now = 0;
    const limit = new MutatingRateLimit(100, 200, () => now);
    for (let i = 0; i < 1000; i++) limit.take(`client-${i}`);
    assert.equal(limit.tracked, 1000);
    now += 5_000;
    limit.take("late");
    assert.equal(limit.tracked, 1, "only the one just seen");
  });

  it("refuses a rate or burst that is not positive", () => {
    assert.throws(() => new MutatingRateLimit(0), RangeError);
    assert.throws(() => new MutatingRateLimit(5, 0), RangeError);
  });
});
