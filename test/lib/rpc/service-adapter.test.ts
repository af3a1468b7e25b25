import { afterAll, beforeAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import * as grpc from "@grpc/grpc-js";
import http2 from "node:http2";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { Behavior, EchoService } from "../../../gen/fleetlet/testing/v1/echo_pb.js";
import { startGrpcServer, type RunningGrpcServer } from "../../../lib/rpc/grpc-server.js";
import { serviceRegistration } from "../../../lib/rpc/service-adapter.js";
import { createGrpcJsTransport, type GrpcJsTransport } from "../../../lib/rpc/grpc-transport.js";
import { parseHostPort } from "../../../lib/listen-address.js";
import { createLogger } from "../../../lib/rpc/logger.js";
import { createEchoService, type EchoProbe } from "./echo-service.js";

// The grpc-node style matrix: every method kind × success, handler error, plain throw,
// deadline, client cancel and malformed request, against a real server on loopback.

const probe: EchoProbe = { abortReasons: new Map(), produced: 0 };
let server: RunningGrpcServer;
let transport: GrpcJsTransport;
let client: Client<typeof EchoService>;
let raw: grpc.Client;
const logLines: Record<string, unknown>[] = [];

beforeAll(async () => {
  const logger = createLogger("test", "info");
  // Capture the per-RPC log lines instead of printing them.
  const capture = logger.child({});
  (capture as unknown as { info: (o: Record<string, unknown>) => void }).info = (o) => logLines.push(o);
  (capture as unknown as { warn: (o: Record<string, unknown>) => void }).warn = (o) => logLines.push(o);
  server = await startGrpcServer({
    listen: parseHostPort("127.0.0.1:0"),
    logger: capture,
    services: [serviceRegistration(EchoService, createEchoService(probe))],
  });
  transport = createGrpcJsTransport(server.address);
  client = createClient(EchoService, transport);
  raw = new grpc.Client(server.address, grpc.credentials.createInsecure());
});

afterAll(async () => {
  transport.close();
  raw.close();
  await server.close(1000);
});

async function rejectsWith(p: Promise<unknown>, code: Code, message?: RegExp): Promise<ConnectError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof ConnectError, `expected ConnectError, got ${String(e)}`);
    assert.equal(Code[e.code], Code[code], `code (message: ${e.rawMessage})`);
    if (message) assert.match(e.rawMessage, message);
    return e;
  }
  assert.fail("expected the call to fail");
}

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

async function* items<T>(...xs: T[]): AsyncIterable<T> {
  for (const x of xs) yield x;
}

async function waitFor(check: () => boolean, ms = 2000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) assert.fail("condition not met in time");
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe("unary", () => {
  it("answers", async () => {
    assert.equal((await client.echo({ text: "hi" })).text, "hi");
  });
  it("sends a handler's ConnectError as that gRPC status and message", async () => {
    await rejectsWith(client.echo({ text: "no such thing", behavior: Behavior.FAIL, errorCode: Code.NotFound }), Code.NotFound, /^no such thing$/);
  });
  it("sends a plain throw as UNKNOWN with its message", async () => {
    await rejectsWith(client.echo({ text: "x", behavior: Behavior.THROW }), Code.Unknown, /plain failure: x/);
  });
  it("turns the client's deadline into an aborted handler signal and DEADLINE_EXCEEDED", async () => {
    const started = Date.now();
    await rejectsWith(client.echo({ behavior: Behavior.HANG }, { timeoutMs: 150 }), Code.DeadlineExceeded);
    assert.ok(Date.now() - started < 1500);
    await waitFor(() => probe.abortReasons.has("echo"));
    assert.equal((probe.abortReasons.get("echo") as ConnectError).code, Code.DeadlineExceeded);
  });
  it("aborts the handler when the client cancels", async () => {
    probe.abortReasons.delete("echo");
    const ac = new AbortController();
    const p = client.echo({ behavior: Behavior.HANG }, { signal: ac.signal });
    setTimeout(() => ac.abort(), 50);
    await rejectsWith(p, Code.Canceled);
    await waitFor(() => probe.abortReasons.has("echo"));
    assert.equal((probe.abortReasons.get("echo") as ConnectError).code, Code.Canceled);
  });
  it("answers a malformed request with INVALID_ARGUMENT naming the message", async () => {
    const err = await new Promise<grpc.ServiceError>((res) => {
      raw.makeUnaryRequest("/fleetlet.testing.v1.EchoService/Echo", (b: Buffer) => b, (b: Buffer) => b, Buffer.from([0x0a, 0x05, 0x61]), (e) => res(e!));
    });
    assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
    assert.match(err.details, /malformed fleetlet\.testing\.v1\.EchoRequest/);
  });
  it("logs one line per RPC with method, code, duration and peer", async () => {
    const before = logLines.length;
    await client.echo({ text: "logged" });
    const line = logLines.slice(before).find((l) => l.method === "/fleetlet.testing.v1.EchoService/Echo");
    assert.ok(line, "log line");
    assert.equal(line.code, "OK");
    assert.equal(typeof line.duration_ms, "number");
    assert.match(String(line.peer), /127\.0\.0\.1:\d+/);
  });
});

