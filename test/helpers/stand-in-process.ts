import { spawn } from "node:child_process";

/**
 * A live process of the test's own to give an instance as its pid: the agent refuses its own pid
 * and its ancestors (the test process is one), security.md "The host itself". A node process,
 * so it has used some CPU by the time it is measured. Killed when stopped or when the test
 * process exits.
 */
export function standInProcess(): { pid: number; stop(): void } {
  const child = spawn(process.execPath, ["-e", "setInterval(() => {}, 1 << 30)"], { stdio: "ignore" });
  const stop = () => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  };
  process.once("exit", stop);
  return { pid: child.pid!, stop };
}
