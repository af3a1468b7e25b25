import { afterAll, beforeAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import * as http2 from "node:http2";
import * as net from "node:net";
import * as grpc from "@grpc/grpc-js";
import { InventoryService } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { startDaemon, type DaemonProcess } from "../helpers/daemon-process.js";
import { tempDir } from "../helpers/temp-dir.js";

// The agent as shipped (default limits: 1,024 streams, 256 per client address) against 3,000
// idle WatchInstances streams from 12 loopback addresses (all of 127/8 is lo on Linux).
const dir = tempDir("watch-stream-limits");
let agent: DaemonProcess;
const sessions: http2.ClientHttp2Session[] = [];

beforeAll(async () => {
  agent = await startDaemon(["agent", "--listen", "127.0.0.1:0", "--state-dir", dir.path, "--metrics-listen", "off", "--runtime", "none", "--standby", "off", "--metering", "off"]);
});

afterAll(async () => {
  for (const s of sessions) s.destroy();
  await agent?.stop();
  dir.remove();
});

const rssMiB = (pid: number) => Number(/^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, "latin1"))![1]) / 1024;

function session(port: number, localAddress: string): http2.ClientHttp2Session {
  const s = http2.connect(`http://127.0.0.1:${port}`, { createConnection: () => net.connect({ host: "127.0.0.1", port, localAddress }) });
  s.on("error", () => {});
  sessions.push(s);
  return s;
}

/** An idle WatchInstances stream; resolves with its grpc-status and message if it ends. */
function watch(s: http2.ClientHttp2Session): Promise<{ code: number; message: string }> {
  const stream = s.request({ ":method": "POST", ":path": `/${InventoryService.typeName}/WatchInstances`, "content-type": "application/grpc", te: "trailers" });
  stream.on("error", () => {});
  stream.resume();
  stream.end(Buffer.alloc(5)); // an empty WatchInstancesRequest
  return new Promise((resolve) => {
    const settle = (h: http2.IncomingHttpHeaders) => {
      if (h["grpc-status"] !== undefined) resolve({ code: Number(h["grpc-status"]), message: decodeURIComponent(String(h["grpc-message"] ?? "")) });
    };
    stream.on("response", settle);
    stream.on("trailers", settle);
  });
}

describe("open watch streams on the agent", () => {
  it("refuses 3,000 idle streams past the cap with RESOURCE_EXHAUSTED naming the flag; RSS stays bounded", async () => {
    const port = Number(agent.address.split(":").pop());
    const rssBefore = rssMiB(agent.pid);
    // One address over its share: refused by the per-client cap while others still get slots.
    const greedy = session(port, "127.0.3.1");
    const greedyEnds: Promise<{ code: number; message: string }>[] = [];
    for (let i = 0; i < 256; i++) greedyEnds.push(watch(greedy));
    const over = await watch(greedy);
    assert.equal(over.code, grpc.status.RESOURCE_EXHAUSTED);
    assert.match(over.message, /at most 256 per client \(--max-watch-streams-per-peer\)/);
    let global = 0;
    let other = 0;
    for (const e of greedyEnds) void e.then(() => other++);
    // 3,000 more from 12 addresses, 250 each (within their share): 768 fit under the global cap.
    for (let p = 0; p < 12; p++) {
      const conns = [0, 1, 2].map(() => session(port, `127.0.2.${p + 1}`));
      for (let i = 0; i < 250; i++) {
        void watch(conns[i % 3]!).then((r) => {
          if (r.code === grpc.status.RESOURCE_EXHAUSTED && r.message.includes("at most 1024 on this server (--max-watch-streams)")) global++;
          else other++;
        });
      }
    }
    const refused = 3000 - (1024 - 256);
    for (let i = 0; i < 3000 && global < refused; i++) await new Promise((r) => setTimeout(r, 10));
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(global, refused);
    assert.equal(other, 0, "the admitted streams stay open");
    const rssAfter = rssMiB(agent.pid);
    console.log(`agent RSS: ${rssBefore.toFixed(0)} MiB idle -> ${rssAfter.toFixed(0)} MiB with 1,024 idle watch streams open and 2,233 refused`);
  }, 120_000);
});