describe("server streaming", () => {
  it("streams every message in order", async () => {
    const got = await collect(client.echoServerStream({ text: "s", count: 5 }));
    assert.deepEqual(got.map((m) => m.index), [0, 1, 2, 3, 4]);
  });
  it("delivers messages before a handler error, then its status", async () => {
    const got: number[] = [];
    await rejectsWith(
      (async () => {
        for await (const m of client.echoServerStream({ text: "boom", count: 5, after: 2, behavior: Behavior.FAIL, errorCode: Code.FailedPrecondition })) got.push(m.index);
      })(),
      Code.FailedPrecondition,
      /^boom$/,
    );
    assert.deepEqual(got, [0, 1]);
  });
  it("sends a plain throw as UNKNOWN", async () => {
    await rejectsWith(collect(client.echoServerStream({ text: "t", count: 3, after: 0, behavior: Behavior.THROW })), Code.Unknown, /plain failure/);
  });
  it("ends a hanging stream at the deadline", async () => {
    probe.abortReasons.delete("echoServerStream");
    await rejectsWith(collect(client.echoServerStream({ count: 3, after: 1, behavior: Behavior.HANG }, { timeoutMs: 150 })), Code.DeadlineExceeded);
    await waitFor(() => probe.abortReasons.has("echoServerStream"));
  });
  it("aborts the handler when the client cancels", async () => {
    probe.abortReasons.delete("echoServerStream");
    const ac = new AbortController();
    const p = collect(client.echoServerStream({ count: 3, after: 1, behavior: Behavior.HANG }, { signal: ac.signal }));
    setTimeout(() => ac.abort(), 50);
    await rejectsWith(p, Code.Canceled);
    await waitFor(() => probe.abortReasons.has("echoServerStream"));
    assert.equal((probe.abortReasons.get("echoServerStream") as ConnectError).code, Code.Canceled);
  });
  it("answers a malformed request with INVALID_ARGUMENT", async () => {
    const status = await new Promise<grpc.StatusObject>((res) => {
      const call = raw.makeServerStreamRequest("/fleetlet.testing.v1.EchoService/EchoServerStream", (b: Buffer) => b, (b: Buffer) => b, Buffer.from([0xff, 0xff]));
      call.on("data", () => undefined);
      call.on("error", () => undefined);
      call.on("status", res);
    });
    assert.equal(status.code, grpc.status.INVALID_ARGUMENT);
  });
  it("applies back-pressure: a reader that stops reading stops the producer", async () => {
    // A raw HTTP/2 client that never reads: its flow-control window (64 KiB) fills, and the
    // server must then stop pulling messages from the handler instead of buffering them.
    probe.produced = 0;
    const session = http2.connect(`http://${server.address}`);
    const text = Buffer.alloc(64 * 1024, 0x78);
    // EchoServerStreamRequest{text: 64 KiB, count: 10000}
    const body = Buffer.concat([Buffer.from([0x0a, 0x80, 0x80, 0x04]), text, Buffer.from([0x10, 0x90, 0x4e])]);
    const frame = Buffer.alloc(5);
    frame.writeUInt32BE(body.length, 1);
    const stream = session.request({
      ":method": "POST",
      ":path": "/fleetlet.testing.v1.EchoService/EchoServerStream",
      "content-type": "application/grpc",
      te: "trailers",
    });
    stream.end(Buffer.concat([frame, body]));
    stream.pause();
    let last = -1;
    for (let i = 0; i < 50 && probe.produced !== last; i++) {
      last = probe.produced;
      await new Promise((r) => setTimeout(r, 200));
    }
    assert.equal(probe.produced, last, "producer still running while the reader is paused");
    // 10,000 × 64 KiB would be 640 MiB buffered without back-pressure.
    assert.ok(last < 100, `producer ran ahead of a paused reader: ${last} messages`);
    stream.destroy();
    session.destroy();
  });
});

