import { afterEach, beforeEach, describe, it, vi } from "vitest";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { InstanceSchema } from "../../../gen/fleetlet/agent/v1/inventory_pb.js";
import { InstanceRegistry } from "../../../agent/inventory/instance-registry.js";
import { tempDir } from "../../helpers/temp-dir.js";

// The snapshot write fails the way a full disk makes it fail (ENOSPC from the temp file's
// write); everything else is the real file system.
const full = vi.hoisted(() => ({ on: false }));
vi.mock("../../../lib/atomic-file.js", async (original) => {
  const real = await original<typeof import("../../../lib/atomic-file.js")>();
  return {
    ...real,
    writeFileAtomic: async (path: string, data: string | Uint8Array) => {
      if (full.on) throw Object.assign(new Error("ENOSPC: no space left on device, write"), { code: "ENOSPC" });
      return real.writeFileAtomic(path, data);
    },
  };
});

let dir: ReturnType<typeof tempDir>;
beforeEach(() => (dir = tempDir("registry-space")));
afterEach(() => {
  full.on = false;
  dir.remove();
});

describe("registry compaction on a full disk", () => {
  it("says that a compaction needs room for a whole new snapshot, and how much", async () => {
    const r = InstanceRegistry.open(dir.path);
    await r.upsert(create(InstanceSchema, { id: "a", name: "x".repeat(3000) }));
    full.on = true;
    // The first commit of a fresh registry is a compaction (it writes the snapshot).
    const second = join(dir.path, "second");
    mkdirSync(second);
    const fresh = InstanceRegistry.open(second);
    await assert.rejects(
      fresh.upsert(create(InstanceSchema, { id: "b", name: "y".repeat(3000) })),
      /instances\.json: writing a new snapshot \(\d{4,} bytes\) failed: ENOSPC.*compaction needs that much free space next to the current one/,
    );
    assert.equal(fresh.get("b"), undefined, "not applied");
    await r.upsert(create(InstanceSchema, { id: "c" })); // a journal append needs no such room
    r.close();
    fresh.close();
  });
});
