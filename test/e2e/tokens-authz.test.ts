import { afterAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { InstanceState, InventoryService } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { MeteringService } from "../../gen/fleetlet/agent/v1/metering_pb.js";
import { FleetService } from "../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { createGrpcJsTransport } from "../../lib/rpc/grpc-transport.js";
import { bearerTokenChannelOptions } from "../../lib/rpc/authz/call-credentials.js";
import { hashToken } from "../../lib/rpc/authz/tokens-file.js";
import { runFleetlet, startDaemon, type DaemonProcess } from "../helpers/daemon-process.js";
import { tempDir } from "../helpers/temp-dir.js";
import { codeOf } from "../helpers/call-code.js";

// A real agent and aggregator, both with --tokens-file: the CLI with a viewer token reads but
// cannot change anything, the aggregator's metering follower works with its admin agent token,
// a configured host cannot be removed through the API, and the audit lines say who did what.

const agentDir = tempDir("authz-agent");
const aggDir = tempDir("authz-agg");
const secrets = tempDir("authz-secrets");
let agent: DaemonProcess | undefined;
let aggregator: DaemonProcess | undefined;
const closers: (() => void)[] = [];

afterAll(async () => {
  for (const c of closers) c();
  await Promise.all([agent?.stop(), aggregator?.stop()]);
  for (const d of [agentDir, aggDir, secrets]) d.remove();
});

const TOKENS = { viewer: "tok-viewer", admin: "tok-admin", aggregator: "tok-aggregator" };

function client<S extends typeof InventoryService | typeof MeteringService | typeof FleetService>(service: S, address: string, token?: string) {
  const transport = createGrpcJsTransport(address, { channelOptions: bearerTokenChannelOptions(token) });
  closers.push(() => transport.close());
  return createClient(service, transport);
}


async function until<T>(read: () => Promise<T>, ok: (v: T) => boolean, ms = 15_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await read();
    if (ok(v) || Date.now() > end) return v;
    await new Promise((r) => setTimeout(r, 100));
  }
}

function auditLines(d: DaemonProcess): Record<string, unknown>[] {
  return d.lines.filter((l) => l.includes('"audit":true')).map((l) => JSON.parse(l) as Record<string, unknown>);
}

