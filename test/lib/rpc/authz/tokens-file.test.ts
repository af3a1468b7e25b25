import { afterEach, describe, it } from "vitest";
import assert from "node:assert/strict";
import { renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createLogger } from "../../../../lib/rpc/logger.js";
import { hashToken, parseTokensFile, TokensFile } from "../../../../lib/rpc/authz/tokens-file.js";
import { tempDir } from "../../../helpers/temp-dir.js";

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups.splice(0)) c();
});

async function until(check: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe("tokens file", () => {
  it("hashes like sha256sum and parses name role hash lines", () => {
    // printf %s secret | sha256sum
    assert.equal(hashToken("secret"), "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b");
    const entries = parseTokensFile(`# comment\n\nalice viewer ${hashToken("a")}\nbob admin ${hashToken("b").toUpperCase()}  # trailing\n`, "f");
    assert.deepEqual(entries.map((e) => [e.name, e.role]), [["alice", "viewer"], ["bob", "admin"]]);
  });

  it("names the line of a bad entry", () => {
    assert.throws(() => parseTokensFile(`alice root ${hashToken("a")}`, "tokens"), /tokens:1: role "root" is not one of viewer, operator, admin/);
    assert.throws(() => parseTokensFile(`\nalice viewer abc`, "tokens"), /tokens:2: "abc" is not a SHA-256 hex digest/);
    assert.throws(() => parseTokensFile(`alice viewer`, "tokens"), /tokens:1: expected 'name role sha256-hex'/);
    assert.throws(() => parseTokensFile(`a viewer ${hashToken("x")}\nb admin ${hashToken("x")}`, "tokens"), /tokens:2: the same token hash appears twice/);
  });

  it("is reloaded when replaced: the new token works, the old one is refused; a bad file keeps the old set", async () => {
    const dir = tempDir("tokens");
    cleanups.push(dir.remove);
    const file = join(dir.path, "tokens");
    writeFileSync(file, `ci viewer ${hashToken("old-token")}\n`);
    const tokens = new TokensFile(file, createLogger("test", "silent"), 20);
    cleanups.push(() => tokens.close());
    assert.deepEqual(tokens.identify("old-token"), { name: "ci", via: "token", role: "viewer" });
    assert.equal(tokens.identify("new-token"), undefined);

    // Replaced by rename, as editors and config management do.
    writeFileSync(join(dir.path, "tokens.tmp"), `ci operator ${hashToken("new-token")}\n`);
    renameSync(join(dir.path, "tokens.tmp"), file);
    await until(() => tokens.identify("new-token") !== undefined);
    assert.deepEqual(tokens.identify("new-token"), { name: "ci", via: "token", role: "operator" });
    assert.equal(tokens.identify("old-token"), undefined);

    writeFileSync(file, "this is not a tokens file\n");
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(tokens.identify("new-token")?.role, "operator");
  });
});
