import { afterAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { mustRunInCi, rootSkipReason } from "../helpers/root.js";
import { FLEETLET_BIN } from "../helpers/daemon-process.js";
import { tempDir } from "../helpers/temp-dir.js";

// Issue 12 point 16: a daemon whose state dir is to be made on a read-only filesystem said
// "ENOENT: no such file or directory" (Node's recursive mkdir), which reads as a typo in the
// path. The read-only filesystem is a tmpfs mounted read-only in a mount namespace of the
// test's own (unshare -m): the machine's mounts are never touched.

const skip = mustRunInCi(rootSkipReason());
const dir = tempDir("state-dir-errors");
afterAll(() => dir.remove());

function runInReadOnlyMount(daemon: "agent" | "aggregator", mountPoint: string, stateDir: string): Promise<{ code: number | null; stderr: string }> {
  const script = `mount -t tmpfs -o ro none '${mountPoint}' && exec '${process.execPath}' '${FLEETLET_BIN}' ${daemon} --listen 127.0.0.1:0 --metrics-listen off --state-dir '${stateDir}'`;
  return new Promise((resolve) => {
    execFile("unshare", ["-m", "sh", "-c", script], { timeout: 30_000 }, (err, _stdout, stderr) => resolve({ code: err ? ((err as { code?: number }).code ?? null) : 0, stderr }));
  });
}

describe.skipIf(skip)("a state dir that cannot be created", () => {
  for (const daemon of ["agent", "aggregator"] as const) {
    it(`${daemon}: on a read-only filesystem, says read-only and names the directory, not ENOENT`, async () => {
      const mountPoint = join(dir.path, `ro-${daemon}`);
      mkdirSync(mountPoint);
      try {
        const { code, stderr } = await runInReadOnlyMount(daemon, mountPoint, join(mountPoint, "missing", "state"));
        assert.notEqual(code, 0);
        assert.match(stderr, new RegExp(`cannot create ${mountPoint}/missing: ${mountPoint} is on a read-only filesystem \\(EROFS\\)`));
        assert.doesNotMatch(stderr, /ENOENT/);
      } finally {
        rmSync(mountPoint, { recursive: true, force: true });
      }
    });
  }
});
