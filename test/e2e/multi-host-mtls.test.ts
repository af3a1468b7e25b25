import { afterAll, beforeAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { randomBytes, X509Certificate } from "node:crypto";
import { readFileSync, renameSync, writeFileSync } from "node:fs";
import { request as httpsRequest } from "node:https";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { InstanceState, InventoryService } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { MeteringService } from "../../gen/fleetlet/agent/v1/metering_pb.js";
import { ConnectionState, FleetService, HostSyncState } from "../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { bearerTokenChannelOptions } from "../../lib/rpc/authz/call-credentials.js";
import { hashToken } from "../../lib/rpc/authz/tokens-file.js";
import { createGrpcJsTransport } from "../../lib/rpc/grpc-transport.js";
import { runFleetlet, startDaemon, type DaemonProcess } from "../helpers/daemon-process.js";
import { mustRunInCi, rootSkipReason } from "../helpers/root.js";
import { tempDir } from "../helpers/temp-dir.js";
import { issueClientCertificateWithoutRole, issueExpiredClientCertificate, servedCertificateSerial } from "../helpers/test-certificates.js";
import { until } from "../helpers/until.js";
import { codeOf } from "../helpers/call-code.js";

// security.md "How it is tested": three agents, each in a network namespace of its own with its
// own address behind a veth pair, the aggregator in the root namespace, everything over mTLS with
// certificates from `fleetlet certs`. Callers with no certificate, another CA's, an expired one,
// one without a role, a viewer and an operator certificate, an admin token and an unknown token
// get exactly the codes of the role table, on the aggregator and on an agent directly. A fourth
// agent serves host 1's stolen certificate from host 3's namespace and is refused.
// Only interfaces this test creates are touched (the root ends of its veth pairs).

const skip = mustRunInCi(rootSkipReason());
const tag = randomBytes(2).toString("hex");
// 10.218.<base+i>.0/30 per host: a random base so a leftover from a killed run does not clash.
const base = 1 + (randomBytes(1)[0]! % 200);
const HOSTS = [1, 2, 3].map((i) => ({
  name: `h${i}`,
  ns: `flmt-${tag}-${i}`,
  rootIf: `mr${tag}${i}`,
  nsIf: `ma${tag}${i}`,
  rootIp: `10.218.${base + i}.1`,
  ip: `10.218.${base + i}.2`,
}));
const PORT = 7701;
const IMPOSTOR_PORT = 7702;
const METRICS_PORT = 9464;
const TOKENS = { admin: "tok-admin-multi-host", unknown: "tok-nobody-knows" };

const dir = tempDir("multi-host-mtls");
const d = (...p: string[]) => join(dir.path, ...p);
const agents: DaemonProcess[] = [];
let impostor: DaemonProcess | undefined;
let aggregator: DaemonProcess | undefined;
const closers: (() => void)[] = [];

function ip(...args: string[]): void {
  execFileSync("ip", args, { stdio: ["ignore", "ignore", "pipe"] });
}

async function fleetlet(...args: string[]): Promise<void> {
  const r = await runFleetlet(args);
  assert.equal(r.code, 0, `fleetlet ${args.join(" ")}: ${r.stderr}`);
}

const serverTls = (name: string) => ["--tls-cert", d("hosts", `${name}.crt`), "--tls-key", d("hosts", `${name}.key`), "--tls-ca", d("ca", "ca.crt")];

beforeAll(async () => {
  if (skip) return;
  for (const h of HOSTS) {
    ip("netns", "add", h.ns);
    ip("-n", h.ns, "link", "set", "lo", "up");
    ip("link", "add", h.rootIf, "type", "veth", "peer", "name", h.nsIf, "netns", h.ns);
    ip("addr", "add", `${h.rootIp}/30`, "dev", h.rootIf);
    ip("link", "set", h.rootIf, "up");
    ip("-n", h.ns, "addr", "add", `${h.ip}/30`, "dev", h.nsIf);
    ip("-n", h.ns, "link", "set", h.nsIf, "up");
  }

  await fleetlet("certs", "ca", "--out", d("ca"));
  await fleetlet("certs", "ca", "--out", d("other-ca"));
  for (const h of HOSTS) await fleetlet("certs", "server", "--ca-dir", d("ca"), "--out", d("hosts"), "--name", h.name, "--host", h.ip);
  await fleetlet("certs", "server", "--ca-dir", d("ca"), "--out", d("hosts"), "--name", "ctl", "--host", "127.0.0.1");
  await fleetlet("certs", "client", "--ca-dir", d("ca"), "--out", d("users"), "--name", "aggregator", "--role", "aggregator");
  await fleetlet("certs", "client", "--ca-dir", d("ca"), "--out", d("users"), "--name", "alice", "--role", "viewer");
  await fleetlet("certs", "client", "--ca-dir", d("ca"), "--out", d("users"), "--name", "olga", "--role", "operator");
  await fleetlet("certs", "client", "--ca-dir", d("other-ca"), "--out", d("users"), "--name", "mallory", "--role", "admin");
  issueExpiredClientCertificate(d("ca"), d("users"), "expired");
  issueClientCertificateWithoutRole(d("ca"), d("users"), "nobody");
  writeFileSync(d("tokens"), `root admin ${hashToken(TOKENS.admin)}\n`, { mode: 0o600 });

  const common = ["--runtime", "none", "--standby", "off"];
  for (const h of HOSTS) {
    agents.push(
      await startDaemon(["agent", "--listen", `${h.ip}:${PORT}`, ...serverTls(h.name), "--tokens-file", d("tokens"), "--state-dir", d(`state-${h.name}`), ...common, "--metrics-listen", `${h.ip}:${METRICS_PORT}`], 20_000, undefined, {
        wrap: ["ip", "netns", "exec", h.ns],
      }),
    );
  }
  // Host 1's certificate and key, stolen and served from host 3's namespace.
  const h3 = HOSTS[2]!;
  impostor = await startDaemon(["agent", "--listen", `${h3.ip}:${IMPOSTOR_PORT}`, ...serverTls("h1"), "--state-dir", d("state-impostor"), ...common, "--metrics-listen", "off"], 20_000, undefined, {
    wrap: ["ip", "netns", "exec", h3.ns],
  });
  aggregator = await startDaemon([
    "aggregator", "--listen", "127.0.0.1:0", ...serverTls("ctl"), "--tokens-file", d("tokens"), "--state-dir", d("state-aggregator"), "--metrics-listen", "off",
    "--hosts", [...HOSTS.map((h) => `${h.name}=${h.ip}:${PORT}`), `h4=${h3.ip}:${IMPOSTOR_PORT}`].join(","),
    "--agent-tls-ca", d("ca", "ca.crt"), "--agent-tls-cert", d("users", "aggregator.crt"), "--agent-tls-key", d("users", "aggregator.key"),
  ]);
}, 90_000);

afterAll(async () => {
  for (const c of closers) c();
  await Promise.all([...agents.map((a) => a.stop()), impostor?.stop(), aggregator?.stop()]);
  for (const h of HOSTS) {
    for (const args of [["link", "del", h.rootIf], ["netns", "del", h.ns]]) {
      try {
        ip(...args);
      } catch {
        // not created (setup failed early) or already gone with its namespace
      }
    }
  }
  dir.remove();
});

interface Caller {
  label: string;
  cert?: string;
  ca?: string;
  token?: string;
}

const CALLERS = {
  noCert: { label: "no certificate" },
  otherCa: { label: "another CA's certificate", cert: "mallory" },
  expired: { label: "expired certificate", cert: "expired" },
  noRole: { label: "certificate without a role", cert: "nobody" },
  viewer: { label: "viewer certificate", cert: "alice" },
  operator: { label: "operator certificate", cert: "olga" },
  admin: { label: "admin token (over a viewer certificate)", cert: "alice", token: TOKENS.admin },
  unknownToken: { label: "unknown token (over an operator certificate)", cert: "olga", token: TOKENS.unknown },
} satisfies Record<string, Caller>;

function transportFor(address: string, caller: Caller) {
  const credentials = grpc.credentials.createSsl(
    readFileSync(d("ca", "ca.crt")),
    caller.cert ? readFileSync(d("users", `${caller.cert}.key`)) : null,
    caller.cert ? readFileSync(d("users", `${caller.cert}.crt`)) : null,
  );
  const transport = createGrpcJsTransport(address, { credentials, channelOptions: bearerTokenChannelOptions(caller.token) });
  closers.push(() => transport.close());
  return transport;
}


describe.skipIf(skip)("three agents in network namespaces, the aggregator in the root namespace, all over mTLS", () => {
  it("the aggregator follows all three agents; the stolen certificate served for host 3's address is refused", async () => {
    const fleet = createClient(FleetService, transportFor(aggregator!.address, CALLERS.viewer));
    const hosts = await until(
      "h1-h3 READY and SYNCED",
      async () => {
        const r = await fleet.listHosts({});
        const ok = HOSTS.every((h) => {
          const x = r.hosts.find((y) => y.name === h.name);
          return x?.connectionState === ConnectionState.READY && x.syncState === HostSyncState.SYNCED;
        });
        return ok ? r.hosts : undefined;
      },
      45_000,
    );
    const h4 = hosts.find((h) => h.name === "h4");
    assert.notEqual(h4?.connectionState, ConnectionState.READY);
    assert.notEqual(h4?.syncState, HostSyncState.SYNCED);
    assert.match(h4?.lastError ?? "", /ERR_TLS_CERT_ALTNAME_INVALID|not in the cert's list/, `h4 lastError: ${h4?.lastError}`);
    // The same refusal for a client that checks the CA and the dialled address (alice).
    const h1 = HOSTS[0]!;
    const h3 = HOSTS[2]!;
    assert.equal(await codeOf(() => createClient(InventoryService, transportFor(`${h1.ip}:${PORT}`, CALLERS.viewer)).listInstances({}, { timeoutMs: 10_000 })), "OK");
    assert.equal(await codeOf(() => createClient(InventoryService, transportFor(`${h3.ip}:${IMPOSTOR_PORT}`, CALLERS.viewer)).listInstances({}, { timeoutMs: 10_000 })), Code.Unavailable);
  }, 60_000);

  it("every kind of caller gets exactly the role table's code, on the aggregator and on an agent", async () => {
    const h1 = HOSTS[0]!;
    const agentAddress = `${h1.ip}:${PORT}`;
    // What each call does once authorised; the role it needs is in lib/rpc/authz/role-table.ts.
    type Call = { name: string; needs: "viewer" | "operator" | "admin" | "aggregator"; authorised: Code | "OK"; run: (c: Caller) => Promise<unknown> };
    const fleetOf = (c: Caller) => createClient(FleetService, transportFor(aggregator!.address, c));
    const inventoryOf = (c: Caller) => createClient(InventoryService, transportFor(agentAddress, c));
    const calls: Call[] = [
      { name: "aggregator ListHosts", needs: "viewer", authorised: "OK", run: (c) => fleetOf(c).listHosts({}, { timeoutMs: 10_000 }) },
      {
        name: "aggregator StreamContainerLogs (routed to h1, no runtime there)",
        needs: "operator",
        authorised: Code.FailedPrecondition,
        run: async (c) => {
          for await (const _ of fleetOf(c).streamContainerLogs({ host: "h1", runtime: "docker", externalId: "c-1" }, { timeoutMs: 10_000 })) {
            // nothing: the agent has no runtime
          }
        },
      },
      { name: "aggregator AddHost dry run", needs: "admin", authorised: "OK", run: (c) => fleetOf(c).addHost({ name: "probe", address: agentAddress, dryRun: true }, { timeoutMs: 10_000 }) },
      { name: "aggregator RemoveHost of a configured host", needs: "admin", authorised: Code.FailedPrecondition, run: (c) => fleetOf(c).removeHost({ name: "h2" }, { timeoutMs: 10_000 }) },
      { name: "agent ListInstances", needs: "viewer", authorised: "OK", run: (c) => inventoryOf(c).listInstances({}, { timeoutMs: 10_000 }) },
      { name: "agent SetInstanceState", needs: "operator", authorised: Code.NotFound, run: (c) => inventoryOf(c).setInstanceState({ instanceId: "nope", state: InstanceState.RUNNING }, { timeoutMs: 10_000 }) },
      { name: "agent DeregisterInstance", needs: "admin", authorised: Code.NotFound, run: (c) => inventoryOf(c).deregisterInstance({ instanceId: "nope" }, { timeoutMs: 10_000 }) },
      {
        name: "agent AcknowledgeMeteringEntries",
        needs: "aggregator",
        authorised: "OK",
        run: (c) => createClient(MeteringService, transportFor(agentAddress, c)).acknowledgeMeteringEntries({ ledgerId: "x", seq: 0n }, { timeoutMs: 10_000 }),
      },
    ];
    const rank = { viewer: 1, operator: 2, admin: 3, aggregator: 4 } as const;
    const expected = (caller: keyof typeof CALLERS, call: Call): Code | "OK" => {
      if (caller === "noCert" || caller === "otherCa" || caller === "expired") return Code.Unavailable; // no TLS session
      if (caller === "noRole" || caller === "unknownToken") return Code.Unauthenticated;
      const held = caller === "admin" ? 3 : rank[caller];
      return held >= rank[call.needs] && call.needs !== "aggregator" ? call.authorised : Code.PermissionDenied;
    };
    const mismatches: string[] = [];
    let checked = 0;
    for (const [key, caller] of Object.entries(CALLERS) as [keyof typeof CALLERS, Caller][]) {
      for (const call of calls) {
        const got = await codeOf(() => call.run(caller));
        const want = expected(key, call);
        checked++;
        if (got !== want) mismatches.push(`${caller.label} → ${call.name}: got ${got === "OK" ? "OK" : Code[got]}, want ${want === "OK" ? "OK" : Code[want]}`);
      }
    }
    assert.deepEqual(mismatches, []);
    assert.equal(checked, Object.keys(CALLERS).length * calls.length);

    // The aggregator's own certificate (OU=aggregator) is the one identity that may acknowledge.
    const aggregatorCaller: Caller = { label: "aggregator certificate", cert: "aggregator" };
    const status = await createClient(MeteringService, transportFor(agentAddress, CALLERS.viewer)).getMeteringStatus({});
    assert.equal(await codeOf(() => createClient(MeteringService, transportFor(agentAddress, aggregatorCaller)).acknowledgeMeteringEntries({ ledgerId: status.ledgerId, seq: 0n })), "OK");
    assert.equal(await codeOf(() => inventoryOf(aggregatorCaller).deregisterInstance({ instanceId: "nope" })), Code.PermissionDenied);

    // Audit on h1: the routed logs call names the aggregator and the operator it acted for.
    const routed = agents[0]!.lines
      .filter((l) => l.includes('"audit":true'))
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .find((l) => l.method === "/fleetlet.agent.v1.RuntimeService/StreamContainerLogs");
    assert.deepEqual([routed?.identity, routed?.via, routed?.on_behalf_of], ["aggregator", "certificate", "olga"]);
  }, 120_000);

  it("rotation under load: every certificate file replaced while 3 clients call; 0 failed calls, new connections get the new certificates", async () => {
    const h2 = HOSTS[1]!;
    const agentAddress = `${h2.ip}:${PORT}`;
    const alice = { ca: d("ca", "ca.crt"), cert: d("users", "alice.crt"), key: d("users", "alice.key") };
    const serials = async () => [await servedCertificateSerial(agentAddress, alice), await servedCertificateSerial(aggregator!.address, alice)];
    const before = await serials();
    // The replacements: h2's and the aggregator's server pairs, the aggregator's client pair for
    // the agents, and the CA file every daemon reads (same CA, a new file).
    await fleetlet("certs", "server", "--ca-dir", d("ca"), "--out", d("next"), "--name", "h2", "--host", h2.ip);
    await fleetlet("certs", "server", "--ca-dir", d("ca"), "--out", d("next"), "--name", "ctl", "--host", "127.0.0.1");
    await fleetlet("certs", "client", "--ca-dir", d("ca"), "--out", d("next"), "--name", "aggregator", "--role", "aggregator");
    const serialOf = (file: string) => new X509Certificate(readFileSync(file)).serialNumber;
    const after = [serialOf(d("next", "h2.crt")), serialOf(d("next", "ctl.crt"))];
    assert.notDeepEqual(after, before);

    // Three long-lived clients, as control planes keep them: each its own channel, made once.
    const onAgent = createClient(InventoryService, transportFor(agentAddress, CALLERS.viewer));
    const viewerOnAggregator = createClient(FleetService, transportFor(aggregator!.address, CALLERS.viewer));
    const adminOnAggregator = createClient(FleetService, transportFor(aggregator!.address, CALLERS.admin));
    const callers = [
      () => onAgent.listInstances({}, { timeoutMs: 5000 }),
      () => viewerOnAggregator.listHosts({}, { timeoutMs: 5000 }),
      () => adminOnAggregator.listInstances({}, { timeoutMs: 5000 }),
    ];
    const counts = [0, 0, 0];
    const failures: string[] = [];
    let stop = false;
    const loops = callers.map(async (call, i) => {
      while (!stop) {
        try {
          await call();
          counts[i]!++;
        } catch (e) {
          failures.push(`client ${i}: ${ConnectError.from(e).message}`);
        }
      }
    });
    try {
      await new Promise((r) => setTimeout(r, 500));
      // Keys first, then certificates: for about a second each pair on disk does not match.
      renameSync(d("next", "h2.key"), d("hosts", "h2.key"));
      renameSync(d("next", "ctl.key"), d("hosts", "ctl.key"));
      renameSync(d("next", "aggregator.key"), d("users", "aggregator.key"));
      await new Promise((r) => setTimeout(r, 1500));
      renameSync(d("next", "h2.crt"), d("hosts", "h2.crt"));
      renameSync(d("next", "ctl.crt"), d("hosts", "ctl.crt"));
      renameSync(d("next", "aggregator.crt"), d("users", "aggregator.crt"));
      writeFileSync(d("ca", "ca.crt.new"), readFileSync(d("ca", "ca.crt")));
      renameSync(d("ca", "ca.crt.new"), d("ca", "ca.crt"));
      await until("both daemons serving the new certificates", async () => ((await serials()).every((s, i) => s === after[i]) ? true : undefined), 15_000);
      await new Promise((r) => setTimeout(r, 500));
    } finally {
      stop = true;
      await Promise.all(loops);
    }
    assert.deepEqual(failures, []);
    assert.ok(counts.every((n) => n > 10), `calls per client: ${counts.join(", ")}`);
    // The aggregator dials with the replaced client pair: a new channel (AddHost's dry run) to h2 works.
    const probe = await createClient(FleetService, transportFor(aggregator!.address, CALLERS.admin)).addHost({ name: "probe", address: agentAddress, dryRun: true });
    assert.equal(probe.probe?.code, "OK", probe.probe?.message);
    const hosts = (await createClient(FleetService, transportFor(aggregator!.address, CALLERS.viewer)).listHosts({})).hosts;
    assert.deepEqual(
      HOSTS.map((h) => hosts.find((x) => x.name === h.name)?.connectionState),
      HOSTS.map(() => ConnectionState.READY),
    );
  }, 60_000);

  it("the Prometheus endpoint off loopback serves HTTPS with the agent's certificate and asks for a client certificate", async () => {
    const h1 = HOSTS[0]!;
    const get = (files: { cert?: string; key?: string }) =>
      new Promise<{ status: number; body: string }>((resolve, reject) => {
        const req = httpsRequest(
          {
            host: h1.ip,
            port: METRICS_PORT,
            path: "/metrics",
            ca: readFileSync(d("ca", "ca.crt")),
            ...(files.cert ? { cert: readFileSync(files.cert), key: readFileSync(files.key!) } : {}),
            timeout: 10_000,
          },
          (res) => {
            let body = "";
            res.setEncoding("utf8");
            res.on("data", (c: string) => (body += c));
            res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
          },
        );
        req.on("error", reject);
        req.end();
      });
    const scraped = await get({ cert: d("users", "alice.crt"), key: d("users", "alice.key") });
    assert.equal(scraped.status, 200);
    assert.match(scraped.body, /^fleetlet_event_loop_delay_p99_seconds/m);
    await assert.rejects(get({}), "no client certificate: refused in the handshake");
    // Plain HTTP to the same port is not answered with metrics.
    const plain = await fetch(`http://${h1.ip}:${METRICS_PORT}/metrics`, { signal: AbortSignal.timeout(5000) }).then(
      (r) => r.status,
      () => "refused",
    );
    assert.notEqual(plain, 200);
  });
});
