import { afterAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { InstanceState, InventoryService } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { MeteringService } from "../../gen/fleetlet/agent/v1/metering_pb.js";
import type { HostMetering } from "../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { createGrpcJsTransport } from "../../lib/rpc/grpc-transport.js";
import { fleetClient } from "../helpers/clients.js";
import { runFleetlet, startDaemon, type DaemonProcess } from "../helpers/daemon-process.js";
import { agentLedgerLines } from "../helpers/metering-checker.js";
import { tempDir } from "../helpers/temp-dir.js";

// Seed 000's NopRecorder as an agent flag (issue 12 point 7): `--metering off` opens no ledger
// and meters nothing, says so through MeteringService and the aggregator's ListHosts (which
// neither logs errors nor keeps retrying against it), and turning it on and off again later
// keeps the agent starting: the registry/ledger start-up check holds across the off periods.

const agentDir = tempDir("meter-off-agent");
const aggDir = tempDir("meter-off-agg");
let agent: DaemonProcess | undefined;
let aggregator: DaemonProcess | undefined;
let port = 0;

afterAll(async () => {
  await Promise.all([agent?.stop(), aggregator?.stop()]);
  agentDir.remove();
  aggDir.remove();
});

const startAgent = async (metering: "on" | "off") => {
  agent = await startDaemon(["agent", "--listen", `127.0.0.1:${port}`, "--state-dir", agentDir.path, "--metrics-listen", "127.0.0.1:0", "--runtime", "none", "--standby", "off", "--metering", metering, "--log-level", "debug"]);
  port = Number(agent.address.split(":").at(-1));
  return agent;
};

/** fleetlet_metering_enabled and whether any ledger series is exported, from the agent's /metrics. */
async function scrape(a: DaemonProcess): Promise<[string | undefined, boolean]> {
  const serving = JSON.parse(a.lines.find((l) => l.includes('"msg":"agent serving"'))!) as { metrics: string };
  const text = await (await fetch(serving.metrics)).text();
  return [/^fleetlet_metering_enabled(?:\{[^}]*\})? (\d+)$/m.exec(text)?.[1], /^fleetlet_metering_ledger_last_seq/m.test(text)];
}

function clients(address: string) {
  const transport = createGrpcJsTransport(address);
  return { inventory: createClient(InventoryService, transport), metering: createClient(MeteringService, transport), close: () => transport.close() };
}

/** Lifecycle changes that would write entries: register (running), stop, start, snapshot, removal. */
async function churn(c: ReturnType<typeof clients>, prefix: string): Promise<void> {
  await c.inventory.registerInstance({ instance: { id: `${prefix}1`, state: InstanceState.RUNNING, allocatedVcpus: 2 } });
  await c.inventory.registerInstance({ instance: { id: `${prefix}2`, state: InstanceState.CREATED } });
  await c.inventory.setInstanceState({ instanceId: `${prefix}1`, state: InstanceState.STOPPED });
  await c.inventory.setInstanceState({ instanceId: `${prefix}1`, state: InstanceState.RUNNING });
  await c.inventory.registerSnapshot({ snapshot: { id: `${prefix}-snap`, instanceId: `${prefix}1`, storageBytes: 1000n } });
  await c.inventory.removeSnapshot({ snapshotId: `${prefix}-snap` });
  await c.inventory.deregisterInstance({ instanceId: `${prefix}2` });
}

