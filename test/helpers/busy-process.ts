import { spawn, type ChildProcess } from "node:child_process";

/**
 * A real child process that burns CPU (busy loop) and holds `residentMiB` of touched memory,
 * for measuring against ps(1). Kill it with `.kill()`; it also exits when its stdin closes.
 */
export function startBusyProcess(residentMiB = 32, dutyPercent = 100): ChildProcess {
  const script = `
    const keep = Buffer.alloc(${residentMiB} * 1024 * 1024, 7);
    globalThis.keep = keep;
    process.stdin.on("end", () => process.exit(0)); process.stdin.resume();
    setInterval(() => { const end = Date.now() + ${dutyPercent}; while (Date.now() < end) {} }, 100);`;
  return spawn(process.execPath, ["-e", script], { stdio: ["pipe", "ignore", "ignore"] });
}
