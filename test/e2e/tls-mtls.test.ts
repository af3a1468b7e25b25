import { afterAll, beforeAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { InventoryService } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { ConnectionState, FleetService, HostSyncState } from "../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { createGrpcJsTransport } from "../../lib/rpc/grpc-transport.js";
import { FLEETLET_BIN, runFleetlet, startDaemon, type DaemonProcess } from "../helpers/daemon-process.js";
import { repoPath } from "../helpers/paths.js";
import { tempDir } from "../helpers/temp-dir.js";
import { until } from "../helpers/until.js";
import { issueExpiredClientCertificate, servedCertificateSerial } from "../helpers/test-certificates.js";

// Every certificate comes from `fleetlet certs`; the agents listen on 127.0.0.2 / 127.0.0.3
// (loopback addresses of their own, so an IP SAN can name one and not the other).

const dir = tempDir("tls");
const d = (...p: string[]) => join(dir.path, ...p);
let agent: DaemonProcess;
let impostor: DaemonProcess;
let aggregator: DaemonProcess;

async function fleetlet(...args: string[]): Promise<void> {
  const r = await runFleetlet(args);
  assert.equal(r.code, 0, `fleetlet ${args.join(" ")}: ${r.stderr}`);
}

function tlsClient(address: string, files: { cert?: string; key?: string; ca?: string }) {
  const creds = grpc.credentials.createSsl(
    readFileSync(files.ca ?? d("ca", "ca.crt")),
    files.key ? readFileSync(files.key) : null,
    files.cert ? readFileSync(files.cert) : null,
  );
  const transport = createGrpcJsTransport(address, { credentials: creds });
  return { inventory: createClient(InventoryService, transport), close: () => transport.close() };
}

async function listOnce(address: string, files: { cert?: string; key?: string; ca?: string }): Promise<Code | "OK"> {
  const c = tlsClient(address, files);
  try {
    await c.inventory.listInstances({}, { timeoutMs: 5000 });
    return "OK";
  } catch (e) {
    return ConnectError.from(e).code;
  } finally {
    c.close();
  }
}

/** The serial of the certificate a fresh TLS connection is shown. */
const servedSerial = (address: string) => servedCertificateSerial(address, { ca: d("ca", "ca.crt"), cert: d("users", "alice.crt"), key: d("users", "alice.key") });

const tlsFlags = (name: string) => ["--tls-cert", d("hosts", `${name}.crt`), "--tls-key", d("hosts", `${name}.key`), "--tls-ca", d("ca", "ca.crt")];

beforeAll(async () => {
  await fleetlet("certs", "ca", "--out", d("ca"));
  await fleetlet("certs", "ca", "--out", d("other-ca"));
  await fleetlet("certs", "server", "--ca-dir", d("ca"), "--out", d("hosts"), "--name", "agent1", "--host", "127.0.0.2");
  await fleetlet("certs", "client", "--ca-dir", d("ca"), "--out", d("users"), "--name", "aggregator", "--role", "aggregator");
  await fleetlet("certs", "client", "--ca-dir", d("ca"), "--out", d("users"), "--name", "alice", "--role", "viewer");
  await fleetlet("certs", "client", "--ca-dir", d("other-ca"), "--out", d("other-users"), "--name", "mallory", "--role", "admin");
  issueExpiredClientCertificate(d("ca"), dir.path, "expired");
  const common = ["--metrics-listen", "off", "--runtime", "none"];
  agent = await startDaemon(["agent", "--listen", "127.0.0.2:0", ...tlsFlags("agent1"), "--state-dir", d("a1-state"), ...common]);
  // agent1's certificate and key, stolen and served from another address.
  impostor = await startDaemon(["agent", "--listen", "127.0.0.3:0", ...tlsFlags("agent1"), "--state-dir", d("a2-state"), ...common]);
  aggregator = await startDaemon([
    "aggregator", "--listen", "127.0.0.1:0", "--state-dir", d("agg-state"), "--metrics-listen", "off",
    "--hosts", `a1=${agent.address},a2=${impostor.address}`,
    "--agent-tls-ca", d("ca", "ca.crt"), "--agent-tls-cert", d("users", "aggregator.crt"), "--agent-tls-key", d("users", "aggregator.key"),
  ]);
}, 60_000);

afterAll(async () => {
  await Promise.all([agent?.stop(), impostor?.stop(), aggregator?.stop()]);
  dir.remove();
});

describe("mTLS between the aggregator and agents", () => {
  it("the aggregator follows the agent over mTLS; the stolen certificate on another address is refused", async () => {
    const transport = createGrpcJsTransport(aggregator.address);
    const fleet = createClient(FleetService, transport);
    try {
      const a1 = await until("a1 READY and SYNCED", async () => {
        const r = await fleet.listHosts({});
        const h = r.hosts.find((x) => x.name === "a1");
        return h?.connectionState === ConnectionState.READY && h.syncState === HostSyncState.SYNCED ? h : undefined;
      });
      assert.equal(a1.lastError, "");
      const a2 = (await fleet.listHosts({})).hosts.find((x) => x.name === "a2");
      assert.notEqual(a2?.connectionState, ConnectionState.READY);
      assert.notEqual(a2?.syncState, HostSyncState.SYNCED);
      // AddHost's dry run dials with the same credentials and the same SAN check.
      const probe = await fleet.addHost({ name: "a3", address: agent.address, dryRun: true });
      assert.equal(probe.probe?.code, "OK", probe.probe?.message);
      const stolen = await fleet.addHost({ name: "a4", address: impostor.address, dryRun: true });
      assert.equal(stolen.probe?.code, "UNAVAILABLE");
    } finally {
      transport.close();
    }
    // The same CA-checking client: 127.0.0.2 matches the SAN, 127.0.0.3 does not.
    const files = { cert: d("users", "alice.crt"), key: d("users", "alice.key") };
    assert.equal(await listOnce(agent.address, files), "OK");
    assert.equal(await listOnce(impostor.address, files), Code.Unavailable);
  });

  it("refuses clients without a certificate, from another CA, or expired; and plaintext", async () => {
    // The same call with a certificate of the agent's CA passes: the refusals below are the certificate's.
    assert.equal(await listOnce(agent.address, { cert: d("users", "alice.crt"), key: d("users", "alice.key") }), "OK");
    assert.equal(await listOnce(agent.address, {}), Code.Unavailable);
    assert.equal(await listOnce(agent.address, { cert: d("other-users", "mallory.crt"), key: d("other-users", "mallory.key") }), Code.Unavailable);
    assert.equal(await listOnce(agent.address, { cert: d("expired.crt"), key: d("expired.key") }), Code.Unavailable);
    const plain = createGrpcJsTransport(agent.address);
    try {
      await assert.rejects(createClient(InventoryService, plain).listInstances({}, { timeoutMs: 5000 }), (e: unknown) => ConnectError.from(e).code === Code.Unavailable);
    } finally {
      plain.close();
    }
  });

  it("the CLI calls over mTLS with --tls-* flags or FLEETLET_TLS_* env, and fails without", async () => {
    const tls = ["--tls-ca", d("ca", "ca.crt"), "--tls-cert", d("users", "alice.crt"), "--tls-key", d("users", "alice.key")];
    const ok = await runFleetlet(["get", "instances", "--agent", agent.address, "--output", "json", ...tls]);
    assert.equal(ok.code, 0, ok.stderr);
    const plain = await runFleetlet(["get", "instances", "--agent", agent.address, "--output", "json"]);
    assert.notEqual(plain.code, 0);
    const env = { ...process.env, FLEETLET_TLS_CA: d("ca", "ca.crt"), FLEETLET_TLS_CERT: d("users", "alice.crt"), FLEETLET_TLS_KEY: d("users", "alice.key") };
    const viaEnv = await new Promise<number>((res) =>
      execFile(process.execPath, [FLEETLET_BIN, "get", "instances", "--agent", agent.address, "--output", "json"], { env, timeout: 30_000 }, (err) => res(err ? 1 : 0)),
    );
    assert.equal(viaEnv, 0);
    const badFile = await runFleetlet(["get", "instances", "--agent", agent.address, "--tls-ca", d("nope.pem")]);
    assert.equal(badFile.code, 2);
    assert.match(badFile.stderr, /^fleetlet get: error: --tls-ca: ENOENT/);
  });

  it("buf curl calls the agent over mTLS", async () => {
    const out = await new Promise<{ code: number; stdout: string; stderr: string }>((res) =>
      execFile(
        repoPath("node_modules", ".bin", "buf"),
        ["curl", "--protocol", "grpc", "--cacert", d("ca", "ca.crt"), "--cert", d("users", "alice.crt"), "--key", d("users", "alice.key"), "-d", "{}", `https://${agent.address}/grpc.health.v1.Health/Check`],
        { timeout: 30_000 },
        (err, stdout, stderr) => res({ code: err ? 1 : 0, stdout, stderr }),
      ),
    );
    assert.equal(out.code, 0, out.stderr);
    assert.deepEqual(JSON.parse(out.stdout), { status: "SERVING" });
  });

  it("rotation: new server files are served to new connections while calls keep succeeding", async () => {
    const before = await servedSerial(agent.address);
    await fleetlet("certs", "server", "--ca-dir", d("ca"), "--out", d("next"), "--name", "agent1", "--host", "127.0.0.2");
    const next = new (await import("node:crypto")).X509Certificate(readFileSync(d("next", "agent1.crt"))).serialNumber;
    assert.notEqual(next, before);
    const client = tlsClient(agent.address, { cert: d("users", "alice.crt"), key: d("users", "alice.key") });
    let ok = 0;
    const failures: string[] = [];
    let stop = false;
    const loop = (async () => {
      while (!stop) {
        try {
          await client.inventory.listInstances({}, { timeoutMs: 5000 });
          ok++;
        } catch (e) {
          failures.push(ConnectError.from(e).message);
        }
      }
    })();
    try {
      await new Promise((r) => setTimeout(r, 300));
      // The key first, then the certificate: for a moment the pair on disk does not match.
      renameSync(d("next", "agent1.key"), d("hosts", "agent1.key"));
      await new Promise((r) => setTimeout(r, 1500));
      renameSync(d("next", "agent1.crt"), d("hosts", "agent1.crt"));
      const served = await until("the new certificate served", async () => ((await servedSerial(agent.address)) === next ? next : undefined), 10_000);
      assert.equal(served, next);
      await new Promise((r) => setTimeout(r, 300));
    } finally {
      stop = true;
      await loop;
      client.close();
    }
    assert.deepEqual(failures, []);
    assert.ok(ok > 10, `only ${ok} calls`);
  });

  it("a plaintext non-loopback --listen is refused at start with one line", async () => {
    const state = tempDir("tls-refuse");
    try {
      const r = await runFleetlet(["agent", "--listen", "0.0.0.0:0", "--state-dir", state.path, "--metrics-listen", "off", "--runtime", "none"]);
      assert.equal(r.code, 2);
      assert.match(r.stderr, /^fleetlet agent: --listen 0\.0\.0\.0:0 is not a loopback address: give --tls-cert and --tls-key .* or --insecure/);
      assert.equal(r.stderr.trim().split("\n").length, 1);
      // "insecure": false in a config file is not --insecure.
      writeFileSync(join(state.path, "config.json"), JSON.stringify({ insecure: false }));
      const fromConfig = await runFleetlet(["agent", "--listen", "0.0.0.0:0", "--state-dir", state.path, "--metrics-listen", "off", "--runtime", "none", "--config", join(state.path, "config.json")]);
      assert.equal(fromConfig.code, 2, fromConfig.stderr);
      assert.match(fromConfig.stderr, /is not a loopback address/);
      // The Prometheus endpoint too: off loopback it needs the TLS files (then HTTPS) or --insecure.
      const metrics = await runFleetlet(["agent", "--listen", "127.0.0.1:0", "--state-dir", state.path, "--metrics-listen", "0.0.0.0:0", "--runtime", "none"]);
      assert.equal(metrics.code, 2, metrics.stderr);
      assert.match(metrics.stderr, /^fleetlet agent: --metrics-listen 0\.0\.0\.0:0 is not a loopback address: give --tls-cert and --tls-key \(the endpoint then serves HTTPS\)/);
      assert.equal(metrics.stderr.trim().split("\n").length, 1);
    } finally {
      state.remove();
    }
  });
});
