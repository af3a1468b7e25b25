import { afterAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import { createClient } from "@connectrpc/connect";
import { InstanceState, InventoryService } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { MeteringService, type MeteringEntry } from "../../gen/fleetlet/agent/v1/metering_pb.js";
import { createGrpcJsTransport } from "../../lib/rpc/grpc-transport.js";
import { emittedAtNs } from "../../cli/metering-intervals.js";
import { fleetClient } from "../helpers/clients.js";
import { agentLedgerLines } from "../helpers/metering-checker.js";
import { runFleetlet, startDaemon, type DaemonProcess } from "../helpers/daemon-process.js";
import { tempDir } from "../helpers/temp-dir.js";

// Resizes metered end to end (issue 12 point 2): an instance re-registered with another shape
// through the agent's gRPC port splits its open intervals (reason `resize`, one emitted_at),
// `fleetlet metering intervals` over the merged feed bills exactly what the instance had, and a
// SIGKILL in a storm of resizes leaves registry and ledger agreeing on every shape.

const GI = 1n << 30n;
const dirs: ReturnType<typeof tempDir>[] = [];
const daemons: DaemonProcess[] = [];
afterAll(async () => {
  await Promise.all(daemons.map((d) => d.stop()));
  for (const d of dirs) d.remove();
});

const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));
function agentClients(address: string) {
  const transport = createGrpcJsTransport(address);
  return { inventory: createClient(InventoryService, transport), metering: createClient(MeteringService, transport), close: () => transport.close() };
}

const agentArgs = (stateDir: string) => ["agent", "--listen", "127.0.0.1:0", "--state-dir", stateDir, "--metrics-listen", "off", "--runtime", "none", "--standby", "off"];

