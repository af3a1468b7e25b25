import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { WallClockAnchor } from "../../lib/monotonic-clock.js";

describe("WallClockAnchor", () => {
  it("reads one monotonic moment as the same wall time at every call, though the clocks' fractions differ", () => {
    let mono = 1234.567;
    let wall = 1_800_000_000_000;
    const anchor = new WallClockAnchor(() => mono, () => wall);
    const moment = 1000.25;
    const first = anchor.toWall(moment);
    assert.equal(first, Math.round(1_800_000_000_000 - 234.317));
    for (let i = 1; i <= 50; i++) {
      // Both clocks advance together, each with its own rounding (Date.now() is whole ms).
      mono = 1234.567 + i * 17.3;
      wall = 1_800_000_000_000 + Math.floor(i * 17.3);
      assert.equal(anchor.toWall(moment), first);
    }
  });

  it("takes a wall-clock step into account, in both directions of conversion", () => {
    const mono = 5_000;
    let wall = 1_800_000_000_000;
    const anchor = new WallClockAnchor(() => mono, () => wall);
    assert.equal(anchor.toWall(4_000), wall - 1_000);
    assert.equal(anchor.toMonotonic(wall + 60_000), 65_000);
    wall -= 3_600_000;
    assert.equal(anchor.toWall(4_000), wall - 1_000, "the same moment, on the stepped clock");
    assert.equal(anchor.toMonotonic(wall + 60_000), 65_000);
  });
});
