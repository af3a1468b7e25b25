import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { createExecDriver } from "../../../../agent/standby/drivers/exec-driver.js";
import { tempDir } from "../../../helpers/temp-dir.js";

describe("exec driver concurrency", () => {
  it("runs at most `concurrency` commands at once, wakes and standbys together", async () => {
    const d = tempDir("exec-concurrency");
    // Each command leaves a marker while it runs and records how many markers it saw.
    const script = `touch ${d.path}/run.$$; ls ${d.path} | grep -c '^run\\.' >> ${d.path}/seen; sleep 0.2; rm ${d.path}/run.$$`;
    const driver = createExecDriver({ standby: ["sh", "-c", script], wake: ["sh", "-c", script], concurrency: 3 });
    await Promise.all(
      Array.from({ length: 12 }, (_, i) => (i % 2 ? driver.wake : driver.standby)({ id: `vm-${i}`, pid: undefined, ip: "", kind: 1 })),
    );
    const seen = readFileSync(join(d.path, "seen"), "utf8").trim().split("\n").map(Number);
    assert.equal(seen.length, 12);
    assert.ok(Math.max(...seen) <= 3, `commands seen at once: ${seen.join(",")}`);
    assert.deepEqual(readdirSync(d.path), ["seen"]);
    d.remove();
  });
});
