// Setup of the "root" test project (vitest.config.ts): these files need root. Unprivileged,
// each skips with its own reason; in CI (which runs as root) a skip would hide a broken setup.
if (process.env.CI === "true" && process.getuid?.() !== 0) {
  throw new Error("the root test project runs as root in CI (testing.md); run the test command as root");
}
