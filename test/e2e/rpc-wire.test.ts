import { afterAll, beforeAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import * as grpc from "@grpc/grpc-js";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { base64Decode } from "@bufbuild/protobuf/wire";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { Behavior, EchoRequestSchema, EchoService } from "../../gen/fleetlet/testing/v1/echo_pb.js";
import {
  ServerReflectionRequestSchema as RequestV1,
  ServerReflectionResponseSchema as ResponseV1,
} from "../../gen/grpc/reflection/v1/reflection_pb.js";
import {
  ServerReflectionRequestSchema as RequestV1alpha,
  ServerReflectionResponseSchema as ResponseV1alpha,
} from "../../gen/grpc/reflection/v1alpha/reflection_pb.js";
import { startGrpcServer, type RunningGrpcServer } from "../../lib/rpc/grpc-server.js";
import { serviceRegistration } from "../../lib/rpc/service-adapter.js";
import { createGrpcJsTransport } from "../../lib/rpc/grpc-transport.js";
import { parseHostPort } from "../../lib/listen-address.js";
import { createLogger } from "../../lib/rpc/logger.js";
import { mustRunInCi } from "../helpers/root.js";
import { repoPath } from "../helpers/paths.js";
import { pythonGrpcCall, pythonGrpcSkipReason, type PythonResult } from "../helpers/python-grpc.js";
import { createEchoProbe, createEchoService } from "../lib/rpc/echo-service.js";

// Clients that are not ours check what our gRPC server puts on the wire: error details in
// grpc-status-details-bin, and server reflection v1 and v1alpha. The server runs in this process
// (the same startGrpcServer the daemons use, serving the test EchoService); the clients are
// grpc-js, our Connect transport, the buf CLI (Go, connect-go) and Python's grpcio (C core).

const BUF = repoPath("node_modules", ".bin", "buf");
const SERVICE = "fleetlet.testing.v1.EchoService";
const SERVICES = [
  SERVICE,
  "grpc.health.v1.Health",
  "grpc.reflection.v1.ServerReflection",
  "grpc.reflection.v1alpha.ServerReflection",
];

const pythonSkip = mustRunInCi(pythonGrpcSkipReason());

/** A call from Python's grpcio (test/helpers/python-grpc.ts), plaintext to the server here. */
function python(kind: "unary" | "stream", method: string, requests: Uint8Array[]): Promise<PythonResult> {
  return pythonGrpcCall(server.address, kind, method, requests);
}

function bufCurl(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((res) => {
    execFile(BUF, ["curl", "--protocol", "grpc", "--http2-prior-knowledge", ...args], { timeout: 30_000 }, (err, stdout, stderr) => {
      res({ code: err ? (typeof err.code === "number" ? err.code : 1) : 0, stdout, stderr });
    });
  });
}

let server: RunningGrpcServer;

beforeAll(async () => {
  server = await startGrpcServer({
    listen: parseHostPort("127.0.0.1:0"),
    logger: createLogger("rpc-wire", "silent"),
    services: [serviceRegistration(EchoService, createEchoService(createEchoProbe()))],
  });
});

afterAll(async () => {
  await server.close(1000);
});

describe("error details (grpc-status-details-bin) from a handler's ConnectError", () => {
  // The handler fails with FAILED_PRECONDITION "why" and the request as its one detail.
  const request = create(EchoRequestSchema, { text: "why", behavior: Behavior.FAIL, errorCode: Code.FailedPrecondition });
  const requestBytes = toBinary(EchoRequestSchema, request);
  const echo = `/${SERVICE}/Echo`;

  it("are seen by our Connect client (grpc-transport)", async () => {
    const transport = createGrpcJsTransport(server.address);
    try {
      const err = await createClient(EchoService, transport).echo(request).then(
        () => assert.fail("expected the call to fail"),
        (e: unknown) => e,
      );
      assert.ok(err instanceof ConnectError);
      assert.deepEqual([err.code, err.rawMessage], [Code.FailedPrecondition, "why"]);
      assert.deepEqual(err.findDetails(EchoRequestSchema), [request]);
    } finally {
      transport.close();
    }
  });

  it("are seen by a grpc-js client, as a google.rpc.Status", async () => {
    const client = new grpc.Client(server.address, grpc.credentials.createInsecure());
    try {
      const err = await new Promise<grpc.ServiceError>((res) => {
        client.makeUnaryRequest(echo, (b: Buffer) => b, (b: Buffer) => b, Buffer.from(requestBytes), (e) => res(e!));
      });
      assert.deepEqual([err.code, err.details], [grpc.status.FAILED_PRECONDITION, "why"]);
      const [details] = err.metadata.get("grpc-status-details-bin");
      assert.ok(Buffer.isBuffer(details), "grpc-status-details-bin");
      assert.deepEqual(details, expectedStatusBytes(requestBytes));
    } finally {
      client.close();
    }
  });

  it("are seen by buf curl", async () => {
    const r = await bufCurl(["-d", JSON.stringify({ text: "why", behavior: "BEHAVIOR_FAIL", errorCode: Code.FailedPrecondition }), `http://${server.address}${echo}`]);
    assert.notEqual(r.code, 0, "the call failed");
    // buf curl prints a failed call's status as JSON on stderr.
    const printed = JSON.parse(r.stderr) as { code: string; message: string; details?: { type: string; value: string }[] };
    assert.equal(printed.code, "failed_precondition");
    assert.equal(printed.message, "why");
    assert.equal(printed.details?.length, 1, r.stdout);
    assert.equal(printed.details?.[0]?.type, "fleetlet.testing.v1.EchoRequest");
    assert.deepEqual(fromBinary(EchoRequestSchema, base64Decode(printed.details?.[0]?.value ?? "")), request);
  });

  it.skipIf(pythonSkip)("are seen by Python's grpcio", async () => {
    const r = await python("unary", echo, [requestBytes]);
    assert.equal(r.status, "FAILED_PRECONDITION why");
    assert.deepEqual(r.binaryTrailers.get("grpc-status-details-bin"), Buffer.from(expectedStatusBytes(requestBytes)));
  });
});

/**
 * google.rpc.Status{code: 9, message: "why", details: [Any{type_url, value}]} encoded by hand
 * from google/rpc/status.proto and google/protobuf/any.proto, so the wire form is checked
 * against the spec rather than against the encoder that wrote it.
 */
function expectedStatusBytes(detail: Uint8Array): Buffer {
  const field = (no: number, bytes: Uint8Array) => Buffer.concat([Buffer.from([(no << 3) | 2, bytes.length]), bytes]);
  const typeUrl = Buffer.from("type.googleapis.com/fleetlet.testing.v1.EchoRequest");
  const any = Buffer.concat([field(1, typeUrl), field(2, detail)]);
  return Buffer.concat([Buffer.from([0x08, Code.FailedPrecondition]), field(2, Buffer.from("why")), field(3, any)]);
}

describe("server reflection", () => {
  for (const protocol of ["grpc-v1", "grpc-v1alpha"]) {
    it(`${protocol}: buf curl lists the services`, async () => {
      const r = await bufCurl(["--reflect-protocol", protocol, "--list-services", `http://${server.address}`]);
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(r.stdout.trim().split("\n").sort(), SERVICES);
    });
    it(`${protocol}: buf curl resolves a method's schema and calls it with JSON`, async () => {
      const r = await bufCurl(["--reflect-protocol", protocol, "-d", '{"text":"hi"}', `http://${server.address}/${SERVICE}/Echo`]);
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(JSON.parse(r.stdout), { text: "hi" });
    });
  }

  // One stream per version, three questions each: the answers come back in order, each naming
  // the request it answers.
  for (const [version, Request, Response] of [
    ["v1", RequestV1, ResponseV1],
    ["v1alpha", RequestV1alpha, ResponseV1alpha],
  ] as const) {
    it.skipIf(pythonSkip)(`${version}: Python's grpcio lists services, fetches a file, and is told what is missing`, async () => {
      const asks = [
        create(Request, { host: "h", messageRequest: { case: "listServices", value: "" } }),
        create(Request, { messageRequest: { case: "fileContainingSymbol", value: `${SERVICE}.Echo` } }),
        create(Request, { messageRequest: { case: "fileByFilename", value: "nope.proto" } }),
      ];
      const r = await python("stream", `/grpc.reflection.${version}.ServerReflection/ServerReflectionInfo`, asks.map((a) => toBinary(Request, a as never)));
      // grpc-js sends grpc-message "OK" with a success.
      assert.equal(r.status, "OK OK");
      const answers = r.messages.map((m) => fromBinary(Response, m));
      assert.equal(answers.length, 3);
      const [list, file, missing] = answers;

      assert.equal(list?.validHost, "h");
      assert.equal(list?.messageResponse.case, "listServicesResponse");
      assert.deepEqual(list?.messageResponse.value && "service" in list.messageResponse.value ? list.messageResponse.value.service.map((s) => s.name) : [], SERVICES);

      assert.deepEqual(file?.originalRequest?.messageRequest, { case: "fileContainingSymbol", value: `${SERVICE}.Echo` });
      assert.equal(file?.messageResponse.case, "fileDescriptorResponse");
      const protos = file?.messageResponse.case === "fileDescriptorResponse" ? file.messageResponse.value.fileDescriptorProto : [];
      assert.deepEqual(protos.map((p) => fromBinary(FileDescriptorProtoSchema, p).name), ["fleetlet/testing/v1/echo.proto"]);

      assert.equal(missing?.messageResponse.case, "errorResponse");
      const error = missing?.messageResponse.case === "errorResponse" ? missing.messageResponse.value : undefined;
      assert.deepEqual([error?.errorCode, error?.errorMessage], [grpc.status.NOT_FOUND, "file nope.proto not found"]);
    });
  }
});
