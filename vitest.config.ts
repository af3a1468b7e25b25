import { defineConfig } from "vitest/config";
import { ALONE_FILES, ROOT_FILES } from "./test/setup/test-groups.js";

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
      // The daemons' own sources; what e2e tests run in daemons of their own (dist/) is not seen.
      include: ["agent/**/*.ts", "aggregator/**/*.ts", "lib/**/*.ts", "cli/**/*.ts"],
      exclude: ["test/**", "gen/**", "dist/**"],
      reporter: ["text-summary", "json-summary"],
      reportsDirectory: "dist/coverage",
      reportOnFailure: true,
    },
  },
});
