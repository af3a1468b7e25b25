import { execFileSync } from "node:child_process";

/** Integration tests that need root (netns, veth) skip with this reason when unprivileged. */
export function rootSkipReason(): string | false {
  if (process.getuid?.() !== 0) return "needs root (network namespaces); the project's test command runs as root";
  try {
    execFileSync("ip", ["-V"], { stdio: "ignore" });
  } catch {
    return "needs iproute2 (`ip`); the project's test command installs it";
  }
  return false;
}

/** In CI a skipped integration suite is a setup failure, not a pass (testing.md). */
export function mustRunInCi(reason: string | false): string | false {
  if (reason && process.env.CI === "true") throw new Error(`integration test cannot run in CI: ${reason}`);
  return reason;
}
