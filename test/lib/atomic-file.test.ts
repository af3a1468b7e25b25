import { afterEach, describe, it, vi } from "vitest";
import assert from "node:assert/strict";
import { existsSync, lstatSync, readFileSync, readdirSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { HostOrigin } from "../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { removeStaleTempFiles, writeFileAtomic, writeFileAtomicSync } from "../../lib/atomic-file.js";
import { HostRegistry } from "../../aggregator/hosts/host-registry.js";
import { tempDir } from "../helpers/temp-dir.js";

// security.md "State on disk": temp files with random names, created O_EXCL | O_NOFOLLOW, 0600.
// Found as an attack: the temp name was `.<name>.tmp-<pid>`, opened "w", so a symlink planted at
// it redirected the write of hosts.json to any file the daemon's user may write.

/** When set, randomBytes returns these bytes: the "attacker" then knows the temp name. */
const fixed = vi.hoisted(() => ({ bytes: undefined as Buffer | undefined }));
vi.mock("node:crypto", async (importOriginal) => {
  const real = await importOriginal<typeof import("node:crypto")>();
  return { ...real, randomBytes: (n: number) => fixed.bytes?.subarray(0, n) ?? real.randomBytes(n) };
});

afterEach(() => {
  fixed.bytes = undefined;
});

const modeOf = (p: string) => statSync(p).mode & 0o7777;

describe("writeFileAtomic", () => {
  it("a symlink planted at the old predictable temp name of hosts.json is not followed: its target is untouched", () => {
    const dir = tempDir("atomic-pid");
    try {
      const victim = join(dir.path, "victim");
      writeFileSync(victim, "precious\n");
      symlinkSync(victim, join(dir.path, `.hosts.json.tmp-${process.pid}`));
      const hosts = new HostRegistry(dir.path, { initialMs: 100, maxMs: 100 });
      hosts.load([]);
      hosts.add({ name: "h1", address: "127.0.0.1:1", origin: HostOrigin.API, perHostTimeoutMs: undefined });
      hosts.close();
      assert.equal(readFileSync(victim, "utf8"), "precious\n");
      assert.match(readFileSync(join(dir.path, "hosts.json"), "utf8"), /"h1"/);
      assert.equal(modeOf(join(dir.path, "hosts.json")), 0o600);
    } finally {
      dir.remove();
    }
  });

  it("a symlink at the very temp name (the random name guessed): the write fails with EEXIST, nothing is followed", async () => {
    const dir = tempDir("atomic-guess");
    try {
      fixed.bytes = Buffer.alloc(8, 0xab);
      const victim = join(dir.path, "victim");
      writeFileSync(victim, "precious\n");
      const target = join(dir.path, "hosts.json");
      symlinkSync(victim, join(dir.path, `.hosts.json.tmp-${"ab".repeat(8)}`));
      assert.throws(() => writeFileAtomicSync(target, "x"), { code: "EEXIST" });
      await assert.rejects(writeFileAtomic(target, "x"), { code: "EEXIST" });
      // Dangling symlinks too (O_CREAT alone would create the file they point to).
      const dangling = join(dir.path, "created-elsewhere");
      symlinkSync(dangling, join(dir.path, `.standby-runtime.json.tmp-${"ab".repeat(8)}`));
      assert.throws(() => writeFileAtomicSync(join(dir.path, "standby-runtime.json"), "x"), { code: "EEXIST" });
      assert.equal(readFileSync(victim, "utf8"), "precious\n");
      assert.equal(existsSync(target), false);
      assert.equal(existsSync(dangling), false);
    } finally {
      dir.remove();
    }
  });

  it("temp names differ at every write; the file is 0600 whatever the umask", async () => {
    const dir = tempDir("atomic-mode");
    const before = process.umask(0);
    try {
      const target = join(dir.path, "f.json");
      writeFileAtomicSync(target, "1");
      assert.equal(modeOf(target), 0o600);
      await writeFileAtomic(target, "2");
      assert.equal(modeOf(target), 0o600);
      assert.equal(readFileSync(target, "utf8"), "2");
      assert.deepEqual(readdirSync(dir.path), ["f.json"]);
    } finally {
      process.umask(before);
      dir.remove();
    }
  });

  it("removeStaleTempFiles deletes only the temp files of that target", () => {
    const dir = tempDir("atomic-stale");
    try {
      for (const n of [".hosts.json.tmp-0123456789abcdef", ".hosts.json.tmp-77", ".other.json.tmp-1", "hosts.json"]) writeFileSync(join(dir.path, n), "");
      removeStaleTempFiles(join(dir.path, "hosts.json"));
      assert.deepEqual(readdirSync(dir.path).sort(), [".other.json.tmp-1", "hosts.json"]);
      assert.ok(lstatSync(join(dir.path, "hosts.json")).isFile());
    } finally {
      dir.remove();
    }
  });
});
