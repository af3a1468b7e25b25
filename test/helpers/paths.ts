import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/**
 * The checkout's root, found by walking up to package.json: tests run from their TypeScript
 * sources under vitest, while the helper processes they spawn run compiled from dist/test/...,
 * so a fixed number of "../" is right in only one of the two.
 */
export const REPO_ROOT = (() => {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, "package.json"))) {
    const up = dirname(dir);
    if (up === dir) throw new Error(`no package.json above ${fileURLToPath(import.meta.url)}`);
    dir = up;
  }
  return dir;
})();

/** A path inside the checkout. */
export function repoPath(...parts: string[]): string {
  return resolve(REPO_ROOT, ...parts);
}

/**
 * A test helper that runs as a process of its own (a writer to SIGKILL, a TCP proxy to SIGSTOP):
 * its compiled JavaScript, built by the test command's `tsc` step before the tests run.
 */
export function builtHelper(name: string): string {
  const file = repoPath("dist", "test", "helpers", `${name}.js`);
  if (!existsSync(file)) throw new Error(`${file} is missing: build first (npm run build)`);
  return file;
}
