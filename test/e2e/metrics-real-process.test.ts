import { afterAll, beforeAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { startDaemon, type DaemonProcess } from "../helpers/daemon-process.js";
import { agentClients } from "../helpers/clients.js";
import { startBusyProcess } from "../helpers/busy-process.js";
import { tempDir } from "../helpers/temp-dir.js";

// metrics.md check 8 (processes): a real busy child registered with its pid, measured through
// a real agent process over gRPC, compared with ps(1).

let agent: DaemonProcess;
let clients: ReturnType<typeof agentClients>;
let busy: ChildProcess;
const state = tempDir("real-process");

beforeAll(async () => {
  agent = await startDaemon(["agent", "--listen", "127.0.0.1:0", "--state-dir", state.path, "--metrics-listen", "off"]);
  clients = agentClients(agent.address);
  busy = startBusyProcess(64);
  await new Promise((r) => setTimeout(r, 300));
});

afterAll(async () => {
  busy.kill("SIGKILL");
  clients.close();
  await agent.stop();
  state.remove();
});

function ps(pid: number): { cpuSeconds: number; rssKiB: number } {
  const [times = "", rss = ""] = execFileSync("ps", ["-o", "times=,rss=", "-p", String(pid)], { encoding: "utf8" }).trim().split(/\s+/);
  return { cpuSeconds: Number(times), rssKiB: Number(rss) };
}

describe("a real busy process", () => {
  it("cpu_usec grows and agrees with ps -o times=,rss=", async () => {
    const pid = busy.pid!;
    await clients.inventory.registerInstance({ instance: { id: "busy-1", name: "busy", pid, allocatedVcpus: 1, allocatedMemoryBytes: 1n << 30n } });
    const first = (await clients.metrics.getInstanceStats({ instanceId: "busy-1" })).stats!;
    assert.ok(first.cpuUsec !== undefined, `cpu unavailable: ${first.unavailable.join("; ")}`);
    // Long enough for ps's whole-second `times` to move on as well.
    await new Promise((r) => setTimeout(r, 1300));
    const second = (await clients.metrics.getInstanceStats({ instanceId: "busy-1" })).stats!;
    const reference = ps(pid);
    assert.ok(second.cpuUsec! > first.cpuUsec!, `cpu_usec did not grow: ${first.cpuUsec} → ${second.cpuUsec}`);
    // ps prints whole seconds of utime+stime, truncated; a tick or two may pass between reads.
    const ours = Number(second.cpuUsec) / 1e6;
    assert.ok(Math.abs(ours - reference.cpuSeconds) < 1.05, `cpu ${ours}s vs ps ${reference.cpuSeconds}s`);
    const rssKiB = Number(second.memoryRssBytes) / 1024;
    assert.ok(Math.abs(rssKiB - reference.rssKiB) <= Math.max(256, reference.rssKiB * 0.02), `rss ${rssKiB} KiB vs ps ${reference.rssKiB} KiB`);
    assert.ok(rssKiB > 64 * 1024, "the 64 MiB buffer is resident");
    // A busy loop on one vCPU uses much of it between the two samples (loose: other test files
    // share the 2 cores).
    assert.ok(second.cpuUtilizationRatio !== undefined && second.cpuUtilizationRatio > 0.2, `cpu ratio ${second.cpuUtilizationRatio}`);
    assert.deepEqual(second.unavailable, []);
  });

  it("after the process exits, CPU and memory are unset with the reason", async () => {
    const pid = busy.pid!;
    busy.kill("SIGKILL");
    await new Promise((r) => busy.once("exit", r));
    const s = (await clients.metrics.getInstanceStats({ instanceId: "busy-1" })).stats!;
    assert.equal(s.cpuUsec, undefined);
    assert.equal(s.memoryRssBytes, undefined);
    assert.ok(s.unavailable.includes(`cpu: pid ${pid} not found`), s.unavailable.join("; "));
  });
});
