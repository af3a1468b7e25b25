import { afterAll, beforeAll, describe, it, vi } from "vitest";
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { TLSSocket } from "node:tls";
import * as grpc from "@grpc/grpc-js";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { Health } from "../../../gen/grpc/health/v1/health_pb.js";
import { startGrpcServer, type RunningGrpcServer } from "../../../lib/rpc/grpc-server.js";
import type { CallTransportSecurity } from "../../../lib/rpc/tls-peer-identity.js";
import { CALLER_TRANSPORT } from "../../../lib/rpc/tls-peer-identity.js";
import { channelTlsCredentials, CheckedCertificateFiles } from "../../../lib/rpc/tls-credentials.js";
import { isLoopbackHost, plaintextBindProblem } from "../../../lib/rpc/tls-plaintext-bind.js";
import { createCa, issueClientCertificate, issueServerCertificate } from "../../../lib/tls-certificate-issuer.js";
import { createGrpcJsTransport } from "../../../lib/rpc/grpc-transport.js";
import { parseHostPort } from "../../../lib/listen-address.js";
import { createLogger } from "../../../lib/rpc/logger.js";
import { tempDir } from "../../helpers/temp-dir.js";

const dir = tempDir("tls-unit");
const d = (...p: string[]) => join(dir.path, ...p);
let server: RunningGrpcServer;
const seen: CallTransportSecurity[] = [];
const seenInContext: CallTransportSecurity[] = [];

beforeAll(async () => {
  await createCa(d("ca"));
  await issueServerCertificate({ caDir: d("ca"), outDir: d("h"), name: "localhost", hosts: ["127.0.0.1", "localhost"] });
  await issueClientCertificate({ caDir: d("ca"), outDir: d("u"), name: "alice", role: "operator" });
  server = await startGrpcServer({
    listen: parseHostPort("127.0.0.1:0"),
    services: [],
    logger: createLogger("test", "silent"),
    tls: { certFile: d("h", "localhost.crt"), keyFile: d("h", "localhost.key"), caFile: d("ca", "ca.crt") },
    interceptors: [
      (_method, context, _peer, transport) => {
        seen.push(transport);
        seenInContext.push(context.values.get(CALLER_TRANSPORT));
      },
    ],
  });
});

afterAll(async () => {
  await server.close(100);
  dir.remove();
});

