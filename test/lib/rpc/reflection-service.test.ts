import { afterAll, beforeAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import { create, fromBinary, toBinary, type DescService } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { createClient } from "@connectrpc/connect";
import { InventoryService } from "../../../gen/fleetlet/agent/v1/inventory_pb.js";
import { EchoService } from "../../../gen/fleetlet/testing/v1/echo_pb.js";
import {
  ExtensionRequestSchema,
  ServerReflection as ReflectionV1,
  ServerReflectionRequestSchema as RequestV1,
  ServerReflectionResponseSchema as ResponseV1,
  type ServerReflectionRequest,
  type ServerReflectionResponse,
} from "../../../gen/grpc/reflection/v1/reflection_pb.js";
import {
  ServerReflection as ReflectionV1alpha,
  ServerReflectionRequestSchema as RequestV1alpha,
  ServerReflectionResponseSchema as ResponseV1alpha,
} from "../../../gen/grpc/reflection/v1alpha/reflection_pb.js";
import { startGrpcServer, type RunningGrpcServer } from "../../../lib/rpc/grpc-server.js";
import { serviceRegistration } from "../../../lib/rpc/service-adapter.js";
import { createGrpcJsTransport, type GrpcJsTransport } from "../../../lib/rpc/grpc-transport.js";
import { parseHostPort } from "../../../lib/listen-address.js";
import { createLogger } from "../../../lib/rpc/logger.js";
import { createEchoProbe, createEchoService } from "./echo-service.js";

// Server reflection v1 and v1alpha over a real connection with our Connect client (buf curl and
// Python's grpcio ask the same questions in test/e2e/rpc-wire.test.ts). v1alpha must answer
// exactly what v1 answers: the two differ only in their package name.

let server: RunningGrpcServer;
let transport: GrpcJsTransport;

beforeAll(async () => {
  server = await startGrpcServer({
    listen: parseHostPort("127.0.0.1:0"),
    logger: createLogger("test", "silent"),
    services: [
      serviceRegistration(EchoService, createEchoService(createEchoProbe())),
      // Not implemented here: reflection only needs the descriptor, which imports three files.
      serviceRegistration(InventoryService as DescService, {}),
    ],
  });
  transport = createGrpcJsTransport(server.address);
});

afterAll(async () => {
  transport.close();
  await server.close(500);
});

type Ask = ServerReflectionRequest["messageRequest"];

const asks: Ask[] = [
  { case: "listServices", value: "" },
  { case: "fileContainingSymbol", value: "fleetlet.agent.v1.InventoryService" },
  { case: "fileByFilename", value: "fleetlet/testing/v1/echo.proto" },
  { case: "fileContainingSymbol", value: "fleetlet.testing.v1.EchoRequest.text" },
  { case: "fileContainingSymbol", value: "no.such.Symbol" },
  { case: "fileContainingExtension", value: create(ExtensionRequestSchema, { containingType: "fleetlet.testing.v1.EchoRequest", extensionNumber: 100 }) },
  { case: "allExtensionNumbersOfType", value: "fleetlet.testing.v1.EchoRequest" },
];

async function askV1(messageRequest: Ask[]): Promise<ServerReflectionResponse[]> {
  const out: ServerReflectionResponse[] = [];
  const requests = messageRequest.map((m) => create(RequestV1, { host: "h", messageRequest: m }));
  for await (const r of createClient(ReflectionV1, transport).serverReflectionInfo(iterate(requests))) out.push(r);
  return out;
}

/** The same questions through v1alpha, answers read back as v1 (same wire format). */
async function askV1alpha(messageRequest: Ask[]): Promise<ServerReflectionResponse[]> {
  const out: ServerReflectionResponse[] = [];
  const requests = messageRequest.map((m) => fromBinary(RequestV1alpha, toBinary(RequestV1, create(RequestV1, { host: "h", messageRequest: m }))));
  for await (const r of createClient(ReflectionV1alpha, transport).serverReflectionInfo(iterate(requests))) {
    out.push(fromBinary(ResponseV1, toBinary(ResponseV1alpha, r)));
  }
  return out;
}

async function* iterate<T>(xs: T[]): AsyncIterable<T> {
  for (const x of xs) yield x;
}

function fileNames(r: ServerReflectionResponse | undefined): string[] {
  assert.equal(r?.messageResponse.case, "fileDescriptorResponse");
  return r.messageResponse.value.fileDescriptorProto.map((p) => fromBinary(FileDescriptorProtoSchema, p).name);
}

function errorOf(r: ServerReflectionResponse | undefined): [number, string] {
  assert.equal(r?.messageResponse.case, "errorResponse");
  return [r.messageResponse.value.errorCode, r.messageResponse.value.errorMessage];
}

describe.each([
  ["v1", askV1],
  ["v1alpha", askV1alpha],
])("reflection %s", (_version, ask) => {
  it("lists the served services, health and reflection included, sorted", async () => {
    const [list] = await ask([asks[0]!]);
    assert.equal(list?.messageResponse.case, "listServicesResponse");
    assert.deepEqual(
      list.messageResponse.value.service.map((s) => s.name),
      [
        "fleetlet.agent.v1.InventoryService",
        "fleetlet.testing.v1.EchoService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
      ],
    );
    assert.equal(list.validHost, "h");
    assert.deepEqual(list.originalRequest?.messageRequest, asks[0]);
  });
  it("answers a symbol with its file first, then every import once", async () => {
    const [file] = await ask([asks[1]!]);
    const names = fileNames(file);
    assert.equal(names[0], "fleetlet/agent/v1/inventory.proto");
    assert.deepEqual(names.slice(1).sort(), ["fleetlet/agent/v1/runtime.proto", "fleetlet/agent/v1/standby.proto", "google/protobuf/duration.proto", "google/protobuf/timestamp.proto"]);
  });
  it("answers a file name and a field's symbol with the file", async () => {
    const [byName, byField] = await ask([asks[2]!, asks[3]!]);
    assert.deepEqual(fileNames(byName), ["fleetlet/testing/v1/echo.proto"]);
    assert.deepEqual(fileNames(byField), ["fleetlet/testing/v1/echo.proto"]);
  });
  it("answers unknown symbols and extensions with NOT_FOUND in the stream, which goes on", async () => {
    const [symbol, extension, numbers] = await ask([asks[4]!, asks[5]!, asks[6]!]);
    assert.deepEqual(errorOf(symbol), [5, "symbol no.such.Symbol not found"]);
    assert.deepEqual(errorOf(extension), [5, "extension fleetlet.testing.v1.EchoRequest#100 not found"]);
    assert.equal(numbers?.messageResponse.case, "allExtensionNumbersResponse");
    assert.deepEqual(numbers.messageResponse.value.extensionNumber, []);
  });
});

describe("reflection v1alpha", () => {
  it("answers byte for byte what v1 answers", async () => {
    const v1 = await askV1(asks);
    const v1alpha = await askV1alpha(asks);
    assert.equal(v1alpha.length, asks.length);
    assert.deepEqual(v1alpha.map((r) => toBinary(ResponseV1, r)), v1.map((r) => toBinary(ResponseV1, r)));
  });
});