async function until<T>(what: string, get: () => Promise<T>, ok: (v: T) => boolean, timeoutMs = 20_000): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const v = await get();
    if (ok(v)) return v;
    if (performance.now() > deadline) throw new Error(`${what}: still ${JSON.stringify(v, (_k, x: unknown) => (typeof x === "bigint" ? x.toString() : x))}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The MeteringService calls the agent served so far (it logs every RPC; the ones that succeed at debug), by method. */
const meteringCalls = (a: DaemonProcess) =>
  a.lines
    .map((l) => /"method":"\/fleetlet\.agent\.v1\.MeteringService\/(\w+)"/.exec(l)?.[1])
    .filter((m): m is string => m !== undefined);

const failedPrecondition = (e: unknown) => {
  const err = ConnectError.from(e);
  return err.code === Code.FailedPrecondition && err.rawMessage === "metering is off on this agent (--metering off)";
};

describe("an agent with --metering off", () => {
  it("meters nothing, says so to clients and the aggregator, and can be turned on and off again", async () => {
    await startAgent("off");
    assert.ok(agent!.lines.some((l) => l.includes('"msg":"agent serving"') && l.includes('"metering":"off"')), agent!.lines.join("\n"));
    let c = clients(agent!.address);
    await churn(c, "off-a");
    assert.equal(existsSync(join(agentDir.path, "metering")), false, "no ledger directory");
    assert.deepEqual(readdirSync(agentDir.path).filter((f) => /ledger|metering/.test(f)), [], "no ledger file of any name");

    // The service answers as documented, every call; its status says why.
    await assert.rejects(c.metering.readMeteringEntries({ fromSeq: 1n }), failedPrecondition);
    await assert.rejects(
      (async () => {
        for await (const _ of c.metering.watchMeteringEntries({ fromSeq: 1n })) break;
      })(),
      failedPrecondition,
    );
    await assert.rejects(c.metering.acknowledgeMeteringEntries({ ledgerId: "0000000000000000", seq: 1n }), failedPrecondition);
    const { incarnation } = await c.inventory.listInstances({});
    const status = await c.metering.getMeteringStatus({});
    assert.deepEqual([status.enabled, status.ledgerId, status.lastSeq, status.pendingEntries, status.incarnation], [false, "", 0n, 0n, incarnation]);
    assert.deepEqual(await scrape(agent!), ["0", false]);
    const agentOff = await runFleetlet(["get", "metering", "--agent", agent!.address]);
    assert.equal(agentOff.code, 1);
    assert.match(agentOff.stderr, /metering is off on this agent \(--metering off\)/);

    // The aggregator shows it as a state, not an error, and asks no more until the agent restarts.
    aggregator = await startDaemon(["aggregator", "--listen", "127.0.0.1:0", "--state-dir", aggDir.path, "--metrics-listen", "off", "--hosts", `h0=127.0.0.1:${port}`]);
    const fleet = fleetClient(aggregator.address);
    const metering = async (): Promise<HostMetering | undefined> => (await fleet.fleet.listHosts({})).hosts.find((h) => h.name === "h0")?.metering;
    try {
      const off = await until("h0 metering off", metering, (m) => m?.meteringOff === true);
      assert.deepEqual([off!.lastError, off!.ledgerId, off!.lagEntries], ["", "", 0n]);
      const askedAt = off!.agentReportedAt;
      const callsBefore = meteringCalls(agent!).length;
      await new Promise((r) => setTimeout(r, 3000));
      const later = await metering();
      assert.equal(later?.meteringOff, true);
      assert.deepEqual(later?.agentReportedAt, askedAt, "not asked again while the agent runs on");
      assert.deepEqual(meteringCalls(agent!).slice(callsBefore), [], "no retries against it");
      const warnings = aggregator.lines.filter((l) => l.includes("metering") && /"level":(40|50)/.test(l));
      assert.deepEqual(warnings, [], "no warnings or errors about the host's metering");
      assert.equal(aggregator.lines.filter((l) => l.includes("--metering off")).length, 1, "said once");
      const table = await runFleetlet(["get", "metering", "--aggregator", aggregator.address]);
      assert.equal(table.code, 0, table.stderr);
      assert.match(table.stdout, /^h0\s+metering off\s+0\s+-\s+-\s+-/m);

      // On again (same state dir, same port): it starts; what happened while off is not metered.
      c.close();
      await agent!.stop();
      await startAgent("on");
      c = clients(agent!.address);
      await c.inventory.setInstanceState({ instanceId: "off-a1", state: InstanceState.STOPPED });
      await churn(c, "on-b");
      const firstOn = agentLedgerLines(agentDir.path);
      assert.deepEqual(
        firstOn.map((l) => (JSON.parse(l) as { seq: number; kind: string; vm_id?: string; snapshot_id?: string }).kind),
        ["vm.compute.stop", "vm.storage.start", "vm.compute.start", "vm.storage.start", "vm.compute.stop", "vm.compute.start", "snap.storage.start", "snap.storage.stop", "vm.storage.stop"],
        "off-a1's stop (its start was not metered: it ran while metering was off), then on-b's lifecycle",
      );
      assert.deepEqual(await scrape(agent!), ["1", true]);
      const onStatus = await c.metering.getMeteringStatus({});
      assert.deepEqual([onStatus.enabled, onStatus.lastSeq, onStatus.pendingEntries, onStatus.incarnation], [true, BigInt(firstOn.length), 0n, (await c.inventory.listInstances({})).incarnation]);
      assert.match(onStatus.ledgerId, /^[0-9a-f]{16}$/);
      const on = await until("h0 followed again", metering, (m) => m?.meteringOff === false && m.mergedSeq === BigInt(firstOn.length));
      assert.equal(on!.lastError, "");

      // Off again, with a ledger on disk now: it is not opened or touched.
      c.close();
      await agent!.stop();
      const ledgerFiles = () => readdirSync(join(agentDir.path, "metering")).map((f) => `${f} ${readFileSync(join(agentDir.path, "metering", f)).toString("base64")}`);
      const before = ledgerFiles();
      await startAgent("off");
      c = clients(agent!.address);
      await churn(c, "off-c");
      await c.inventory.deregisterInstance({ instanceId: "on-b1" });
      assert.deepEqual(ledgerFiles(), before, "the ledger is untouched while metering is off");
      await until("h0 metering off again", metering, (m) => m?.meteringOff === true);
      // The aggregator's view of the connection still had the previous (metering on)
      // incarnation when this agent first answered: that must not read as a restart either.
      await new Promise((r) => setTimeout(r, 2000));
      const offAgain = meteringCalls(agent!);
      assert.deepEqual([offAgain.filter((m) => m === "WatchMeteringEntries").length, offAgain.filter((m) => m === "GetMeteringStatus").length], [1, 1], offAgain.join(" "));

      // And on again: the start-up cross-check (registry's ledger end vs the ledger) passes.
      c.close();
      await agent!.stop();
      await startAgent("on");
      c = clients(agent!.address);
      await c.inventory.registerInstance({ instance: { id: "on-d", state: InstanceState.CREATED } });
      const lines = agentLedgerLines(agentDir.path);
      assert.deepEqual(lines.slice(0, firstOn.length), firstOn);
      assert.deepEqual(lines.slice(firstOn.length).map((l) => JSON.parse(l) as { seq: number; kind: string; vm_id: string }).map((e) => `${e.seq} ${e.kind} ${e.vm_id}`), [`${firstOn.length + 1} vm.storage.start on-d`]);
      await until("h0 merged on-d", metering, (m) => m?.meteringOff === false && m.mergedSeq === BigInt(lines.length));
      assert.deepEqual(
        aggregator.lines.filter((l) => l.includes("metering") && /"level":(40|50)/.test(l)),
        [],
      );
    } finally {
      c.close();
      fleet.close();
    }
  });
});
