import { afterAll, beforeAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import * as http2 from "node:http2";
import * as net from "node:net";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { InventoryService, InstanceState } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { bearerTokenChannelOptions } from "../../lib/rpc/authz/call-credentials.js";
import { hashToken } from "../../lib/rpc/authz/tokens-file.js";
import { createGrpcJsTransport } from "../../lib/rpc/grpc-transport.js";
import { startDaemon, type DaemonProcess } from "../helpers/daemon-process.js";
import { tempDir } from "../helpers/temp-dir.js";
import { codeOf } from "../helpers/call-code.js";

// Per-identity limits on a real agent with a tokens file (security.md "Limits"): open watch
// streams are counted per identity, not per address (more addresses do not buy more streams;
// two users behind one address each get their share), and state-changing calls are rate
// limited per identity, with RESOURCE_EXHAUSTED naming the flag, leaving others and reads alone.

const dir = tempDir("identity-limits");
const TOKENS = { ops1: "tok-ops-one", ops2: "tok-ops-two" };
const PER_IDENTITY_STREAMS = 4;
const RATE = 5; // calls/s, bursts of 10
let agent: DaemonProcess;
const sessions: http2.ClientHttp2Session[] = [];
const closers: (() => void)[] = [];

beforeAll(async () => {
  writeFileSync(join(dir.path, "tokens"), `ops1 admin ${hashToken(TOKENS.ops1)}\nops2 admin ${hashToken(TOKENS.ops2)}\n`, { mode: 0o600 });
  agent = await startDaemon([
    "agent", "--listen", "127.0.0.1:0", "--state-dir", join(dir.path, "state"), "--metrics-listen", "off", "--runtime", "none", "--standby", "off", "--metering", "off",
    "--tokens-file", join(dir.path, "tokens"), "--max-watch-streams-per-peer", String(PER_IDENTITY_STREAMS), "--max-mutating-calls-per-second", String(RATE),
  ]);
});

afterAll(async () => {
  for (const s of sessions) s.destroy();
  for (const c of closers) c();
  await agent?.stop();
  dir.remove();
});

function session(localAddress: string): http2.ClientHttp2Session {
  const port = Number(agent.address.split(":").pop());
  const s = http2.connect(`http://127.0.0.1:${port}`, { createConnection: () => net.connect({ host: "127.0.0.1", port, localAddress }) });
  s.on("error", () => {});
  sessions.push(s);
  return s;
}

/** An idle WatchInstances stream as `token`; resolves with its grpc-status if it ends within `ms`. */
function watch(s: http2.ClientHttp2Session, token: string, ms = 1500): Promise<{ code: number; message: string } | "open"> {
  const stream = s.request({ ":method": "POST", ":path": `/${InventoryService.typeName}/WatchInstances`, "content-type": "application/grpc", te: "trailers", authorization: `Bearer ${token}` });
  stream.on("error", () => {});
  stream.resume();
  stream.end(Buffer.alloc(5));
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve("open"), ms);
    const settle = (h: http2.IncomingHttpHeaders) => {
      if (h["grpc-status"] === undefined) return;
      clearTimeout(timer);
      resolve({ code: Number(h["grpc-status"]), message: decodeURIComponent(String(h["grpc-message"] ?? "")) });
    };
    stream.on("response", settle);
    stream.on("trailers", settle);
  });
}

function inventory(token: string) {
  const transport = createGrpcJsTransport(agent.address, { channelOptions: bearerTokenChannelOptions(token) });
  closers.push(() => transport.close());
  return createClient(InventoryService, transport);
}


describe("per-identity limits", () => {
  it("watch streams are one identity's share wherever it connects from; another identity on the same address has its own", async () => {
    // ops1 spreads its streams over two addresses: the cap still counts them together.
    const a = session("127.0.4.1");
    const b = session("127.0.4.2");
    const first = await Promise.all([watch(a, TOKENS.ops1), watch(a, TOKENS.ops1), watch(b, TOKENS.ops1), watch(b, TOKENS.ops1)]);
    assert.deepEqual(first, ["open", "open", "open", "open"]);
    const over = await watch(session("127.0.4.3"), TOKENS.ops1);
    assert.notEqual(over, "open");
    assert.equal((over as { code: number }).code, grpc.status.RESOURCE_EXHAUSTED);
    assert.match((over as { message: string }).message, new RegExp(`too many open streams for token ops1: at most ${PER_IDENTITY_STREAMS} per client \\(--max-watch-streams-per-peer\\)`));
    // ops2 on ops1's own address and connection: its own share.
    assert.deepEqual(await Promise.all([watch(a, TOKENS.ops2), watch(a, TOKENS.ops2)]), ["open", "open"]);
  });

  it("state-changing calls are rate limited per identity: RESOURCE_EXHAUSTED naming the flag, others and reads unaffected", async () => {
    const ops1 = inventory(TOKENS.ops1);
    const ops2 = inventory(TOKENS.ops2);
    const change = (c: typeof ops1, i: number) => codeOf(c.setInstanceState({ instanceId: `nope-${i}`, state: InstanceState.RUNNING }));
    // Authorised calls on an unknown instance answer NOT_FOUND: the limiter comes before the handler.
    const burst = await Promise.all(Array.from({ length: 3 * RATE }, (_, i) => change(ops1, i)));
    const limited = burst.filter((c) => c === Code.ResourceExhausted).length;
    assert.equal(burst.filter((c) => c === Code.NotFound).length, 2 * RATE, `the burst passes: ${burst.join(",")}`);
    assert.ok(limited >= RATE - 1, `the rest refused: ${burst.join(",")}`);
    const refused = await ops1.setInstanceState({ instanceId: "x", state: InstanceState.RUNNING }).catch((e: unknown) => ConnectError.from(e));
    assert.ok(refused instanceof ConnectError && refused.code === Code.ResourceExhausted);
    assert.match(refused.rawMessage, new RegExp(`ops1 made more than ${RATE} state-changing calls per second \\(--max-mutating-calls-per-second\\)`));
    // Reads by ops1 and changes by ops2 go on.
    assert.equal(await codeOf(ops1.listInstances({})), "OK");
    assert.equal(await change(ops2, 0), Code.NotFound);
    // A second later ops1 has tokens again.
    await new Promise((r) => setTimeout(r, 1100));
    assert.equal(await change(ops1, 99), Code.NotFound);
    // The refusals are audited under ops1's name.
    const audit = agent.lines.filter((l) => l.includes('"audit":true') && l.includes("RESOURCE_EXHAUSTED")).map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.ok(audit.some((l) => l.identity === "ops1" && l.method === "/fleetlet.agent.v1.InventoryService/SetInstanceState"));
    assert.ok(!audit.some((l) => l.identity === "ops2"));
  });
});
