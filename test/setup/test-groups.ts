// Which test files run how (vitest.config.ts builds its projects from these lists).

/**
 * Test files that need root (network namespaces, veth pairs, conntrack, a private dockerd,
 * cgroups). They run in the "root" project, whose setup file refuses to let them skip in CI
 * (testing.md: a skipped integration suite in CI is a setup failure). Each file still skips with
 * its reason when a developer runs the suite unprivileged. test/lib/test-groups.test.ts checks
 * that every file asking for root is listed here.
 */
export const ROOT_FILES = [
  "test/agent/standby/drivers/drivers.test.ts",
  "test/e2e/buf-curl.test.ts",
  "test/e2e/conntrack-namespace.test.ts",
  "test/e2e/conntrack-process-source.test.ts",
  "test/e2e/docker-logs.test.ts",
  "test/e2e/docker-runtime.test.ts",
  "test/e2e/docker-shapes.test.ts",
  "test/e2e/docker-standby-netns.test.ts",
  "test/e2e/fuzz-rpc.test.ts",
  "test/e2e/metrics-veth.test.ts",
  "test/e2e/multi-host-mtls.test.ts",
  "test/e2e/pid-ownership.test.ts",
  "test/e2e/runtime-fleet.test.ts",
  "test/e2e/standby-netns.test.ts",
  "test/e2e/standby-unsupported.test.ts",
  "test/e2e/state-dir-errors.test.ts",
  "test/e2e/up.test.ts",
  "test/e2e/up-demo-standby.test.ts",
];

/**
 * Test files that must run alone, after everything else: multi-process crash and partition runs
 * whose timings (stale-after, bookmark intervals, SIGKILL at random moments) assume both cores,
 * and the 2,000-stream slow-consumer run (its memory bound is the agent's alone).
 */
export const ALONE_FILES = [
  "test/e2e/metering-fleet.test.ts",
  "test/e2e/inventory-fleet.test.ts",
  "test/e2e/slow-watch-consumers.test.ts",
  // npm install of the packed tarball compiles better-sqlite3 (a minute of both cores).
  "test/e2e/install-tarball.test.ts",
];
