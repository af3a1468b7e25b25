import { spawn } from "node:child_process";

/**
 * A live process of the test's own to give an instance as its pid: the agent refuses its own pid
 * and its ancestors (the test process is one), security.md "The host itself". A node process,
 * so it has used some CPU by the time it is measured. Killed when stopped, when the test
 * process exits, or (stdin closed) when the test process dies.
 */
export function standInProcess(): { pid: number; stop(): void } {
  // It also ends when its stdin closes, i.e. when the test process is gone however it went: a
  // vitest worker that is killed never runs its "exit" handlers (such stand-ins were left running).
  const child = spawn(process.execPath, ["-e", "process.stdin.on('end', () => process.exit(0)).on('error', () => process.exit(0)).resume(); setInterval(() => {}, 1 << 30)"], {
    stdio: ["pipe", "ignore", "ignore"],
  });
  const stop = () => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  };
  process.once("exit", stop);
  return { pid: child.pid!, stop };
}