describe("client streaming", () => {
  it("collects every request", async () => {
    const res = await client.echoClientStream(items({ text: "a" }, { text: "b" }, { text: "c" }));
    assert.deepEqual(res.texts, ["a", "b", "c"]);
  });
  it("sends a handler's ConnectError as the status", async () => {
    await rejectsWith(client.echoClientStream(items({ text: "a" }, { text: "bad", behavior: Behavior.FAIL, errorCode: Code.InvalidArgument })), Code.InvalidArgument, /^bad$/);
  });
  it("sends a plain throw as UNKNOWN", async () => {
    await rejectsWith(client.echoClientStream(items({ text: "a", behavior: Behavior.THROW })), Code.Unknown);
  });
  it("ends at the deadline", async () => {
    await rejectsWith(client.echoClientStream(items({ behavior: Behavior.HANG }), { timeoutMs: 150 }), Code.DeadlineExceeded);
  });
  it("aborts the handler when the client cancels", async () => {
    probe.abortReasons.delete("echoClientStream");
    const ac = new AbortController();
    const p = client.echoClientStream(items({ behavior: Behavior.HANG }), { signal: ac.signal });
    setTimeout(() => ac.abort(), 50);
    await rejectsWith(p, Code.Canceled);
    await waitFor(() => probe.abortReasons.has("echoClientStream"));
  });
  it("answers a malformed request with INVALID_ARGUMENT", async () => {
    const err = await new Promise<grpc.ServiceError>((res) => {
      const call = raw.makeClientStreamRequest("/fleetlet.testing.v1.EchoService/EchoClientStream", (b: Buffer) => b, (b: Buffer) => b, (e) => res(e!));
      call.write(Buffer.from([0x0a, 0x09]));
      call.end();
    });
    assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
  });
});

describe("bidi streaming", () => {
  it("answers each request", async () => {
    const got = await collect(client.echoBidi(items({ text: "1" }, { text: "2" })));
    assert.deepEqual(got.map((m) => m.text), ["1", "2"]);
  });
  it("sends a handler's ConnectError as the status", async () => {
    await rejectsWith(collect(client.echoBidi(items({ text: "1" }, { text: "no", behavior: Behavior.FAIL, errorCode: Code.PermissionDenied }))), Code.PermissionDenied, /^no$/);
  });
  it("sends a plain throw as UNKNOWN", async () => {
    await rejectsWith(collect(client.echoBidi(items({ behavior: Behavior.THROW }))), Code.Unknown);
  });
  it("ends at the deadline", async () => {
    await rejectsWith(collect(client.echoBidi(items({ behavior: Behavior.HANG }), { timeoutMs: 150 })), Code.DeadlineExceeded);
  });
  it("aborts the handler when the client cancels", async () => {
    probe.abortReasons.delete("echoBidi");
    const ac = new AbortController();
    const p = collect(client.echoBidi(items({ behavior: Behavior.HANG }), { signal: ac.signal }));
    setTimeout(() => ac.abort(), 50);
    await rejectsWith(p, Code.Canceled);
    await waitFor(() => probe.abortReasons.has("echoBidi"));
  });
  it("answers a malformed request with INVALID_ARGUMENT", async () => {
    const status = await new Promise<grpc.StatusObject>((res) => {
      const call = raw.makeBidiStreamRequest("/fleetlet.testing.v1.EchoService/EchoBidi", (b: Buffer) => b, (b: Buffer) => b);
      call.on("data", () => undefined);
      call.on("error", () => undefined);
      call.on("status", res);
      call.write(Buffer.from([0x0a, 0x09, 0x61]));
      call.end();
    });
    assert.equal(status.code, grpc.status.INVALID_ARGUMENT);
  });
});

describe("server shutdown", () => {
  it("ends open streams with UNAVAILABLE (retryable), not CANCELLED", async () => {
    const own = await startGrpcServer({
      listen: parseHostPort("127.0.0.1:0"),
      logger: createLogger("test", "silent"),
      services: [serviceRegistration(EchoService, createEchoService({ abortReasons: new Map(), produced: 0 }))],
    });
    const t = createGrpcJsTransport(own.address);
    const c = createClient(EchoService, t);
    const check = rejectsWith(collect(c.echoServerStream({ count: 3, after: 1, behavior: Behavior.HANG })), Code.Unavailable, /server shutting down/);
    await new Promise((r) => setTimeout(r, 100));
    await own.close(500);
    try {
      await check;
    } finally {
      t.close();
    }
  });
});

describe("unknown methods", () => {
  it("answers UNIMPLEMENTED", async () => {
    const err = await new Promise<grpc.ServiceError>((res) => {
      raw.makeUnaryRequest("/fleetlet.testing.v1.EchoService/Nope", (b: Buffer) => b, (b: Buffer) => b, Buffer.alloc(0), (e) => res(e!));
    });
    assert.equal(err.code, grpc.status.UNIMPLEMENTED);
  });
});
