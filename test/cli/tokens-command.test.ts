import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { FLEETLET_BIN } from "../helpers/daemon-process.js";
import { parseTokensFile } from "../../lib/rpc/authz/tokens-file.js";

const fleetlet = (args: string[], input = "") => spawnSync(process.execPath, [FLEETLET_BIN, ...args], { input, encoding: "utf8", timeout: 20_000 });

describe("fleetlet tokens", () => {
  it("hash prints sha256sum's digest of stdin, or a tokens-file line; new prints a fresh token", () => {
    const bare = fleetlet(["tokens", "hash"], "s3cret\n");
    assert.equal(bare.status, 0, bare.stderr);
    assert.equal(bare.stdout, `${createHash("sha256").update("s3cret").digest("hex")}\n`);
    const line = fleetlet(["tokens", "hash", "--name", "ci", "--role", "operator"], "s3cret");
    assert.equal(line.status, 0, line.stderr);
    assert.deepEqual(parseTokensFile(line.stdout, "out").map((e) => [e.name, e.role]), [["ci", "operator"]]);
    const bad = fleetlet(["tokens", "hash", "--name", "ci", "--role", "root"], "s3cret");
    assert.equal(bad.status, 2);
    assert.match(bad.stderr, /--role.*"root" is not one of viewer, operator, admin/);
    const a = fleetlet(["tokens", "new"]);
    const b = fleetlet(["tokens", "new"]);
    assert.match(a.stdout, /^[A-Za-z0-9_-]{43}\n$/);
    assert.notEqual(a.stdout, b.stdout);
  });
});
