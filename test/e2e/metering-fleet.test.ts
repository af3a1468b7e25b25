import { afterAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import { createClient } from "@connectrpc/connect";
import { InstanceState, InventoryService } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { FleetService } from "../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { createGrpcJsTransport } from "../../lib/rpc/grpc-transport.js";
import { startDaemon, type DaemonProcess } from "../helpers/daemon-process.js";
import { agentLedgerLines, checkFleetFeed, type FleetRow } from "../helpers/metering-checker.js";
import { tempDir } from "../helpers/temp-dir.js";

// The fleet feed, exactly once whatever crashes (metering.md check 5, at a CI-sized count):
// 3 agents write entries through lifecycle RPCs while the aggregator is SIGKILLed and restarted
// twice, one agent is SIGKILLed and restarted, and one is SIGSTOPped for a while (a partition);
// then every agent's ledger must equal its slice of the merged feed, fleet_seq gapless.

const N = 3;
const agentDirs = Array.from({ length: N }, (_, i) => tempDir(`mf-a${i}`));
const aggDir = tempDir("mf-agg");
const agents: (DaemonProcess | undefined)[] = [];
let aggregator: DaemonProcess | undefined;
const ports: number[] = [];

afterAll(async () => {
  for (const a of agents) a?.child.kill("SIGCONT");
  await Promise.all([...agents.map((a) => a?.stop()), aggregator?.stop()]);
  for (const d of [...agentDirs, aggDir]) d.remove();
});

const startAgent = (i: number) =>
  startDaemon(["agent", "--listen", `127.0.0.1:${ports[i] ?? 0}`, "--state-dir", agentDirs[i]!.path, "--metrics-listen", "off", "--runtime", "none", "--standby", "off"]);
const startAggregator = () =>
  startDaemon(["aggregator", "--listen", "127.0.0.1:0", "--state-dir", aggDir.path, "--metrics-listen", "off", "--hosts", agents.map((_, i) => `h${i}=127.0.0.1:${ports[i]}`).join(",")]);

describe("the merged metering feed under crashes", () => {
  it("every agent's ledger equals its slice of the feed: none lost, none duplicated, fleet_seq gapless", async () => {
    for (let i = 0; i < N; i++) {
      const a = await startAgent(i);
      agents[i] = a;
      ports[i] = Number(a.address.split(":").at(-1));
    }
    aggregator = await startAggregator();
    let stop = false;
    let acked = 0;
    // One writer per agent, flipping its instances between RUNNING and STOPPED (2 entries per
    // round trip), reconnecting whenever its agent is restarted.
    const writers = agents.map(async (_, i) => {
      while (!stop) {
        const a = agents[i];
        if (!a) {
          await new Promise((r) => setTimeout(r, 50));
          continue;
        }
        const t = createGrpcJsTransport(a.address);
        const inv = createClient(InventoryService, t);
        try {
          for (let k = 0; k < 200 && !stop; k++) {
            const id = `vm${k % 8}`;
            await inv.registerInstance({ instance: { id, state: Math.floor(k / 8) % 2 === 0 ? InstanceState.RUNNING : InstanceState.STOPPED } }, { timeoutMs: 3000 });
            acked++;
          }
        } catch {
          await new Promise((r) => setTimeout(r, 50)); // killed or stopped: try again
        } finally {
          t.close();
        }
      }
    });
    const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));
    await pause(800);
    aggregator.child.kill("SIGKILL");
    await aggregator.exited;
    aggregator = await startAggregator();
    await pause(600);
    agents[1]!.child.kill("SIGKILL");
    await agents[1]!.exited;
    agents[1] = undefined;
    agents[1] = await startAgent(1);
    agents[2]!.child.kill("SIGSTOP"); // a partition: accepts connections, answers nothing
    await pause(1500);
    agents[2]!.child.kill("SIGCONT");
    await pause(500);
    aggregator.child.kill("SIGKILL");
    await aggregator.exited;
    aggregator = await startAggregator();
    await pause(500);
    stop = true;
    await Promise.all(writers);
    assert.ok(acked > 100, `${acked} transitions acknowledged`);

    // Wait until the aggregator has merged everything every agent has written.
    const t = createGrpcJsTransport(aggregator.address);
    const fleet = createClient(FleetService, t);
    try {
      const ledgers = new Map(agentDirs.map((d, i) => [`h${i}`, agentLedgerLines(d.path)]));
      const total = [...ledgers.values()].reduce((n, l) => n + l.length, 0);
      let feed: FleetRow[] = [];
      for (let tries = 0; tries < 100; tries++) {
        feed = [];
        for (let from = 1n; ; ) {
          const res = await fleet.readMeteringEntries({ fromFleetSeq: from, limit: 10_000 });
          feed.push(...res.entries.map((e) => ({ fleetSeq: Number(e.fleetSeq), host: e.host, seq: Number(e.seq), line: e.line })));
          if (res.entries.length === 0) break;
          from = res.nextFleetSeq;
        }
        if (feed.length >= total) break;
        await pause(100);
      }
      assert.deepEqual(checkFleetFeed(ledgers, feed), []);
      assert.ok(total > 100, `${total} entries in all`);
      const hosts = (await fleet.listHosts({})).hosts;
      for (const h of hosts) assert.equal(h.metering?.lagEntries, 0n, `${h.name} caught up`);
    } finally {
      t.close();
    }
  });
});
