import { readdirSync, readFileSync } from "node:fs";
import { join, relative } from "node:path";
import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { ALONE_FILES, ROOT_FILES } from "../setup/test-groups.js";
import { REPO_ROOT } from "../helpers/paths.js";

function testFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? testFiles(join(dir, e.name)) : e.name.endsWith(".test.ts") ? [relative(REPO_ROOT, join(dir, e.name))] : [],
  );
}

// A file that skips without root but is missing from ROOT_FILES would never be forced to run in
// CI by the root project's setup: the lists in the config must follow the files.
describe("test groups (vitest.config.ts)", () => {
  const files = testFiles(join(REPO_ROOT, "test"));
  const self = relative(REPO_ROOT, new URL(import.meta.url).pathname);

  it("lists every test file that asks for root or a private dockerd in ROOT_FILES, and nothing else", () => {
    const asking = files.filter((f) => f !== self && /rootSkipReason|dockerdSkipReason|process\.getuid/.test(readFileSync(join(REPO_ROOT, f), "utf8"))).sort();
    assert.ok(asking.length >= 10, `found ${asking.length} root test files: the pattern no longer matches`);
    assert.deepEqual([...ROOT_FILES].sort(), asking);
  });

  it("names only files that exist, each in one group", () => {
    for (const f of [...ROOT_FILES, ...ALONE_FILES]) assert.ok(files.includes(f), `${f} is not a test file`);
    assert.deepEqual(ROOT_FILES.filter((f) => ALONE_FILES.includes(f)), []);
  });
});
