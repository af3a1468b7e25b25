import { afterAll, beforeAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import * as grpc from "@grpc/grpc-js";
import http2 from "node:http2";
import { create, fromBinary, toBinary, type DescMessage, type MessageInitShape } from "@bufbuild/protobuf";
import { BinaryReader } from "@bufbuild/protobuf/wire";
import { AnySchema } from "@bufbuild/protobuf/wkt";
import {
  Code,
  ConnectError,
  createClient,
  decodeBinaryHeader,
  encodeBinaryHeader,
  type CallOptions,
  type Client,
} from "@connectrpc/connect";
import {
  Behavior,
  EchoBidiRequestSchema,
  EchoClientStreamRequestSchema,
  EchoRequestSchema,
  EchoServerStreamRequestSchema,
  EchoService,
} from "../../../gen/fleetlet/testing/v1/echo_pb.js";
import { startGrpcServer, type RunningGrpcServer } from "../../../lib/rpc/grpc-server.js";
import { serviceRegistration, type CallInterceptor } from "../../../lib/rpc/service-adapter.js";
import { createGrpcJsTransport, type GrpcJsTransport } from "../../../lib/rpc/grpc-transport.js";
import { parseHostPort } from "../../../lib/listen-address.js";
import { createLogger } from "../../../lib/rpc/logger.js";
import {
  ECHO_BIN,
  ECHO_HEADER,
  ECHO_TRAILER,
  createEchoProbe,
  createEchoService,
  createMalformedEchoService,
} from "./echo-service.js";

// The grpc-node style matrix: every method kind × success, handler error, plain throw,
// deadline, client cancel, malformed request, malformed response, headers and trailers on
// success and on error, error details, a call refused by the interceptor, and (for the kinds
// that send a stream) a failing request feed, against a real server on loopback.

const probe = createEchoProbe();
let server: RunningGrpcServer;
let transport: GrpcJsTransport;
let client: Client<typeof EchoService>;
let raw: grpc.Client;
const logLines: Record<string, unknown>[] = [];

/** Binary metadata that needs padding in base64 and holds bytes no text header could. */
const BIN = Uint8Array.of(0x00, 0x01, 0x02, 0xfe, 0xff);
const REFUSE = "x-echo-refuse";
const SERVICE = "/fleetlet.testing.v1.EchoService";

/** The slot for authorisation: refuses calls that ask for it, leaving a trailer to say why. */
const refuser: CallInterceptor = (_method, context) => {
  if (!context.requestHeader.has(REFUSE)) return;
  context.responseTrailer.set("x-refused-by", "interceptor");
  throw new ConnectError("refused by the interceptor", Code.PermissionDenied);
};

beforeAll(async () => {
  const logger = createLogger("test", "info");
  // Capture the per-RPC log lines instead of printing them.
  const capture = logger.child({});
  for (const level of ["debug", "info", "warn"] as const) {
    (capture as unknown as Record<string, (o: Record<string, unknown>) => void>)[level] = (o) => logLines.push({ ...o, level });
  }
  server = await startGrpcServer({
    listen: parseHostPort("127.0.0.1:0"),
    logger: capture,
    services: [serviceRegistration(EchoService, createEchoService(probe))],
    interceptors: [refuser],
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

/** Call options that send BIN and record what reaches onHeader and onTrailer. */
function recordingOptions(): CallOptions & { header?: Headers; trailer?: Headers } {
  const options: CallOptions & { header?: Headers; trailer?: Headers } = {
    headers: { [ECHO_BIN]: encodeBinaryHeader(BIN) },
    onHeader: (h) => (options.header = h),
    onTrailer: (t) => (options.trailer = t),
  };
  return options;
}

/** The handler's header reached onHeader; its trailer and the echoed BIN reached onTrailer. */
function assertHeaderAndTrailer(got: { header?: Headers; trailer?: Headers }, method: string): void {
  assert.equal(got.header?.get(ECHO_HEADER), method);
  assert.equal(got.trailer?.get(ECHO_TRAILER), method);
  assert.deepEqual(decodeBinaryHeader(got.trailer.get(ECHO_BIN) ?? ""), BIN);
}

/**
 * A failed call's trailers and headers are the ConnectError's metadata, as in Connect's own
 * transport (Connect's clients call no onTrailer for a failed call).
 */
function assertErrorTrailer(err: ConnectError, method: string): void {
  assert.equal(err.metadata.get(ECHO_TRAILER), method);
  assert.equal(err.metadata.get(ECHO_HEADER), method);
  assert.deepEqual(decodeBinaryHeader(err.metadata.get(ECHO_BIN) ?? ""), BIN);
}

/** The Connect client decoded the one detail: the request that asked for the failure. */
function assertDetail<T extends DescMessage>(err: ConnectError, schema: T, request: MessageInitShape<T>): void {
  assert.deepEqual(err.findDetails(schema), [create(schema, request)]);
}

/**
 * One call with a plain grpc-js client, requests as bytes; its final status. Every kind's call
 * object emits 'status' with the trailers.
 */
function rawCall(method: string, requests: Uint8Array[], metadata = new grpc.Metadata()): Promise<grpc.StatusObject> {
  const id = (b: Buffer) => b;
  const path = `${SERVICE}/${method}`;
  const first = Buffer.from(requests[0] ?? new Uint8Array());
  return new Promise((res) => {
    switch (method) {
      case "Echo":
        raw.makeUnaryRequest(path, id, id, first, metadata, () => undefined).on("status", res);
        return;
      case "EchoServerStream": {
        const call = raw.makeServerStreamRequest(path, id, id, first, metadata);
        call.on("data", () => undefined).on("error", () => undefined).on("status", res);
        return;
      }
      case "EchoClientStream": {
        const call = raw.makeClientStreamRequest(path, id, id, metadata, () => undefined);
        call.on("status", res);
        for (const r of requests) call.write(Buffer.from(r));
        call.end();
        return;
      }
      default: {
        const call = raw.makeBidiStreamRequest(path, id, id, metadata);
        call.on("data", () => undefined).on("error", () => undefined).on("status", res);
        for (const r of requests) call.write(Buffer.from(r));
        call.end();
      }
    }
  });
}

/**
 * grpc-status-details-bin read by hand against google/rpc/status.proto (code = 1, message = 2,
 * repeated google.protobuf.Any details = 3), independently of Connect's reader.
 */
function readStatusDetails(status: grpc.StatusObject): { code: number; message: string; details: { typeUrl: string; value: Uint8Array }[] } {
  const values = status.metadata.get("grpc-status-details-bin");
  assert.equal(values.length, 1, "one grpc-status-details-bin");
  const reader = new BinaryReader(values[0] as Buffer);
  const out = { code: 0, message: "", details: [] as { typeUrl: string; value: Uint8Array }[] };
  while (reader.pos < reader.len) {
    const [field, wireType] = reader.tag();
    if (field === 1) out.code = reader.int32();
    else if (field === 2) out.message = reader.string();
    else if (field === 3) {
      const any = fromBinary(AnySchema, reader.bytes());
      out.details.push({ typeUrl: any.typeUrl, value: Uint8Array.from(any.value) });
    } else reader.skip(wireType);
  }
  return out;
}

/** What a grpc-js client sees of a FAIL call: the status and its details, decoded. */
async function assertRawDetail<T extends DescMessage>(method: string, schema: T, request: MessageInitShape<T>, code: Code): Promise<void> {
  const bytes = toBinary(schema, create(schema, request));
  const status = await rawCall(method, [bytes]);
  assert.equal(status.code, code as number);
  const text = (request as { text: string }).text;
  assert.equal(status.details, text);
  const decoded = readStatusDetails(status);
  assert.equal(decoded.code, code as number);
  assert.equal(decoded.message, text);
  assert.deepEqual(decoded.details, [{ typeUrl: `type.googleapis.com/${schema.typeName}`, value: bytes }]);
}

/** Requests that fail after the first (once `ready` says so): the caller's own iterable throws. */
async function* brokenFeed<T>(first: T, ready: () => boolean = () => true): AsyncIterable<T> {
  yield first;
  await waitFor(ready);
  throw new Error("feed broke");
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
  it("sends response headers and trailers, -bin values as bytes, on success", async () => {
    const got = recordingOptions();
    assert.equal((await client.echo({ text: "hi" }, got)).text, "hi");
    assertHeaderAndTrailer(got, "echo");
  });
  it("sends trailers on error", async () => {
    const err = await rejectsWith(client.echo({ text: "gone", behavior: Behavior.FAIL, errorCode: Code.NotFound }, recordingOptions()), Code.NotFound, /^gone$/);
    assertErrorTrailer(err, "echo");
  });
  it("passes -bin metadata from and to a grpc-js client as the same bytes", async () => {
    const metadata = new grpc.Metadata();
    metadata.set(ECHO_BIN, Buffer.from(BIN));
    const status = await rawCall("Echo", [toBinary(EchoRequestSchema, create(EchoRequestSchema, { text: "b" }))], metadata);
    assert.equal(status.code, grpc.status.OK);
    assert.deepEqual(status.metadata.get(ECHO_BIN), [Buffer.from(BIN)]);
    assert.deepEqual(status.metadata.get(ECHO_TRAILER), ["echo"]);
  });
  it("sends a ConnectError's details in grpc-status-details-bin, read by Connect and grpc-js", async () => {
    const request = { text: "why", behavior: Behavior.FAIL, errorCode: Code.FailedPrecondition };
    assertDetail(await rejectsWith(client.echo(request), Code.FailedPrecondition, /^why$/), EchoRequestSchema, request);
    await assertRawDetail("Echo", EchoRequestSchema, request, Code.FailedPrecondition);
  });
  it("sends no details header for an error without details", async () => {
    const status = await rawCall("Echo", [toBinary(EchoRequestSchema, create(EchoRequestSchema, { text: "t", behavior: Behavior.THROW }))]);
    assert.equal(status.code, grpc.status.UNKNOWN);
    assert.equal(status.details, "plain failure: t");
    assert.deepEqual(status.metadata.get("grpc-status-details-bin"), []);
  });
  it("refuses a call in the interceptor: its status and trailer, and no handler", async () => {
    const before = probe.started.get("echo");
    const err = await rejectsWith(client.echo({ text: "x" }, { headers: { [REFUSE]: "1" } }), Code.PermissionDenied, /^refused by the interceptor$/);
    assert.equal(err.metadata.get("x-refused-by"), "interceptor");
    assert.equal(probe.started.get("echo"), before);
  });
  it("logs one line per RPC with method, code, duration and peer", async () => {
    const before = logLines.length;
    await client.echo({ text: "logged" });
    const line = logLines.slice(before).find((l) => l.method === "/fleetlet.testing.v1.EchoService/Echo");
    assert.ok(line, "log line");
    assert.equal(line.code, "OK");
    assert.equal(typeof line.duration_ms, "number");
    assert.match(String(line.peer), /127\.0\.0\.1:\d+/);
    // A call that succeeded is a debug line; one that was refused is info.
    assert.equal(line.level, "debug");
    const refusedFrom = logLines.length;
    await rejectsWith(client.echo({ text: "x" }, { headers: { [REFUSE]: "1" } }), Code.PermissionDenied);
    const refused = logLines.slice(refusedFrom).find((l) => l.method === "/fleetlet.testing.v1.EchoService/Echo");
    assert.deepEqual([refused?.code, refused?.level], ["PERMISSION_DENIED", "info"]);
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
  it("sends response headers and trailers on success", async () => {
    const got = recordingOptions();
    assert.equal((await collect(client.echoServerStream({ text: "s", count: 2 }, got))).length, 2);
    assertHeaderAndTrailer(got, "echoServerStream");
  });
  it("sends trailers on error", async () => {
    const err = await rejectsWith(
      collect(client.echoServerStream({ text: "late", count: 3, after: 1, behavior: Behavior.FAIL, errorCode: Code.Aborted }, recordingOptions())),
      Code.Aborted,
      /^late$/,
    );
    assertErrorTrailer(err, "echoServerStream");
  });
  it("sends a ConnectError's details, read by Connect and grpc-js", async () => {
    const request = { text: "why", count: 2, after: 1, behavior: Behavior.FAIL, errorCode: Code.OutOfRange };
    assertDetail(await rejectsWith(collect(client.echoServerStream(request)), Code.OutOfRange, /^why$/), EchoServerStreamRequestSchema, request);
    await assertRawDetail("EchoServerStream", EchoServerStreamRequestSchema, request, Code.OutOfRange);
  });
  it("refuses a call in the interceptor: its status and trailer, and no handler", async () => {
    const before = probe.started.get("echoServerStream");
    const err = await rejectsWith(collect(client.echoServerStream({ count: 1 }, { headers: { [REFUSE]: "1" } })), Code.PermissionDenied, /^refused by the interceptor$/);
    assert.equal(err.metadata.get("x-refused-by"), "interceptor");
    assert.equal(probe.started.get("echoServerStream"), before);
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
  it("sends response headers and trailers on success", async () => {
    const got = recordingOptions();
    assert.deepEqual((await client.echoClientStream(items({ text: "a" }), got)).texts, ["a"]);
    assertHeaderAndTrailer(got, "echoClientStream");
  });
  it("sends trailers on error", async () => {
    const err = await rejectsWith(
      client.echoClientStream(items({ text: "a" }, { text: "bad", behavior: Behavior.FAIL, errorCode: Code.InvalidArgument }), recordingOptions()),
      Code.InvalidArgument,
      /^bad$/,
    );
    assertErrorTrailer(err, "echoClientStream");
  });
  it("sends a ConnectError's details, read by Connect and grpc-js", async () => {
    const request = { text: "why", behavior: Behavior.FAIL, errorCode: Code.ResourceExhausted };
    assertDetail(await rejectsWith(client.echoClientStream(items(request)), Code.ResourceExhausted, /^why$/), EchoClientStreamRequestSchema, request);
    await assertRawDetail("EchoClientStream", EchoClientStreamRequestSchema, request, Code.ResourceExhausted);
  });
  it("refuses a call in the interceptor: its status and trailer, and no handler", async () => {
    const before = probe.started.get("echoClientStream");
    const err = await rejectsWith(client.echoClientStream(items({ text: "a" }), { headers: { [REFUSE]: "1" } }), Code.PermissionDenied, /^refused by the interceptor$/);
    assert.equal(err.metadata.get("x-refused-by"), "interceptor");
    assert.equal(probe.started.get("echoClientStream"), before);
  });
  it("fails with the request feed's error, not the CANCELLED that ends the call", async () => {
    await rejectsWith(client.echoClientStream(brokenFeed({ text: "a" })), Code.Unknown, /^feed broke$/);
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
  it("sends response headers and trailers on success", async () => {
    const got = recordingOptions();
    assert.equal((await collect(client.echoBidi(items({ text: "1" }), got))).length, 1);
    assertHeaderAndTrailer(got, "echoBidi");
  });
  it("sends trailers on error", async () => {
    const err = await rejectsWith(
      collect(client.echoBidi(items({ text: "1" }, { text: "no", behavior: Behavior.FAIL, errorCode: Code.Unauthenticated }), recordingOptions())),
      Code.Unauthenticated,
      /^no$/,
    );
    assertErrorTrailer(err, "echoBidi");
  });
  it("sends a ConnectError's details, read by Connect and grpc-js", async () => {
    const request = { text: "why", behavior: Behavior.FAIL, errorCode: Code.AlreadyExists };
    assertDetail(await rejectsWith(collect(client.echoBidi(items(request))), Code.AlreadyExists, /^why$/), EchoBidiRequestSchema, request);
    await assertRawDetail("EchoBidi", EchoBidiRequestSchema, request, Code.AlreadyExists);
  });
  it("refuses a call in the interceptor: its status and trailer, and no handler", async () => {
    const before = probe.started.get("echoBidi");
    const err = await rejectsWith(collect(client.echoBidi(items({ text: "1" }), { headers: { [REFUSE]: "1" } })), Code.PermissionDenied, /^refused by the interceptor$/);
    assert.equal(err.metadata.get("x-refused-by"), "interceptor");
    assert.equal(probe.started.get("echoBidi"), before);
  });
  it("fails with the request feed's error, not the CANCELLED that ends the call", async () => {
    const got: string[] = [];
    await rejectsWith(
      (async () => {
        for await (const m of client.echoBidi(brokenFeed({ text: "first" }, () => got.length > 0))) got.push(m.text);
      })(),
      Code.Unknown,
      /^feed broke$/,
    );
    assert.deepEqual(got, ["first"]);
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
      services: [serviceRegistration(EchoService, createEchoService(createEchoProbe()))],
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

describe("a malformed response", () => {
  // A server whose answers do not decode: every kind fails with INTERNAL and one message shape,
  // after delivering what did decode.
  let broken: RunningGrpcServer;
  let brokenTransport: GrpcJsTransport;
  let brokenClient: Client<typeof EchoService>;
  beforeAll(async () => {
    broken = await startGrpcServer({
      listen: parseHostPort("127.0.0.1:0"),
      logger: createLogger("test", "silent"),
      services: [serviceRegistration(EchoService, createMalformedEchoService())],
    });
    brokenTransport = createGrpcJsTransport(broken.address);
    brokenClient = createClient(EchoService, brokenTransport);
  });
  afterAll(async () => {
    brokenTransport.close();
    await broken.close(500);
  });
  const message = (type: string, method: string) => `malformed fleetlet.testing.v1.${type} from ${SERVICE}/${method}: premature EOF`;

  it("is INTERNAL for a unary call", async () => {
    const err = await rejectsWith(brokenClient.echo({}), Code.Internal);
    assert.equal(err.rawMessage, message("EchoResponse", "Echo"));
  });
  it("is INTERNAL for a server stream, after the messages that decoded", async () => {
    const got: string[] = [];
    const err = await rejectsWith(
      (async () => {
        for await (const m of brokenClient.echoServerStream({})) got.push(m.text);
      })(),
      Code.Internal,
    );
    assert.equal(err.rawMessage, message("EchoServerStreamResponse", "EchoServerStream"));
    assert.deepEqual(got, ["fine"]);
  });
  it("is INTERNAL for a client stream", async () => {
    const err = await rejectsWith(brokenClient.echoClientStream(items({ text: "a" })), Code.Internal);
    assert.equal(err.rawMessage, message("EchoClientStreamResponse", "EchoClientStream"));
  });
  it("is INTERNAL for a bidi stream", async () => {
    const err = await rejectsWith(collect(brokenClient.echoBidi(items({ text: "a" }))), Code.Internal);
    assert.equal(err.rawMessage, message("EchoBidiResponse", "EchoBidi"));
  });
});
