import { execFileSync } from "node:child_process";
import assert from "node:assert/strict";
import { describe, it } from "vitest";
import { builtHelper } from "../helpers/paths.js";

/** The largest new space the helper process saw (it runs compiled, from dist/). */
function maxNewSpace(capMiB: number): number {
  const out = execFileSync(process.execPath, [builtHelper("young-generation-process"), String(capMiB)], { encoding: "utf8" });
  return (JSON.parse(out.trim()) as { maxNewSpaceBytes: number }).maxNewSpaceBytes;
}

describe("capYoungGeneration", () => {
  it("keeps the new space at 2 × the cap where V8 alone grows it further", () => {
    const MiB = 1024 * 1024;
    const uncapped = maxNewSpace(0);
    const capped = maxNewSpace(4);
    assert.ok(capped <= 8 * MiB, `capped at 4 MiB semi-spaces, the new space reached ${capped / MiB} MiB`);
    // V8's own maximum depends on the machine's memory; where it is above the cap, the cap is
    // what kept the new space small (v8.setFlagsFromString("--max-semi-space-size") would not).
    if (uncapped > 8 * MiB) assert.ok(capped < uncapped, `capped ${capped / MiB} MiB, uncapped ${uncapped / MiB} MiB`);
  });
});
