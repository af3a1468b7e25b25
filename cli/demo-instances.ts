import { spawn, type ChildProcess } from "node:child_process";
import { DEMO_ECHO_PORT, type DemoHost, type DemoNet } from "./demo-network.js";

/** A small real workload `fleetlet up` starts when the host has no hypervisor processes. */
export interface DemoInstance {
  id: string;
  name: string;
  child: ChildProcess;
  vcpus: number;
  memoryBytes: bigint;
  /** Set with --demo-network: the demo's namespace, its veth end in the host namespace and address. */
  net?: DemoNet;
}

// Each demo is a Node process with a duty cycle of busy work and a resident buffer, so CPU and
// memory columns show real, different numbers. They exit with their parent (stdin closes).
const PROFILES = [
  { id: "demo-web", name: "web (bursty)", busyMs: 30, periodMs: 100, residentMiB: 48, vcpus: 1, memMiB: 256, trafficBytes: 256 * 1024 },
  { id: "demo-batch", name: "batch (busy)", busyMs: 70, periodMs: 100, residentMiB: 96, vcpus: 2, memMiB: 512, trafficBytes: 16 * 1024 },
  { id: "demo-idle", name: "idle", busyMs: 0, periodMs: 1000, residentMiB: 8, vcpus: 1, memMiB: 128, trafficBytes: 0 },
];

/** The bytes each demo is sent every second with --demo-network, by index (0 = none), so each shows its own traffic pattern. */
export const DEMO_TRAFFIC_BYTES = PROFILES.map((p) => p.trafficBytes);

/** Starts the demos; with `host` (--demo-network), each in its namespace with an echo server. */
export function startDemoInstances(host?: DemoHost): DemoInstance[] {
  return PROFILES.map((p, index) => {
    const demoNet = host?.nets[index];
    const echo = demoNet ? `require("net").createServer((s) => { s.on("error", () => {}); s.pipe(s); }).listen(${DEMO_ECHO_PORT}, "${demoNet.guestIp}");` : "";
    const script = `
      ${echo}
      const keep = Buffer.alloc(${p.residentMiB} * 1024 * 1024, 1);
      setInterval(() => { const end = Date.now() + ${p.busyMs}; while (Date.now() < end) {} }, ${p.periodMs});
      process.stdin.on("end", () => process.exit(0)); process.stdin.resume();
      globalThis.keep = keep;`;
    const child = demoNet
      ? spawn("ip", ["netns", "exec", demoNet.namespace, process.execPath, "-e", script], { stdio: ["pipe", "ignore", "ignore"] })
      : spawn(process.execPath, ["-e", script], { stdio: ["pipe", "ignore", "ignore"] });
    return { id: p.id, name: p.name, child, vcpus: p.vcpus, memoryBytes: BigInt(p.memMiB) << 20n, net: demoNet };
  });
}

/** SIGTERM by pid, and wait for each to exit (SIGKILL after 5 s). */
export async function stopDemoInstances(demos: DemoInstance[]): Promise<void> {
  await Promise.all(
    demos.map((d) => {
      if (d.child.exitCode !== null || d.child.signalCode !== null || d.child.pid === undefined) return undefined;
      const exited = new Promise<void>((r) => d.child.once("exit", () => r()));
      const kill = setTimeout(() => d.child.kill("SIGKILL"), 5000);
      // A demo on standby is stopped (SIGSTOP): it acts on SIGTERM only once continued.
      d.child.kill("SIGCONT");
      d.child.kill("SIGTERM");
      return exited.finally(() => clearTimeout(kill));
    }),
  );
}
