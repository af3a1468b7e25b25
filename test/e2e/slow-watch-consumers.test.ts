import { afterAll, beforeAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { InstanceState, InventoryService } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { mapBounded } from "../../lib/worker-pool.js";
import { agentClients } from "../helpers/clients.js";
import { startDaemon, type DaemonProcess } from "../helpers/daemon-process.js";
import { builtHelper } from "../helpers/paths.js";
import { tempDir } from "../helpers/temp-dir.js";

// Issue 12 point 11: 2,000 WatchInstances streams over 10,000 instances whose client never
// reads took the agent from 290 MB to 19 GB (every stream built the whole inventory as events
// up front, and grpc-js buffered 16 messages of ~1 MB each), and kept growing after the client
// died. Now the state is paged lazily (32 KiB messages) and each stream holds at most its byte
// budget (64 KiB) for a client that does not read: the agent stays under a stated bound, other
// clients' calls go on, and everything is let go when the client goes away.

const INSTANCES = 10_000;
const STREAMS = 2_000;
const SESSIONS = 20;
/** What 2,000 stalled streams may add to the agent: 2,000 × (64 KiB budget + a 32 KiB page) ≈ 190 MiB, plus HTTP/2 stream state and GC slack (measured +170 to +226 MB). */
const BOUND_ADDED_MB = 350;
const WATCH = `/${InventoryService.typeName}/${InventoryService.method.watchInstances.name}`;
const dir = tempDir("slow-watch-consumers");
let agent: DaemonProcess;
let baselineMb = 0;
const rpcLines: { method?: string; code?: string }[] = [];

function rssMb(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Number(m[1]) / 1024 : Number.NaN;
}

beforeAll(async () => {
  // One client with 2,000 streams: the stream caps are raised, this measures per-stream buffers.
  agent = await startDaemon(["agent", "--listen", "127.0.0.1:0", "--state-dir", dir.path, "--metrics-listen", "off", "--runtime", "none", "--standby", "off", "--stream-stall-timeout", "10m", "--max-watch-streams", "10000", "--max-watch-streams-per-peer", "10000"]);
  createInterface({ input: agent.child.stdout! }).on("line", (line) => {
    if (!line.includes('"msg":"rpc"') || !line.includes("WatchInstances")) return;
    rpcLines.push(JSON.parse(line) as { method?: string; code?: string });
  });
  const c = agentClients(agent.address);
  try {
    // About 1.1 KB per instance encoded, as in the report.
    const labels = Object.fromEntries(Array.from({ length: 4 }, (_, k) => [`example.com/label-${k}`, `${k}`.repeat(240)]));
    const ids = Array.from({ length: INSTANCES }, (_, k) => `vm-${String(k).padStart(5, "0")}`);
    await mapBounded(ids, 256, (id) => c.inventory.registerInstance({ instance: { id, name: `instance ${id}`, state: InstanceState.RUNNING, allocatedVcpus: 2, allocatedMemoryBytes: 1n << 30n, labels } }));
  } finally {
    c.close();
  }
  await new Promise((r) => setTimeout(r, 2000));
  baselineMb = rssMb(agent.pid);
}, 180_000);

afterAll(async () => {
  await agent?.stop();
  dir.remove();
});

describe("2,000 never-read WatchInstances streams over 10,000 instances", () => {
  let client: ChildProcess | undefined;
  afterAll(() => {
    client?.kill("SIGKILL");
  });

  it("keep the agent under its bound; other clients' calls keep working; all is let go when the client dies", async () => {
    const bound = baselineMb + BOUND_ADDED_MB;
    client = spawn(process.execPath, [builtHelper("stalled-watch-client"), agent.address, WATCH, String(STREAMS), String(SESSIONS)], { stdio: ["ignore", "pipe", "inherit"] });
    // Watch the agent while the streams open: past the bound, stop at once (before the fix this
    // grew by gigabytes a minute and would take the machine with it).
    let peakMb = 0;
    const guard = setInterval(() => {
      const mb = rssMb(agent.pid);
      peakMb = Math.max(peakMb, mb);
      if (mb > bound * 1.5) agent.child.kill("SIGKILL");
    }, 100);
    try {
      const report = await new Promise<{ opened: number; withHeaders: number }>((resolve, reject) => {
        createInterface({ input: client!.stdout! }).once("line", (line) => resolve(JSON.parse(line) as { opened: number; withHeaders: number }));
        client!.once("exit", (code) => reject(new Error(`stalled client exited (${code})`)));
      });
      assert.equal(report.opened, STREAMS);
      assert.equal(report.withHeaders, STREAMS, "every stream was answered (its first page sent)");
      // Let every stream produce what its budget allows.
      await new Promise((r) => setTimeout(r, 5000));
      const settledMb = rssMb(agent.pid);
      peakMb = Math.max(peakMb, settledMb);
      console.log(`agent RSS: ${baselineMb.toFixed(0)} MB with 10,000 instances, ${settledMb.toFixed(0)} MB with ${STREAMS} stalled watches (peak ${peakMb.toFixed(0)} MB, bound ${bound.toFixed(0)} MB)`);
      assert.ok(peakMb <= bound, `agent RSS peaked at ${peakMb.toFixed(0)} MB, bound ${bound.toFixed(0)} MB (baseline ${baselineMb.toFixed(0)} MB)`);

      // Other clients: writes and a full watch still work while the stalled streams sit there.
      const c = agentClients(agent.address);
      try {
        const started = performance.now();
        for (let k = 0; k < 50; k++) await c.inventory.registerInstance({ instance: { id: `other-${k}`, state: InstanceState.RUNNING } }, { timeoutMs: 10_000 });
        console.log(`50 RegisterInstance calls next to ${STREAMS} stalled watches: ${(performance.now() - started).toFixed(0)} ms`);
        const ac = new AbortController();
        let seen = 0;
        for await (const res of c.inventory.watchInstances({}, { signal: ac.signal, timeoutMs: 60_000 })) {
          seen += res.events.filter((e) => e.instance !== undefined).length;
          if (seen >= INSTANCES + 50) break;
        }
        ac.abort();
        assert.equal(seen, INSTANCES + 50);
      } finally {
        c.close();
      }

      // The client dies: every one of its calls ends on the agent.
      const before = rpcLines.filter((l) => l.code === "CANCELLED").length;
      client.kill("SIGKILL");
      const deadline = Date.now() + 30_000;
      while (rpcLines.filter((l) => l.code === "CANCELLED").length - before < STREAMS && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
      // (>=: the aborted watch above may log its own CANCELLED meanwhile.)
      const ended = rpcLines.filter((l) => l.code === "CANCELLED").length - before;
      assert.ok(ended >= STREAMS, `${STREAMS - ended} calls of the dead client still open on the agent`);
    } finally {
      clearInterval(guard);
    }
  }, 240_000);
});
