import { afterAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createClient } from "@connectrpc/connect";
import { InstanceState, InventoryService } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { MeteringService, type WatchMeteringEntriesResponse } from "../../gen/fleetlet/agent/v1/metering_pb.js";
import { createGrpcJsTransport } from "../../lib/rpc/grpc-transport.js";
import { startDaemon, type DaemonProcess } from "../helpers/daemon-process.js";
import { tempDir } from "../helpers/temp-dir.js";
import { agentLedgerLines } from "../helpers/metering-checker.js";

// Metering end to end on a real agent process: lifecycle RPCs and a real crash produce the
// ledger entries of metering.md; MeteringService serves exactly the bytes on disk; after SIGKILL
// during a storm of transitions, the restarted agent's registry and ledger agree.

const state = tempDir("metering-e2e");
let agent: DaemonProcess | undefined;
afterAll(async () => {
  await agent?.stop();
  state.remove();
});

const start = () => startDaemon(["agent", "--listen", "127.0.0.1:0", "--state-dir", state.path, "--metrics-listen", "off", "--runtime", "none", "--standby", "off"]);

const ledgerLines = () => agentLedgerLines(state.path);

function clients(address: string) {
  const transport = createGrpcJsTransport(address);
  return { inventory: createClient(InventoryService, transport), metering: createClient(MeteringService, transport), close: () => transport.close() };
}

describe("metering on a real agent", () => {
  it("lifecycle RPCs and a crash write metering.md's entries; the service serves the ledger's bytes", async () => {
    agent = await start();
    const c = clients(agent.address);
    try {
      const sleeper = spawn("sleep", ["1000"], { stdio: "ignore" });
      await c.inventory.registerInstance({ instance: { id: "vm1", pid: sleeper.pid, hypervisor: "cloud-hypervisor", allocatedVcpus: 4, allocatedMemoryBytes: 1n << 30n } });
      await c.inventory.setInstanceState({ instanceId: "vm1", state: InstanceState.STOPPED });
      await c.inventory.setInstanceState({ instanceId: "vm1", state: InstanceState.STOPPED }); // no-op
      await c.inventory.setInstanceState({ instanceId: "vm1", state: InstanceState.RUNNING });
      sleeper.kill("SIGKILL");
      // The agent notices the process is gone (every 2 s) and stops the instance: stop-crash.
      for (let i = 0; i < 50 && (await c.inventory.getInstance({ instanceId: "vm1" })).instance?.state !== InstanceState.STOPPED; i++) await new Promise((r) => setTimeout(r, 100));
      assert.equal((await c.inventory.getInstance({ instanceId: "vm1" })).instance?.state, InstanceState.STOPPED);
      await c.inventory.registerSnapshot({ snapshot: { id: "snap1", instanceId: "vm1", hypervisor: "cloud-hypervisor", storageBytes: 1000n } });
      await c.inventory.removeSnapshot({ snapshotId: "snap1" });
      await assert.rejects(c.inventory.removeSnapshot({ snapshotId: "snap1" }), /not found/);
      await c.inventory.deregisterInstance({ instanceId: "vm1" });

      const res = await c.metering.readMeteringEntries({ fromSeq: 1n });
      assert.deepEqual(
        res.entries.map((e) => `${e.seq} ${e.kind} ${e.reason || "-"}`),
        [
          "1 vm.storage.start boot",
          "2 vm.compute.start boot",
          "3 vm.compute.stop stop-user",
          "4 vm.compute.start restart",
          "5 vm.compute.stop stop-crash",
          "6 snap.storage.start -",
          "7 snap.storage.stop snap-rm",
          "8 vm.storage.stop vm-rm",
        ],
      );
      assert.deepEqual(res.entries.map((e) => e.line), ledgerLines(), "the service serves the ledger's lines byte for byte");
      assert.match(res.entries[0]!.line, /^\{"seq":1,"kind":"vm\.storage\.start","vm_id":"vm1","reason":"boot","hypervisor":"cloud-hypervisor","shape":\{"cpu":4,"mem_bytes":1073741824\},"emitted_at":"[0-9T:.-]+Z"\}$/);
      assert.equal(res.nextSeq, 9n);
      assert.match(res.ledgerId, /^[0-9a-f]{16}$/);

      // Watch: the backlog, then a live entry.
      const ac = new AbortController();
      const it = c.metering.watchMeteringEntries({ fromSeq: 7n, ledgerId: res.ledgerId }, { signal: ac.signal })[Symbol.asyncIterator]();
      const backlog = (await it.next()).value as WatchMeteringEntriesResponse;
      assert.deepEqual(backlog.entries.map((e) => e.seq), [7n, 8n]);
      await c.inventory.registerInstance({ instance: { id: "vm2", state: InstanceState.CREATED } });
      const live = (await it.next()).value as WatchMeteringEntriesResponse;
      assert.deepEqual(live.entries.map((e) => `${e.seq} ${e.kind} ${e.vmId}`), ["9 vm.storage.start vm2"]);
      ac.abort();
      await assert.rejects(c.metering.readMeteringEntries({ fromSeq: 1n, ledgerId: "0000000000000000" }), /out_of_range[\s\S]*current ledger_id=/i);
    } finally {
      c.close();
    }
  });

  it("SIGKILL during a storm of transitions: after restart, registry and ledger agree for every instance", async () => {
    const ids = Array.from({ length: 16 }, (_, i) => `s${i}`);
    for (let round = 0; round < 3; round++) {
      agent ??= await start();
      const c = clients(agent.address);
      for (const id of ids) await c.inventory.registerInstance({ instance: { id, state: InstanceState.STOPPED } }).catch(() => undefined);
      let stop = false;
      const storm = ids.map(async (id) => {
        for (let i = 0; !stop; i++) {
          try {
            await c.inventory.setInstanceState({ instanceId: id, state: i % 2 === 0 ? InstanceState.RUNNING : InstanceState.STOPPED });
          } catch {
            return; // the agent is gone
          }
        }
      });
      await new Promise((r) => setTimeout(r, 300 + Math.random() * 500));
      agent.child.kill("SIGKILL");
      stop = true;
      await agent.exited;
      await Promise.all(storm);
      c.close();
      agent = await start();
      const c2 = clients(agent.address);
      try {
        const instances = (await c2.inventory.listInstances({})).instances;
        const lines = ledgerLines().map((l) => JSON.parse(l) as { seq: number; kind: string; vm_id?: string });
        assert.deepEqual(lines.map((l) => l.seq), lines.map((_, i) => i + 1), "seq gapless from 1");
        for (const id of ids) {
          // Intervals alternate start/stop, and the last one says what the registry says.
          const compute = lines.filter((l) => l.vm_id === id && l.kind.startsWith("vm.compute"));
          compute.forEach((l, i) => assert.equal(l.kind, i % 2 === 0 ? "vm.compute.start" : "vm.compute.stop", `${id}: entry ${i}`));
          const running = compute.length % 2 === 1;
          const inst = instances.find((x) => x.id === id)!;
          assert.equal(inst.state === InstanceState.RUNNING, running, `round ${round} ${id}: registry ${InstanceState[inst.state]}, ledger ${running ? "open" : "closed"} compute interval`);
        }
      } finally {
        c2.close();
      }
    }
  });
});
