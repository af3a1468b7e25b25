import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { StandbyRuntimeStore } from "../../../agent/standby/standby-runtime-store.js";
import { tempDir } from "../../helpers/temp-dir.js";

describe("StandbyRuntimeStore", () => {
  it("persists per-instance runtime and reloads it (a countdown survives a restart)", async () => {
    const d = tempDir("runtime-store");
    const s = StandbyRuntimeStore.open(d.path);
    s.set("a", { idleSince: 1000, holdUntil: 5000 });
    s.set("b", { lastInboundAt: 7 });
    s.set("b", undefined);
    await s.flush();
    const again = StandbyRuntimeStore.open(d.path);
    assert.deepEqual(again.get("a"), { idleSince: 1000, holdUntil: 5000 });
    assert.equal(again.get("b"), undefined);
    d.remove();
  });
  it("refuses to start over a corrupt file", () => {
    const d = tempDir("runtime-store-bad");
    writeFileSync(join(d.path, "standby-runtime.json"), "{nope");
    assert.throws(() => StandbyRuntimeStore.open(d.path), /standby-runtime\.json: not valid JSON/);
    d.remove();
  });
});
