import { afterAll, beforeAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { Writable } from "node:stream";
import * as grpc from "@grpc/grpc-js";
import type { DescMethod, DescService } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { pino } from "pino";
import { bearerTokenResolver } from "../../../../lib/rpc/authz/authorize.js";
import { requiredRole, roleIncludes, ROLES, type Role } from "../../../../lib/rpc/authz/role-table.js";
import { hashToken, TokensFile } from "../../../../lib/rpc/authz/tokens-file.js";
import { parseHostPort } from "../../../../lib/listen-address.js";
import { startGrpcServer, type RunningGrpcServer } from "../../../../lib/rpc/grpc-server.js";
import type { ServiceRegistration } from "../../../../lib/rpc/service-adapter.js";
import { tempDir } from "../../../helpers/temp-dir.js";
import { generatedServices, methodPath } from "./generated-services.js";

// Every handler answers ABORTED "reached": a call that gets it passed authorisation.
function reachedImpl(service: DescService): ServiceRegistration {
  const impl: Record<string, unknown> = {};
  for (const m of service.methods) {
    impl[m.localName] =
      m.methodKind === "unary" || m.methodKind === "client_streaming"
        ? async () => {
            throw new ConnectError("reached", Code.Aborted);
          }
        : async function* () {
            yield* [];
            throw new ConnectError("reached", Code.Aborted);
          };
  }
  return { service, impl } as unknown as ServiceRegistration;
}

const BUILT_IN = new Set(["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"]);
const TOKENS: Record<Role, string> = { viewer: "viewer-secret-1", operator: "operator-secret-2", admin: "admin-secret-3", aggregator: "aggregator-secret-4" };

/** One call with an empty request; resolves with the status code (and message). */
function callStatus(client: grpc.Client, method: DescMethod, token: string | undefined): Promise<grpc.StatusObject> {
  const path = `/${method.parent.typeName}/${method.name}`;
  const md = new grpc.Metadata();
  if (token) md.set("authorization", `Bearer ${token}`);
  const id = (b: Buffer) => b;
  const options = { deadline: Date.now() + 5000 };
  return new Promise((resolve) => {
    let call: grpc.ClientUnaryCall | grpc.ClientReadableStream<Buffer> | grpc.ClientWritableStream<Buffer> | grpc.ClientDuplexStream<Buffer, Buffer>;
    switch (method.methodKind) {
      case "unary":
        call = client.makeUnaryRequest(path, id, id, Buffer.alloc(0), md, options, () => {});
        break;
      case "server_streaming":
        call = client.makeServerStreamRequest(path, id, id, Buffer.alloc(0), md, options);
        // A first message means the call passed authorisation (Health/Watch would stay open).
        (call as grpc.ClientReadableStream<Buffer>).on("data", () => call.cancel()).on("error", () => {});
        break;
      case "client_streaming":
        call = client.makeClientStreamRequest(path, id, id, md, options, () => {});
        (call as grpc.ClientWritableStream<Buffer>).end();
        break;
      default:
        call = client.makeBidiStreamRequest(path, id, id, md, options);
        (call as grpc.ClientDuplexStream<Buffer, Buffer>).on("data", () => call.cancel()).on("error", () => {});
        (call as grpc.ClientDuplexStream<Buffer, Buffer>).end();
    }
    call.on("status", resolve);
  });
}

describe("authorisation matrix (every generated method × no identity / viewer / operator / admin)", () => {
  const dir = tempDir("authz");
  const auditLines: Record<string, unknown>[] = [];
  let server: RunningGrpcServer;
  let tokens: TokensFile;
  let client: grpc.Client;
  let services: DescService[];

  beforeAll(async () => {
    services = await generatedServices();
    const file = join(dir.path, "tokens");
    writeFileSync(file, ROLES.map((r) => `${r}-user ${r} ${hashToken(TOKENS[r])}`).join("\n"));
    const sink = new Writable({
      write(chunk, _enc, done) {
        for (const line of String(chunk).split("\n")) if (line) auditLines.push(JSON.parse(line) as Record<string, unknown>);
        done();
      },
    });
    const logger = pino({ level: "info" }, sink);
    tokens = new TokensFile(file, logger);
    server = await startGrpcServer({
      listen: parseHostPort("127.0.0.1:0"),
      logger,
      services: services.filter((s) => !BUILT_IN.has(s.typeName)).map(reachedImpl),
      identify: [bearerTokenResolver(tokens)],
    });
    client = new grpc.Client(server.address, grpc.credentials.createInsecure());
  });

  afterAll(async () => {
    client?.close();
    tokens?.close();
    await server?.close(500);
    dir.remove();
  });

  it("refuses or lets through exactly as the role table says", async () => {
    const failures: string[] = [];
    let checked = 0;
    for (const service of services) {
      for (const method of service.methods) {
        const path = methodPath(service, method.name);
        const needed = requiredRole(path)!;
        const anonymous = await callStatus(client, method, undefined);
        if (anonymous.code !== grpc.status.UNAUTHENTICATED) failures.push(`${path} no identity: ${anonymous.code} ${anonymous.details}`);
        for (const role of ROLES) {
          const status = await callStatus(client, method, TOKENS[role]);
          checked++;
          if (roleIncludes(role, needed)) {
            const passed = BUILT_IN.has(service.typeName)
              ? status.code !== grpc.status.UNAUTHENTICATED && status.code !== grpc.status.PERMISSION_DENIED
              : status.code === grpc.status.ABORTED && status.details === "reached";
            if (!passed) failures.push(`${path} as ${role}: expected to pass authz, got ${status.code} ${status.details}`);
          } else if (status.code !== grpc.status.PERMISSION_DENIED || !status.details.includes(`needs role ${needed}`)) {
            failures.push(`${path} as ${role}: expected PERMISSION_DENIED naming ${needed}, got ${status.code} ${status.details}`);
          }
        }
      }
    }
    assert.deepEqual(failures, []);
    assert.ok(checked > 150, `matrix covered ${checked} method × role calls`);
  });

  it("refuses an unknown token with UNAUTHENTICATED", async () => {
    const method = services.find((s) => s.typeName === "fleetlet.agent.v1.InventoryService")!.methods.find((m) => m.name === "ListInstances")!;
    const status = await callStatus(client, method, "not-a-real-token");
    assert.equal(status.code, grpc.status.UNAUTHENTICATED);
    assert.match(status.details, /not recognised/);
  });

  it("audits refused calls and mutating calls with identity, method, targets and code", async () => {
    const inventory = services.find((s) => s.typeName === "fleetlet.agent.v1.InventoryService")!;
    const register = inventory.methods.find((m) => m.name === "SetInstanceState")!;
    auditLines.length = 0;
    // A mutating call by an operator with a target id, and one refused for a viewer.
    const md = new grpc.Metadata();
    md.set("authorization", `Bearer ${TOKENS.operator}`);
    const { toBinary, create } = await import("@bufbuild/protobuf");
    const request = Buffer.from(toBinary(register.input, create(register.input, { instanceId: "vm-7" } as never)));
    await new Promise<void>((resolve) => {
      client.makeUnaryRequest(`/${inventory.typeName}/SetInstanceState`, (b: Buffer) => b, (b: Buffer) => b, request, md, () => resolve());
    });
    await callStatus(client, register, TOKENS.viewer);
    const audits = auditLines.filter((l) => l.audit === true);
    const done = audits.find((l) => l.identity === "operator-user");
    assert.ok(done, JSON.stringify(audits));
    assert.equal(done.method, "/fleetlet.agent.v1.InventoryService/SetInstanceState");
    assert.equal(done.instance_id, "vm-7");
    assert.equal(done.code, "ABORTED");
    assert.equal(done.via, "token");
    assert.ok(typeof done.time === "number");
    const refused = audits.find((l) => l.identity === "viewer-user");
    assert.ok(refused, JSON.stringify(audits));
    assert.equal(refused.code, "PERMISSION_DENIED");
    assert.equal(refused.method, "/fleetlet.agent.v1.InventoryService/SetInstanceState");
    // Viewer reads are not audited.
    auditLines.length = 0;
    await callStatus(client, inventory.methods.find((m) => m.name === "ListInstances")!, TOKENS.viewer);
    assert.equal(auditLines.filter((l) => l.audit === true).length, 0);
  });
});
