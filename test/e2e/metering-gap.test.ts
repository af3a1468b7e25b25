import { afterAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import { createClient } from "@connectrpc/connect";
import { InstanceState, InventoryService } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { MeteringService } from "../../gen/fleetlet/agent/v1/metering_pb.js";
import { FleetService } from "../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { createGrpcJsTransport } from "../../lib/rpc/grpc-transport.js";
import { runFleetlet, startDaemon, type DaemonProcess } from "../helpers/daemon-process.js";
import { agentLedgerLines, checkFleetFeed, type FleetRow } from "../helpers/metering-checker.js";
import { tempDir } from "../helpers/temp-dir.js";
import { errorMessage } from "../../lib/error-message.js";
import { join } from "node:path";
import { rmSync } from "node:fs";
import Database from "better-sqlite3";
import { METERING_STORE_FILE } from "../../aggregator/metering/metering-store.js";

// A lost aggregator store meets an agent that already dropped what the old store acknowledged
// (retention 0, 4 KiB segments): the new aggregator merges nothing for the host and says where
// the agent's ledger now starts; only an operator's `fleetlet metering accept-gap` (recorded,
// with its reason) lets it follow from there. Then the feed is exactly the agent's retained
// ledger, and new entries flow.

const agentDir = tempDir("gap-agent");
const firstStore = tempDir("gap-agg1");
const secondStore = tempDir("gap-agg2");
let agent: DaemonProcess | undefined;
let aggregator: DaemonProcess | undefined;

afterAll(async () => {
  await Promise.all([agent?.stop(), aggregator?.stop()]);
  for (const d of [agentDir, firstStore, secondStore]) d.remove();
});

async function until<T>(what: string, f: () => Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await f().catch(() => undefined);
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const startAggregator = (dir: string) =>
  startDaemon(["aggregator", "--listen", "127.0.0.1:0", "--state-dir", dir, "--metrics-listen", "off", "--hosts", `h0=${agent!.address}`]);

async function flips(n: number): Promise<void> {
  const t = createGrpcJsTransport(agent!.address);
  const inv = createClient(InventoryService, t);
  for (let k = 0; k < n; k++) await inv.registerInstance({ instance: { id: `vm${k % 4}`, state: Math.floor(k / 4) % 2 === 0 ? InstanceState.RUNNING : InstanceState.STOPPED } });
  t.close();
}

describe("a lost aggregator store and an operator-accepted metering gap", () => {
  it("nothing is skipped until accept-gap; then the feed is exactly the retained ledger, and new entries follow", async () => {
    agent = await startDaemon(["agent", "--listen", "127.0.0.1:0", "--state-dir", agentDir.path, "--metrics-listen", "off", "--runtime", "none", "--standby", "off", "--metering-retain", "0", "--metering-segment-bytes", "4096"]);
    aggregator = await startAggregator(firstStore.path);
    await flips(120);
    const agentT = createGrpcJsTransport(agent.address);
    const metering = createClient(MeteringService, agentT);
    const firstRetainedNow = async () => {
      try {
        await metering.readMeteringEntries({ fromSeq: 1n, limit: 1 });
        return undefined; // seq 1 still there
      } catch (e) {
        const m = /first_retained_seq=(\d+)/.exec(errorMessage(e));
        return m ? BigInt(m[1]!) : undefined;
      }
    };
    // The first aggregator merges and acknowledges; the agent then drops the old segments.
    await until("the agent dropped acknowledged segments", firstRetainedNow);
    await aggregator.stop();
    // Its last (trailing) acknowledgement may still move retention on: wait until it rests.
    let firstRetained = (await until("the first retained seq", firstRetainedNow))!;
    for (;;) {
      await new Promise((r) => setTimeout(r, 1500));
      const again = await until("the first retained seq", firstRetainedNow);
      if (again === firstRetained) break;
      firstRetained = again;
    }
    // The store is lost: a new aggregator with an empty state dir.
    aggregator = await startAggregator(secondStore.path);
    const fleetT = createGrpcJsTransport(aggregator.address);
    const fleet = createClient(FleetService, fleetT);
    const stuck = await until("the new aggregator reports the agent's first retained seq", async () => {
      const m = (await fleet.listHosts({})).hosts[0]?.metering;
      return m && m.agentFirstRetainedSeq > 0n ? m : undefined;
    });
    assert.equal(stuck.agentFirstRetainedSeq, firstRetained);
    assert.match(stuck.lastError, /^OUT_OF_RANGE: from_seq 1 is no longer retained/);
    assert.equal((await fleet.readMeteringEntries({ fromFleetSeq: 1n })).entries.length, 0, "nothing merged, nothing skipped on its own");
    const shown = await runFleetlet(["get", "metering", "--aggregator", aggregator.address]);
    assert.match(shown.stdout, new RegExp(`agent's first retained seq: ${firstRetained}; see fleetlet metering accept-gap`));

    // Wrong requests name what is wrong and change nothing.
    const bad = async (args: string[], re: RegExp) => {
      const r = await runFleetlet(["metering", "accept-gap", "h0", "--aggregator", aggregator!.address, ...args]);
      assert.equal(r.code, 1, r.stdout);
      assert.match(r.stderr, re);
    };
    await bad(["--ledger-id", "0000000000000000", "--resume-seq", String(firstRetained), "--reason", "x"], /failed_precondition.*followed at ledger [0-9a-f]{16}, not 0000000000000000/);
    await bad(["--ledger-id", stuck.ledgerId, "--resume-seq", "1", "--reason", "x"], /invalid_argument.*resume_seq: must be between 2/);
    await bad(["--ledger-id", stuck.ledgerId, "--resume-seq", String(firstRetained), "--reason", " "], /invalid_argument.*reason: is required/);

    // What the agent has now (nothing new is written until compared).
    const retained = agentLedgerLines(agentDir.path);
    assert.equal(JSON.parse(retained[0]!).seq, Number(firstRetained));
    const ok = await runFleetlet(["metering", "accept-gap", "h0", "--aggregator", aggregator.address, "--ledger-id", stuck.ledgerId, "--resume-seq", String(firstRetained), "--reason", "store lost in test"]);
    assert.equal(ok.code, 0, ok.stderr);
    assert.equal(ok.stdout, `accepted: host h0 ledger ${stuck.ledgerId}: entries 1..${firstRetained - 1n} given up; following from ${firstRetained}\n`);
    // Who accepted it is kept with the gap and in the audit line (no tokens file: "local").
    const db = new Database(join(secondStore.path, METERING_STORE_FILE), { readonly: true });
    const stored = db.prepare("SELECT reason FROM metering_gaps WHERE host = 'h0'").get() as { reason: string };
    db.close();
    assert.equal(stored.reason, "store lost in test (accepted by local)");
    const auditLine = aggregator.lines.filter((l) => l.includes('"audit":true')).map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l.audit === true && l.method === "/fleetlet.aggregator.v1.FleetService/AcceptMeteringGap" && l.code === "OK");
    assert.deepEqual([auditLine?.identity, auditLine?.host, auditLine?.ledger_id], ["local", "h0", stuck.ledgerId]);
    const readFeed = async () => {
      const rows: FleetRow[] = [];
      let from = 1n;
      for (;;) {
        const res = await fleet.readMeteringEntries({ fromFleetSeq: from, limit: 10_000 });
        rows.push(...res.entries.map((e) => ({ fleetSeq: Number(e.fleetSeq), host: e.host, seq: Number(e.seq), line: e.line })));
        if (res.entries.length === 0) return rows;
        from = res.nextFleetSeq;
      }
    };
    const feed = await until("the retained entries merged", async () => {
      const rows = await readFeed();
      return rows.length >= retained.length ? rows : undefined;
    });
    assert.deepEqual(checkFleetFeed(new Map([["h0", retained]]), feed), [], "the feed is exactly the retained ledger, fleet_seq gapless");
    const h = (await fleet.listHosts({})).hosts[0]!.metering!;
    assert.equal(h.acceptedGaps, 1);
    assert.equal(h.agentFirstRetainedSeq, 0n);
    // Accepting again: there is no gap any more.
    await bad(["--ledger-id", stuck.ledgerId, "--resume-seq", String(firstRetained), "--reason", "again"], /failed_precondition.*no gap/);
    // New entries flow.
    const before = feed.length;
    await flips(8);
    await until("new entries merged", async () => ((await readFeed()).length >= before + 8 ? true : undefined));
    fleetT.close();
    agentT.close();
  });

  it("a replaced agent ledger is not followed until an admin accepts the change; then it is, from seq 1", async () => {
    const fleetT = createGrpcJsTransport(aggregator!.address);
    const fleet = createClient(FleetService, fleetT);
    try {
      const readAll = async () => {
        const rows = [];
        let from = 1n;
        for (;;) {
          const res = await fleet.readMeteringEntries({ fromFleetSeq: from, limit: 10_000 });
          rows.push(...res.entries);
          if (res.entries.length === 0) return rows;
          from = res.nextFleetSeq;
        }
      };
      const before = await until("the feed caught up", async () => {
        const m = (await fleet.listHosts({})).hosts[0]?.metering;
        return m && m.lagEntries === 0n && m.lastError === "" ? m : undefined;
      });
      const feedBefore = (await readAll()).length;
      // The agent's metering directory is lost: the same agent (same address) starts a new ledger.
      const address = agent!.address;
      await agent!.stop();
      rmSync(join(agentDir.path, "metering"), { recursive: true, force: true });
      agent = await startDaemon(["agent", "--listen", address, "--state-dir", agentDir.path, "--metrics-listen", "off", "--runtime", "none", "--standby", "off"]);
      await flips(6);
      const newLedger = JSON.parse(agentLedgerLines(agentDir.path)[0]!) as { ledger?: string };
      const pending = await until("the aggregator reports the pending ledger", async () => {
        const m = (await fleet.listHosts({})).hosts[0]?.metering;
        return m?.pendingLedgerId ? m : undefined;
      });
      assert.notEqual(pending.pendingLedgerId, before.ledgerId);
      if (newLedger.ledger !== undefined) assert.equal(pending.pendingLedgerId, newLedger.ledger);
      assert.equal(pending.ledgerId, before.ledgerId, "still followed at the old ledger");
      assert.match(pending.lastError, new RegExp(`^FAILED_PRECONDITION: host h0 is followed at ledger ${before.ledgerId} \\(merged up to seq \\d+\\) but reports ledger ${pending.pendingLedgerId}: nothing of it is merged until an admin accepts the change`));
      await new Promise((r) => setTimeout(r, 1500));
      assert.equal((await readAll()).length, feedBefore, "nothing of the new ledger merged on its own");
      const shown = await runFleetlet(["get", "metering", "--aggregator", aggregator!.address]);
      assert.match(shown.stdout, new RegExp(`fleetlet metering accept-gap h0 --ledger-id ${pending.pendingLedgerId} --resume-seq 1`));

      // Only the ledger the agent reports can be accepted.
      const wrong = await runFleetlet(["metering", "accept-gap", "h0", "--aggregator", aggregator!.address, "--ledger-id", "00000000000000ff", "--resume-seq", "1", "--reason", "x"]);
      assert.equal(wrong.code, 1);
      assert.match(wrong.stderr, /invalid_argument.*resume_seq: must be between 2/);
      const ok = await runFleetlet(["metering", "accept-gap", "h0", "--aggregator", aggregator!.address, "--ledger-id", pending.pendingLedgerId, "--resume-seq", "1", "--reason", "metering dir lost in test"]);
      assert.equal(ok.code, 0, ok.stderr);
      assert.equal(ok.stdout, `accepted: host h0 ledger ${pending.pendingLedgerId}: nothing of it given up; following from 1\n`);
      const lines = agentLedgerLines(agentDir.path);
      const merged = await until("the new ledger merged", async () => {
        const rows = (await readAll()).filter((e) => e.ledgerId === pending.pendingLedgerId);
        return rows.length >= lines.length ? rows : undefined;
      });
      assert.deepEqual(
        merged.map((e) => [Number(e.seq), e.line]),
        lines.map((l, i) => [i + 1, l]),
        "the new ledger from seq 1, byte for byte",
      );
      const after = (await fleet.listHosts({})).hosts[0]!.metering!;
      assert.deepEqual([after.ledgerId, after.pendingLedgerId, after.ledgerChanges, after.lastError], [pending.pendingLedgerId, "", before.ledgerChanges + 1, ""]);
      const db = new Database(join(secondStore.path, METERING_STORE_FILE), { readonly: true });
      const change = db.prepare("SELECT from_ledger_id AS f, to_ledger_id AS t, reason FROM host_ledger_changes WHERE host = 'h0'").get() as { f: string; t: string; reason: string };
      db.close();
      assert.deepEqual(change, { f: before.ledgerId, t: pending.pendingLedgerId, reason: "metering dir lost in test (accepted by local)" });
    } finally {
      fleetT.close();
    }
  }, 60_000);
});
