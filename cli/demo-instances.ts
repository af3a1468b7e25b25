import { spawn, type ChildProcess } from "node:child_process";
import { createDemoNet, removeDemoNet, type DemoNet } from "./demo-network.js";

/** A small real workload `fleetlet up` starts when the host has no hypervisor processes. */
export interface DemoInstance {
  id: string;
  name: string;
  child: ChildProcess;
  vcpus: number;
  memoryBytes: bigint;
  /** Set with --demo-network: the demo's namespace, host-side interface and address. */
  net?: DemoNet;
  /** Bytes `up` sends it per refresh, so each demo shows its own traffic pattern. */
  trafficBytes: number;
}

// Each demo is a Node process with a duty cycle of busy work and a resident buffer, so CPU and
// memory columns show real, different numbers. They exit with their parent (stdin closes).
const PROFILES = [
  { id: "demo-web", name: "web (bursty)", busyMs: 30, periodMs: 100, residentMiB: 48, vcpus: 1, memMiB: 256, trafficBytes: 256 * 1024 },
  { id: "demo-batch", name: "batch (busy)", busyMs: 70, periodMs: 100, residentMiB: 96, vcpus: 2, memMiB: 512, trafficBytes: 16 * 1024 },
  { id: "demo-idle", name: "idle", busyMs: 0, periodMs: 1000, residentMiB: 8, vcpus: 1, memMiB: 128, trafficBytes: 0 },
];

export function startDemoInstances(withNetwork: boolean): DemoInstance[] {
  return PROFILES.map((p, index) => {
    const demoNet = withNetwork ? createDemoNet(index) : undefined;
    const echo = demoNet ? `require("net").createServer((s) => { s.on("error", () => {}); s.pipe(s); }).listen(7000, "${demoNet.guestIp}");` : "";
    const script = `
      ${echo}
      const keep = Buffer.alloc(${p.residentMiB} * 1024 * 1024, 1);
      setInterval(() => { const end = Date.now() + ${p.busyMs}; while (Date.now() < end) {} }, ${p.periodMs});
      process.stdin.on("end", () => process.exit(0)); process.stdin.resume();
      globalThis.keep = keep;`;
    const child = demoNet
      ? spawn("ip", ["netns", "exec", demoNet.namespace, process.execPath, "-e", script], { stdio: ["pipe", "ignore", "ignore"] })
      : spawn(process.execPath, ["-e", script], { stdio: ["pipe", "ignore", "ignore"] });
    return { id: p.id, name: p.name, child, vcpus: p.vcpus, memoryBytes: BigInt(p.memMiB) << 20n, net: demoNet, trafficBytes: p.trafficBytes };
  });
}

export function stopDemoInstances(demos: DemoInstance[]): void {
  for (const d of demos) {
    if (d.child.exitCode === null && d.child.pid !== undefined) d.child.kill("SIGTERM");
    if (d.net) removeDemoNet(d.net);
  }
}