describe("metering resize end to end", () => {
  it("resizes through RegisterInstance split the intervals, and `fleetlet metering intervals` bills exactly the vCPU-seconds the instance had", async () => {
    const agentDir = tempDir("resize-agent");
    const aggDir = tempDir("resize-agg");
    dirs.push(agentDir, aggDir);
    const agent = await startDaemon(agentArgs(agentDir.path));
    daemons.push(agent);
    const aggregator = await startDaemon(["aggregator", "--listen", "127.0.0.1:0", "--state-dir", aggDir.path, "--metrics-listen", "off", "--hosts", `h1=${agent.address}`]);
    daemons.push(aggregator);
    const c = agentClients(agent.address);
    /** The instance's life as the test drives it: each step's state and shape, and when it was asked for. */
    const steps: { state: InstanceState; cpu: number; mem: bigint; before: number; after: number; entries: number }[] = [];
    const base = { id: "vm1", hypervisor: "qemu", allocatedStorageBytes: 10n * GI };
    let seqBefore = 0n;
    const step = async (state: InstanceState, cpu: number, mem: bigint, call: () => Promise<unknown>) => {
      const before = Date.now();
      await call();
      const after = Date.now();
      const last = (await c.metering.readMeteringEntries({ fromSeq: 1n })).nextSeq - 1n;
      steps.push({ state, cpu, mem, before, after, entries: Number(last - seqBefore) });
      seqBefore = last;
      await pause(250);
    };
    const register = (state: InstanceState, cpu: number, mem: bigint) => step(state, cpu, mem, () => c.inventory.registerInstance({ instance: { ...base, state, allocatedVcpus: cpu, allocatedMemoryBytes: mem } }));
    try {
      await register(InstanceState.RUNNING, 2, GI); // boot
      await register(InstanceState.RUNNING, 4, GI); // resize RUNNING: compute and storage split
      await register(InstanceState.RUNNING, 4, 3n * GI); // memory only: a resize too
      await step(InstanceState.STANDBY, 4, 3n * GI, () => c.inventory.setInstanceState({ instanceId: "vm1", state: InstanceState.STANDBY }));
      await register(InstanceState.STANDBY, 1, 3n * GI); // resize in STANDBY: storage only
      await step(InstanceState.RUNNING, 1, 3n * GI, () => c.inventory.setInstanceState({ instanceId: "vm1", state: InstanceState.RUNNING }));
      await register(InstanceState.RUNNING, 8, 2n * GI);
      const got = (await c.inventory.getInstance({ instanceId: "vm1" })).instance!;
      assert.deepEqual([got.allocatedVcpus, got.allocatedMemoryBytes], [8, 2n * GI]);

      const res = await c.metering.readMeteringEntries({ fromSeq: 1n });
      const show = (e: MeteringEntry) => `${e.kind} ${e.reason} ${e.shape?.cpu ?? 0}`;
      assert.deepEqual(res.entries.map(show), [
        "vm.storage.start boot 2",
        "vm.compute.start boot 2",
        "vm.compute.stop resize 2",
        "vm.storage.stop resize 2",
        "vm.storage.start resize 4",
        "vm.compute.start resize 4",
        "vm.compute.stop resize 4",
        "vm.storage.stop resize 4",
        "vm.storage.start resize 4",
        "vm.compute.start resize 4",
        "vm.compute.stop standby 4",
        "vm.storage.stop resize 4",
        "vm.storage.start resize 1",
        "vm.compute.start hibernate-wake 1",
        "vm.compute.stop resize 1",
        "vm.storage.stop resize 1",
        "vm.storage.start resize 8",
        "vm.compute.start resize 8",
      ]);
      assert.deepEqual(res.entries.map((e) => e.line), agentLedgerLines(agentDir.path), "durable in the ledger file");
      // Each step's entries share one emitted_at, taken while its RPC was in flight.
      const stepAtMs: number[] = [];
      let k = 0;
      for (const s of steps) {
        const mine = res.entries.slice(k, k + s.entries);
        k += s.entries;
        const at = new Set(mine.map((e) => JSON.parse(e.line).emitted_at as string));
        assert.equal(at.size, 1, `one emitted_at per step: ${[...at].join(", ")}`);
        // Through microseconds: nanoseconds since 1970 are past a double's exact integers.
        const ms = Number(emittedAtNs([...at][0]!) / 1000n) / 1000;
        assert.ok(ms >= s.before && ms <= s.after, `emitted_at ${ms} within the call [${s.before}, ${s.after}]`);
        stepAtMs.push(ms);
      }

      // The merged feed, then the command billing downstream runs.
      const fc = fleetClient(aggregator.address);
      try {
        for (let tries = 0; ; tries++) {
          const host = (await fc.fleet.listHosts({})).hosts[0]?.metering;
          if (host?.lagEntries === 0n && host.agentLastSeq === BigInt(res.entries.length)) break;
          if (tries > 150) assert.fail(`the aggregator did not merge the ${res.entries.length} entries`);
          await pause(100);
        }
      } finally {
        fc.close();
      }
      const asOfMs = stepAtMs.at(-1)! + 60_000;
      const r = await runFleetlet(["metering", "intervals", "--aggregator", aggregator.address, "--vm", "vm1", "--as-of", new Date(asOfMs).toISOString(), "-o", "json"]);
      assert.equal(r.code, 0, r.stderr);
      const doc = JSON.parse(r.stdout) as { intervals: { kind: string; status: string; shape: { cpu?: number; mem_bytes?: number }; duration_ms: number; stop_shape?: unknown }[]; problems: unknown[] };
      assert.deepEqual(doc.problems, []);
      assert.ok(doc.intervals.every((i) => (i.status === "closed" || i.status === "open") && i.stop_shape === undefined));
      assert.equal(doc.intervals.filter((i) => i.kind === "vm.compute").length, 5, "boot, 2 resizes, wake, resize: five compute pieces");

      // Independently: vCPU-ms and GiB-ms of memory while RUNNING, from the shapes the test set
      // and the moment each step took effect; the intervals must add up to exactly that.
      let cpuMs = 0;
      let memGiMs = 0;
      for (const [i, s] of steps.entries()) {
        if (s.state !== InstanceState.RUNNING) continue;
        const forMs = (stepAtMs[i + 1] ?? asOfMs) - stepAtMs[i]!;
        cpuMs += s.cpu * forMs;
        memGiMs += Number(s.mem / GI) * forMs;
      }
      // duration_ms is rounded to the millisecond per interval: exact when the agent's
      // timestamps are whole milliseconds (they are today), within half a millisecond per
      // interval otherwise.
      const compute = doc.intervals.filter((i) => i.kind === "vm.compute");
      const within = (got: number, want: number, perMs: (i: (typeof compute)[number]) => number, what: string) => {
        const slack = compute.reduce((a, i) => a + perMs(i) * 0.5, 0);
        assert.ok(Math.abs(got - want) <= slack, `${what}: intervals ${got}, the instance had ${want} (± ${slack})`);
        if (stepAtMs.every(Number.isInteger)) assert.equal(got, want, what);
      };
      const cpuOf = (i: (typeof compute)[number]) => i.shape.cpu ?? 0;
      const memOf = (i: (typeof compute)[number]) => (i.shape.mem_bytes ?? 0) / 2 ** 30;
      within(compute.reduce((a, i) => a + cpuOf(i) * i.duration_ms, 0), cpuMs, cpuOf, "vCPU-ms");
      within(compute.reduce((a, i) => a + memOf(i) * i.duration_ms, 0), memGiMs, memOf, "GiB-ms of memory");
      // Storage ran all along, split four times.
      const storage = doc.intervals.filter((i) => i.kind === "vm.storage");
      assert.equal(storage.length, 5);
      assert.ok(Math.abs(storage.reduce((a, i) => a + i.duration_ms, 0) - (asOfMs - stepAtMs[0]!)) <= storage.length * 0.5);

      const table = await runFleetlet(["metering", "intervals", "--aggregator", aggregator.address, "--as-of", new Date(asOfMs).toISOString()]);
      assert.equal(table.code, 0, table.stderr);
      assert.match(table.stdout, /\n\n8 closed, 2 open, 7 split by a resize; fleet_seq 1\.\.18; open ones as of /);
    } finally {
      c.close();
    }
  });

  it("SIGKILL during a storm of resizes: after restart, each instance's open intervals carry the shape the registry has", async () => {
    const dir = tempDir("resize-kill");
    dirs.push(dir);
    const ids = Array.from({ length: 12 }, (_, i) => `r${i}`);
    for (let round = 0; round < 3; round++) {
      const agent = await startDaemon(agentArgs(dir.path));
      daemons.push(agent);
      const c = agentClients(agent.address);
      let stop = false;
      const storm = ids.map(async (id, n) => {
        for (let i = 0; !stop; i++) {
          // Alternating states too, so resizes meet RUNNING and STOPPED instances alike.
          const state = (i + n) % 3 === 0 ? InstanceState.STOPPED : InstanceState.RUNNING;
          try {
            await c.inventory.registerInstance({ instance: { id, state, allocatedVcpus: 1 + ((i * 7 + n) % 5), allocatedMemoryBytes: BigInt(1 + (i % 3)) * GI } });
          } catch {
            return; // the agent is gone
          }
        }
      });
      await pause(300 + Math.random() * 500);
      agent.child.kill("SIGKILL");
      stop = true;
      await agent.exited;
      await Promise.all(storm);
      c.close();
      daemons.splice(daemons.indexOf(agent), 1);

      const again = await startDaemon(agentArgs(dir.path));
      daemons.push(again);
      const c2 = agentClients(again.address);
      try {
        const instances = (await c2.inventory.listInstances({})).instances;
        const lines = agentLedgerLines(dir.path).map((l) => JSON.parse(l) as { seq: number; kind: string; vm_id?: string; reason?: string; shape: { cpu?: number; mem_bytes?: number } });
        assert.deepEqual(lines.map((l) => l.seq), lines.map((_, i) => i + 1), "seq gapless from 1");
        assert.ok(lines.some((l) => l.reason === "resize"), "the storm resized");
        for (const id of ids) {
          const inst = instances.find((x) => x.id === id);
          if (!inst) continue; // its first registration never became durable
          for (const family of ["vm.compute", "vm.storage"]) {
            const mine = lines.filter((l) => l.vm_id === id && l.kind.startsWith(family));
            let open: (typeof lines)[number] | undefined;
            for (const l of mine) {
              if (l.kind.endsWith(".start")) {
                assert.equal(open, undefined, `round ${round} ${id}: ${family} started twice (seq ${l.seq})`);
                open = l;
              } else {
                assert.deepEqual(l.shape, open?.shape, `round ${round} ${id}: ${family} stop at seq ${l.seq} with another shape than its start`);
                open = undefined;
              }
            }
            const shouldBeOpen: boolean = family === "vm.storage" || inst.state === InstanceState.RUNNING;
            assert.equal(open !== undefined, shouldBeOpen, `round ${round} ${id}: ${family} open in the ledger vs ${InstanceState[inst.state]} in the registry`);
            if (open) assert.deepEqual([open.shape.cpu, open.shape.mem_bytes], [inst.allocatedVcpus, Number(inst.allocatedMemoryBytes)], `round ${round} ${id}: the open ${family} interval's shape is the registry's`);
          }
        }
      } finally {
        c2.close();
        await again.stop();
        daemons.splice(daemons.indexOf(again), 1);
      }
    }
  });
});