describe("TLS listener and the caller's certificate identity", () => {
  it("interceptors get the verified client certificate: CN, OU (role), SANs, serial", async () => {
    const creds = channelTlsCredentials({ caFile: d("ca", "ca.crt"), certFile: d("u", "alice.crt"), keyFile: d("u", "alice.key") });
    const transport = createGrpcJsTransport(server.address, { credentials: creds });
    try {
      const r = await createClient(Health, transport).check({ service: "" }, { timeoutMs: 5000 });
      assert.equal(r.status, 1);
    } finally {
      transport.close();
    }
    const serial = new (await import("node:crypto")).X509Certificate(readFileSync(d("u", "alice.crt"))).serialNumber;
    assert.deepEqual(seen.at(-1), { tls: true, peerCertificate: { commonName: "alice", organizationalUnits: ["operator"], subjectAltNames: [], serialNumber: serial } });
    assert.deepEqual(seenInContext.at(-1), seen.at(-1));
  });

  it("a connection's certificate is read once, not per call; another connection's is its own", async () => {
    await issueClientCertificate({ caDir: d("ca"), outDir: d("u"), name: "bob", role: "viewer" });
    const reads = vi.spyOn(TLSSocket.prototype, "getPeerCertificate");
    const as = (name: string) => createGrpcJsTransport(server.address, { credentials: channelTlsCredentials({ caFile: d("ca", "ca.crt"), certFile: d("u", `${name}.crt`), keyFile: d("u", `${name}.key`) }) });
    const alice = as("alice");
    const bob = as("bob");
    try {
      reads.mockClear();
      const before = seen.length;
      for (let i = 0; i < 20; i++) {
        await createClient(Health, alice).check({ service: "" });
        await createClient(Health, bob).check({ service: "" });
      }
      const names = seen.slice(before).map((t) => t.peerCertificate?.commonName);
      assert.deepEqual(names, Array.from({ length: 40 }, (_, i) => (i % 2 === 0 ? "alice" : "bob")));
      // Server side: once per connection (the client's own checks of the server add a few).
      assert.ok(reads.mock.calls.length <= 6, `getPeerCertificate called ${reads.mock.calls.length} times for 40 calls on 2 connections`);
    } finally {
      reads.mockRestore();
      alice.close();
      bob.close();
    }
  });

  it("a server certificate's IP and DNS SANs come back without their type prefix", async () => {
    // The server's own certificate read the same way a peer's is (same Node PeerCertificate shape).
    const { transportSecurityOf } = await import("../../../lib/rpc/tls-peer-identity.js");
    const cert = new (await import("node:crypto")).X509Certificate(readFileSync(d("h", "localhost.crt")));
    const t = transportSecurityOf({
      getAuthContext: () => ({ transportSecurityType: "ssl", sslPeerCertificate: { subject: { CN: "localhost" }, subjectaltname: cert.subjectAltName, serialNumber: cert.serialNumber } as never }),
    });
    assert.deepEqual(t.peerCertificate?.subjectAltNames, ["127.0.0.1", "localhost"]);
  });

  it("plaintext calls are refused by a TLS listener", async () => {
    const transport = createGrpcJsTransport(server.address, { credentials: grpc.credentials.createInsecure() });
    try {
      await assert.rejects(createClient(Health, transport).check({ service: "" }, { timeoutMs: 3000 }), (e: unknown) => ConnectError.from(e).code === Code.Unavailable);
    } finally {
      transport.close();
    }
  });

  it("bad files stop the start with one line naming the file", () => {
    writeFileSync(d("junk.pem"), "not a certificate");
    assert.throws(() => new CheckedCertificateFiles({ certFile: d("junk.pem"), keyFile: d("h", "localhost.key") }), /junk\.pem with .*localhost\.key: /);
    assert.throws(() => new CheckedCertificateFiles({ certFile: d("u", "alice.crt"), keyFile: d("h", "localhost.key") }), /alice\.crt with .*localhost\.key: .*/);
    assert.throws(() => new CheckedCertificateFiles({ caFile: d("missing.pem") }), /missing\.pem: ENOENT/);
    assert.throws(() => new CheckedCertificateFiles({ certFile: d("u", "alice.crt") }), /give both --tls-cert and --tls-key/);
  });
});

describe("plaintext off loopback", () => {
  it("loopback is 127/8, ::1 and localhost only", () => {
    for (const h of ["127.0.0.1", "127.0.0.3", "::1", "localhost", "::ffff:127.0.0.1"]) assert.equal(isLoopbackHost(h), true, h);
    for (const h of ["0.0.0.0", "::", "10.0.0.1", "192.168.1.2", "fleet.example", "128.0.0.1"]) assert.equal(isLoopbackHost(h), false, h);
  });

  it("is refused without --insecure and warned with it", () => {
    assert.deepEqual(plaintextBindProblem(parseHostPort("127.0.0.1:7701"), "--listen", false), {});
    const refused = plaintextBindProblem(parseHostPort("0.0.0.0:7701"), "--listen", false);
    assert.match(refused.refuse ?? "", /^--listen 0\.0\.0\.0:7701 is not a loopback address: give --tls-cert and --tls-key/);
    assert.equal(refused.warn, undefined);
    const warned = plaintextBindProblem(parseHostPort("10.1.2.3:7701"), "--listen", true);
    assert.equal(warned.refuse, undefined);
    assert.match(warned.warn ?? "", /PLAINTEXT gRPC off loopback \(--insecure\)/);
  });

  it("startGrpcServer refuses the bind before listening", async () => {
    await assert.rejects(
      startGrpcServer({ listen: parseHostPort("0.0.0.0:0"), services: [], logger: createLogger("test", "silent") }),
      /is not a loopback address/,
    );
  });
});