describe("bearer tokens and roles across a real agent and aggregator", () => {
  it("viewer reads, admin writes, the aggregator follows metering with its token, audit records both", async () => {
    const agentTokens = join(secrets.path, "agent-tokens");
    writeFileSync(agentTokens, `viewer-user viewer ${hashToken(TOKENS.viewer)}\nroot admin ${hashToken(TOKENS.admin)}\naggregator aggregator ${hashToken(TOKENS.aggregator)}\n`);
    const aggTokens = join(secrets.path, "agg-tokens");
    writeFileSync(aggTokens, `viewer-user viewer ${hashToken(TOKENS.viewer)}\nroot admin ${hashToken(TOKENS.admin)}\n`);
    agent = await startDaemon(["agent", "--listen", "127.0.0.1:0", "--state-dir", agentDir.path, "--metrics-listen", "off", "--runtime", "none", "--standby", "off", "--tokens-file", agentTokens]);
    aggregator = await startDaemon(
      ["aggregator", "--listen", "127.0.0.1:0", "--state-dir", aggDir.path, "--metrics-listen", "off", "--hosts", `h1=${agent.address}`, "--tokens-file", aggTokens],
      15_000,
      { FLEETLET_AGGREGATOR_AGENT_TOKEN: TOKENS.aggregator },
    );

    // No token: UNAUTHENTICATED even on loopback; a viewer cannot register; an admin can.
    const instance = { instance: { id: "vm-1", state: InstanceState.RUNNING } };
    assert.equal(await codeOf(client(InventoryService, agent.address).listInstances({})), Code.Unauthenticated);
    assert.equal(await codeOf(client(InventoryService, agent.address, TOKENS.viewer).registerInstance(instance)), Code.PermissionDenied);
    assert.equal(await codeOf(client(InventoryService, agent.address, TOKENS.admin).registerInstance(instance)), "OK");

    // The CLI: a viewer token lists instances through the aggregator but cannot add a host.
    const get = await until(
      () => runFleetlet(["get", "instances", "--aggregator", aggregator!.address, "-o", "json", "--token", TOKENS.viewer]),
      (r) => r.code === 0 && r.stdout.includes("vm-1"),
    );
    assert.equal(get.code, 0, get.stderr);
    assert.match(get.stdout, /vm-1/);
    const noToken = await runFleetlet(["get", "instances", "--aggregator", aggregator.address]);
    assert.notEqual(noToken.code, 0);
    assert.match(noToken.stderr, /UNAUTHENTICATED|unauthenticated/i);
    const add = await runFleetlet(["hosts", "add", "h2", "127.0.0.1:1", "--aggregator", aggregator.address, "--token", TOKENS.viewer]);
    assert.notEqual(add.code, 0);
    assert.match(add.stderr, /needs role admin/);

    // The metering follower read and acknowledged the agent's entries with the aggregator's token.
    const metering = client(MeteringService, agent.address, TOKENS.viewer);
    const status = await until(() => metering.getMeteringStatus({}), (s) => s.lastSeq > 0n && s.acknowledgedSeq === s.lastSeq);
    assert.ok(status.lastSeq > 0n);
    assert.equal(status.acknowledgedSeq, status.lastSeq, "the aggregator acknowledged everything");
    const fleet = client(FleetService, aggregator.address, TOKENS.viewer);
    const feed = await fleet.readMeteringEntries({ fromFleetSeq: 1n });
    assert.ok(feed.entries.some((e) => e.host === "h1"));
    // Neither a viewer nor an admin may acknowledge on the agent: only the aggregator's identity.
    assert.equal(await codeOf(metering.acknowledgeMeteringEntries({ ledgerId: status.ledgerId, seq: status.lastSeq })), Code.PermissionDenied);
    const adminAck = client(MeteringService, agent.address, TOKENS.admin).acknowledgeMeteringEntries({ ledgerId: status.ledgerId, seq: status.lastSeq });
    assert.equal(await codeOf(adminAck), Code.PermissionDenied);

    // A configured host cannot be removed through the API, even by an admin.
    const removeErr = await client(FleetService, aggregator.address, TOKENS.admin).removeHost({ name: "h1" }).then(
      () => undefined,
      (e: unknown) => ConnectError.from(e),
    );
    assert.equal(removeErr?.code, Code.FailedPrecondition);
    assert.match(removeErr!.rawMessage, /configured by --hosts/);

    // AddHost's probe presents the aggregator's agent token too.
    const probe = (await client(FleetService, aggregator.address, TOKENS.admin).addHost({ name: "h2", address: agent.address, dryRun: true })).probe;
    assert.equal(probe?.code, "OK", probe?.message);
    assert.equal(probe?.instanceCount, 1);

    // Logs routed through the aggregator: a viewer is refused there; for an admin the agent
    // authorises the aggregator's own token and records the end user beside it.
    const logs = async (token: string) => {
      for await (const _ of client(FleetService, aggregator!.address, token).streamContainerLogs({ host: "h1", runtime: "docker", externalId: "c-1" })) {
        // nothing expected: the agent has no runtime
      }
    };
    assert.equal(await codeOf(logs(TOKENS.viewer)), Code.PermissionDenied);
    assert.notEqual(await codeOf(logs(TOKENS.admin)), Code.PermissionDenied);
    const routed = await until(
      async () => auditLines(agent!).find((l) => l.method === "/fleetlet.agent.v1.RuntimeService/StreamContainerLogs"),
      (l) => l !== undefined,
    );
    assert.deepEqual([routed?.identity, routed?.on_behalf_of, routed?.external_id], ["aggregator", "root", "c-1"]);

    // Audit: the admin's registration and the viewer's refused one on the agent; the
    // aggregator's acknowledgements by its identity; the refused RemoveHost on the aggregator.
    const agentAudit = auditLines(agent);
    const registered = agentAudit.find((l) => l.method === "/fleetlet.agent.v1.InventoryService/RegisterInstance" && l.code === "OK");
    assert.equal(registered?.identity, "root");
    assert.equal(registered?.instance_id, "vm-1");
    assert.ok(typeof registered?.time === "string" || typeof registered?.time === "number");
    const refused = agentAudit.find((l) => l.method === "/fleetlet.agent.v1.InventoryService/RegisterInstance" && l.code === "PERMISSION_DENIED");
    assert.equal(refused?.identity, "viewer-user");
    assert.ok(agentAudit.some((l) => l.code === "UNAUTHENTICATED" && l.method === "/fleetlet.agent.v1.InventoryService/ListInstances"));
    const acked = agentAudit.find((l) => l.method === "/fleetlet.agent.v1.MeteringService/AcknowledgeMeteringEntries" && l.code === "OK");
    assert.equal(acked?.identity, "aggregator");
    assert.equal(acked?.ledger_id, status.ledgerId);
    const aggAudit = auditLines(aggregator);
    const removal = aggAudit.find((l) => l.method === "/fleetlet.aggregator.v1.FleetService/RemoveHost");
    assert.equal(removal?.identity, "root");
    assert.equal(removal?.host, "h1");
    assert.equal(removal?.code, "FAILED_PRECONDITION");
    assert.ok(aggAudit.some((l) => l.method === "/fleetlet.aggregator.v1.FleetService/AddHost" && l.code === "PERMISSION_DENIED" && l.identity === "viewer-user"));
  });
});
