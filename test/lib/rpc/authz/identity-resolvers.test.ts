import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { Code, ConnectError, createHandlerContext } from "@connectrpc/connect";
import { InventoryService } from "../../../../gen/fleetlet/agent/v1/inventory_pb.js";
import { bearerTokenResolver, clientCertificateResolver, daemonIdentityResolvers } from "../../../../lib/rpc/authz/authorize.js";
import type { TokensFile } from "../../../../lib/rpc/authz/tokens-file.js";
import type { CallTransportSecurity } from "../../../../lib/rpc/tls-peer-identity.js";

function contextWith(headers: Record<string, string> = {}) {
  return createHandlerContext({
    service: InventoryService,
    method: InventoryService.method.listInstances,
    protocolName: "grpc",
    requestMethod: "POST",
    url: "/fleetlet.agent.v1.InventoryService/ListInstances",
    requestHeader: headers,
  });
}

function certificate(commonName: string, organizationalUnits: string[]): CallTransportSecurity {
  return { tls: true, peerCertificate: { commonName, organizationalUnits, subjectAltNames: [], serialNumber: "01" } };
}

const refusedWith = (code: Code, text: RegExp) => (e: unknown) => e instanceof ConnectError && e.code === code && text.test(e.rawMessage);

describe("identity resolvers", () => {
  it("client certificate: CN is the name, OU the role; OU=aggregator is the aggregator role; no role OU is refused", () => {
    const resolve = clientCertificateResolver();
    const plain: CallTransportSecurity = { tls: false, peerCertificate: undefined };
    assert.equal(resolve(contextWith(), "p", plain), undefined);
    assert.deepEqual(resolve(contextWith(), "p", certificate("alice", ["operator"])), { name: "alice", via: "certificate", role: "operator" });
    assert.deepEqual(resolve(contextWith(), "p", certificate("aggregator", ["aggregator"])), { name: "aggregator", via: "certificate", role: "aggregator" });
    assert.throws(() => resolve(contextWith(), "p", certificate("mallory", ["sales"])), refusedWith(Code.Unauthenticated, /mallory carries no role/));
  });

  it("bearer token: no header is no identity; a malformed header or unknown token is UNAUTHENTICATED", () => {
    const tokens = { identify: (t: string) => (t === "good" ? { name: "ci", via: "token" as const, role: "viewer" as const } : undefined) } as unknown as TokensFile;
    const resolve = bearerTokenResolver(tokens);
    const plain: CallTransportSecurity = { tls: false, peerCertificate: undefined };
    assert.equal(resolve(contextWith(), "p", plain), undefined);
    assert.deepEqual(resolve(contextWith({ authorization: "Bearer good" }), "p", plain), { name: "ci", via: "token", role: "viewer" });
    assert.throws(() => resolve(contextWith({ authorization: "Basic Zm9v" }), "p", plain), refusedWith(Code.Unauthenticated, /not 'Bearer <token>'/));
    assert.throws(() => resolve(contextWith({ authorization: "Bearer bad" }), "p", plain), refusedWith(Code.Unauthenticated, /not recognised/));
  });

  it("a daemon with both asks the token first: it names the caller over a shared certificate, and a bad one is not replaced by the certificate", () => {
    const tokens = { identify: (t: string) => (t === "good" ? { name: "root", via: "token" as const, role: "admin" as const } : undefined) } as unknown as TokensFile;
    const resolvers = daemonIdentityResolvers({ tokens, clientCertificates: true });
    const first = (headers: Record<string, string>) => {
      for (const r of resolvers) {
        const identity = r(contextWith(headers), "p", certificate("alice", ["viewer"]));
        if (identity) return identity;
      }
      return undefined;
    };
    assert.deepEqual(first({ authorization: "Bearer good" }), { name: "root", via: "token", role: "admin" });
    assert.deepEqual(first({}), { name: "alice", via: "certificate", role: "viewer" });
    assert.throws(() => first({ authorization: "Bearer bad" }), refusedWith(Code.Unauthenticated, /not recognised/));
  });
});
