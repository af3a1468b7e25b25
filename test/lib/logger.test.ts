import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { PassThrough } from "node:stream";
import { createLogger } from "../../lib/rpc/logger.js";
import { fleetletVersion } from "../../lib/fleetlet-version.js";

describe("createLogger", () => {
  it("every line has the daemon's pid, name and version once; a line's own pid becomes instance_pid", async () => {
    const out = new PassThrough();
    const chunks: string[] = [];
    out.on("data", (c: Buffer) => chunks.push(c.toString("utf8")));
    const logger = createLogger("fleetlet-test", "info", out);
    logger.warn({ instance_id: "vm-1", pid: 4242 }, "process gone");
    logger.info("plain");
    await new Promise((r) => setImmediate(r));
    const lines = chunks.join("").trim().split("\n");
    assert.equal(lines.length, 2);
    for (const line of lines) {
      // Count raw keys: JSON.parse would hide a duplicate.
      assert.equal(line.match(/"pid":/g)?.length, 1, line);
      const doc = JSON.parse(line) as Record<string, unknown>;
      assert.equal(doc.pid, process.pid);
      assert.equal(doc.name, "fleetlet-test");
      assert.equal(doc.version, fleetletVersion());
      assert.match(String(doc.version), /^\d+\.\d+\.\d+/);
    }
    assert.equal((JSON.parse(lines[0]!) as { instance_pid: number }).instance_pid, 4242);
  });
});
