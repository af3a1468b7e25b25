import { spawn, type ChildProcess } from "node:child_process";

/** A small real workload `fleetlet up` starts when the host has no hypervisor processes. */
export interface DemoInstance {
  id: string;
  name: string;
  child: ChildProcess;
  vcpus: number;
  memoryBytes: bigint;
}

// Each demo is a Node process with a duty cycle of busy work and a resident buffer, so CPU and
// memory columns show real, different numbers. They exit with their parent (stdin closes).
const PROFILES = [
  { id: "demo-web", name: "web (bursty)", busyMs: 30, periodMs: 100, residentMiB: 48, vcpus: 1, memMiB: 256 },
  { id: "demo-batch", name: "batch (busy)", busyMs: 70, periodMs: 100, residentMiB: 96, vcpus: 2, memMiB: 512 },
  { id: "demo-idle", name: "idle", busyMs: 0, periodMs: 1000, residentMiB: 8, vcpus: 1, memMiB: 128 },
];

export function startDemoInstances(): DemoInstance[] {
  return PROFILES.map((p) => {
    const script = `
      const keep = Buffer.alloc(${p.residentMiB} * 1024 * 1024, 1);
      setInterval(() => { const end = Date.now() + ${p.busyMs}; while (Date.now() < end) {} }, ${p.periodMs});
      process.stdin.on("end", () => process.exit(0)); process.stdin.resume();
      globalThis.keep = keep;`;
    const child = spawn(process.execPath, ["-e", script], { stdio: ["pipe", "ignore", "ignore"] });
    return { id: p.id, name: p.name, child, vcpus: p.vcpus, memoryBytes: BigInt(p.memMiB) << 20n };
  });
}

export function stopDemoInstances(demos: DemoInstance[]): void {
  for (const d of demos) {
    if (d.child.exitCode === null && d.child.pid !== undefined) d.child.kill("SIGTERM");
  }
}
