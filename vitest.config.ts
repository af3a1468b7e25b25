import { defineConfig } from "vitest/config";

/**
 * Test files that need root (network namespaces, veth pairs, conntrack, a private dockerd,
 * cgroups). They run in the "root" project, whose setup file refuses to let them skip in CI
 * (testing.md: a skipped integration suite in CI is a setup failure). Each file still skips with
 * its reason when a developer runs the suite unprivileged. test/lib/test-config.test.ts checks
 * that every file asking for root is listed here.
 */
export const ROOT_FILES = [
  "test/agent/standby/drivers/drivers.test.ts",
  "test/e2e/buf-curl.test.ts",
  "test/e2e/conntrack-namespace.test.ts",
  "test/e2e/conntrack-process-source.test.ts",
  "test/e2e/docker-logs.test.ts",
  "test/e2e/docker-runtime.test.ts",
  "test/e2e/docker-standby-netns.test.ts",
  "test/e2e/fuzz-rpc.test.ts",
  "test/e2e/metrics-veth.test.ts",
  "test/e2e/runtime-fleet.test.ts",
  "test/e2e/standby-netns.test.ts",
  "test/e2e/standby-unsupported.test.ts",
  "test/e2e/up.test.ts",
];

/**
 * Test files that must run alone, after everything else: multi-process crash and partition runs
 * whose timings (stale-after, bookmark intervals, SIGKILL at random moments) assume both cores.
 */
export const ALONE_FILES = ["test/e2e/metering-fleet.test.ts", "test/e2e/inventory-fleet.test.ts"];

const shared = {
  // node:test had no default timeout; real daemons, dockerd and namespaces take seconds to start.
  testTimeout: 180_000,
  hookTimeout: 180_000,
  // Child processes rather than threads: tests load native better-sqlite3, send signals and
  // change process-wide state; one fork per file keeps them apart.
  pool: "forks" as const,
};

export default defineConfig({
  test: {
    maxWorkers: 2,
    projects: [
      { test: { ...shared, name: "unit", include: ["test/**/*.test.ts"], exclude: [...ROOT_FILES, ...ALONE_FILES, "test/e2e/**"] } },
      { test: { ...shared, name: "e2e", include: ["test/e2e/**/*.test.ts"], exclude: [...ROOT_FILES, ...ALONE_FILES] } },
      { test: { ...shared, name: "root", include: ROOT_FILES, setupFiles: ["test/setup/root-project.ts"] } },
      {
        test: {
          ...shared,
          name: "alone",
          include: ALONE_FILES,
          fileParallelism: false,
          // A later group starts only when every earlier group has finished.
          sequence: { groupOrder: 1 },
        },
      },
    ],
    coverage: {
      provider: "v8",
      include: ["agent/**", "aggregator/**", "lib/**", "cli/**"],
      reporter: ["text-summary", "json-summary"],
      reportsDirectory: "dist/coverage",
    },
  },
});
