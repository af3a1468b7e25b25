import { afterEach, beforeEach, describe, it, vi } from "vitest";
import assert from "node:assert/strict";
import { join } from "node:path";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { InstanceSchema, InstanceState } from "../../../gen/fleetlet/agent/v1/inventory_pb.js";
import { InstanceRegistry } from "../../../agent/inventory/instance-registry.js";
import { RegistryStore } from "../../../agent/inventory/registry-store.js";
import { MeteringLedger } from "../../../agent/metering/ledger.js";
import { pairIntervals } from "../../../cli/metering-intervals.js";
import { tempDir } from "../../helpers/temp-dir.js";

// A resize (an instance re-registered with another shape) goes through the registry's one path
// for changes: its entries are computed with the change, committed in the same registry write
// (pending entries included) and appended to the real ledger before the caller hears OK.

const GI = 1n << 30n;
let dir: ReturnType<typeof tempDir>;
const open: { registry?: InstanceRegistry; ledger?: MeteringLedger }[] = [];

beforeEach(() => (dir = tempDir("reg-resize")));
afterEach(async () => {
  vi.useRealTimers();
  for (const o of open.splice(0)) {
    o.registry?.close();
    await o.ledger?.close();
  }
  dir.remove();
});

function vm(fields: MessageInitShape<typeof InstanceSchema>) {
  return create(InstanceSchema, { id: "vm1", state: InstanceState.RUNNING, hypervisor: "qemu", allocatedVcpus: 2, allocatedMemoryBytes: GI, allocatedStorageBytes: 10n * GI, ...fields });
}

async function start(): Promise<{ registry: InstanceRegistry; ledger: MeteringLedger }> {
  const registry = InstanceRegistry.open(dir.path);
  const ledger = MeteringLedger.open(join(dir.path, "metering"));
  open.push({ registry, ledger });
  await registry.attachLedger(ledger);
  return { registry, ledger };
}

const lines = (l: MeteringLedger) => l.read(1, 1000).map((e) => `${e.kind} ${e.reason} ${e.shape.cpu}`);

describe("registry: resize", () => {
  it("re-registering a RUNNING instance with more vCPUs is acknowledged with its resize entries durable in the ledger", async () => {
    const { registry, ledger } = await start();
    await registry.upsert(vm({ allocatedVcpus: 2 }));
    const stored = await registry.upsert(vm({ allocatedVcpus: 4 }));
    assert.equal(stored.allocatedVcpus, 4);
    // Durable on return: lastSeq is the fdatasync'd end.
    assert.equal(ledger.lastSeq, 6);
    assert.deepEqual(lines(ledger), [
      "vm.storage.start boot 2",
      "vm.compute.start boot 2",
      "vm.compute.stop resize 2",
      "vm.storage.stop resize 2",
      "vm.storage.start resize 4",
      "vm.compute.start resize 4",
    ]);
    const resize = ledger.read(3, 4);
    assert.equal(new Set(resize.map((e) => e.emittedAtNs)).size, 1, "one emitted_at for the resize");
    // The same shape again is not a resize.
    await registry.upsert(vm({ allocatedVcpus: 4 }));
    assert.equal(ledger.lastSeq, 6);
  });

  it("a resize of a STANDBY instance resizes only its open storage interval; the wake starts compute with the new shape", async () => {
    const { registry, ledger } = await start();
    await registry.upsert(vm({ allocatedVcpus: 2 }));
    await registry.setState("vm1", InstanceState.STANDBY, "standby");
    await registry.upsert(vm({ state: InstanceState.STANDBY, allocatedVcpus: 8 }));
    await registry.setState("vm1", InstanceState.RUNNING, "wake");
    assert.deepEqual(lines(ledger).slice(2), ["vm.compute.stop standby 2", "vm.storage.stop resize 2", "vm.storage.start resize 8", "vm.compute.start hibernate-wake 8"]);
  });

  it("a crash between the registry commit and the ledger append: the restarted agent appends the resize entries once, with the new shape in the registry", async () => {
    const first = await start();
    await first.registry.upsert(vm({ allocatedVcpus: 2 }));
    // The ledger append of the resize fails as a crash would leave it: committed in the
    // registry (pending entries), absent from the ledger.
    const append = first.ledger.append.bind(first.ledger);
    first.ledger.append = async () => {
      throw new Error("simulated crash before the ledger write");
    };
    await assert.rejects(first.registry.upsert(vm({ allocatedVcpus: 6, allocatedMemoryBytes: 3n * GI })), /could not append to the metering ledger/);
    first.ledger.append = append;
    first.registry.close();
    const pending = RegistryStore.open(dir.path).state?.pending;
    assert.deepEqual(((pending?.entries ?? []) as { reason: string }[]).map((e) => e.reason), ["resize", "resize", "resize", "resize"]);
    await first.ledger.close();
    open.length = 0;

    const second = await start();
    assert.equal(second.registry.get("vm1")?.allocatedVcpus, 6);
    assert.deepEqual(lines(second.ledger), ["vm.storage.start boot 2", "vm.compute.start boot 2", "vm.compute.stop resize 2", "vm.storage.stop resize 2", "vm.storage.start resize 6", "vm.compute.start resize 6"]);
    assert.equal(second.ledger.read(6, 1)[0]?.shape.memBytes, 3 * 2 ** 30);
    second.registry.close();
    await second.ledger.close();
    open.length = 0;
    // And once only: a third start finds registry and ledger in agreement.
    const third = await start();
    assert.equal(third.ledger.lastSeq, 6);
  });

  it("acceptance: the intervals paired from the ledger's lines bill exactly the vCPU-seconds and byte-seconds the instance had", async () => {
    // Only Date is faked (the registry's timestamps); the ledger's I/O runs for real.
    vi.useFakeTimers({ toFake: ["Date"] });
    const t0 = Date.parse("2026-05-20T01:00:00Z");
    /** The instance's life: at `at` ms it is in `state` with `cpu` vCPUs and `mem` GiB. */
    const life: { at: number; state: InstanceState; cpu: number; mem: number }[] = [
      { at: 0, state: InstanceState.RUNNING, cpu: 2, mem: 1 },
      { at: 30_000, state: InstanceState.RUNNING, cpu: 4, mem: 1 },
      { at: 45_500, state: InstanceState.RUNNING, cpu: 4, mem: 3 },
      { at: 60_000, state: InstanceState.STANDBY, cpu: 4, mem: 3 },
      { at: 90_000, state: InstanceState.STANDBY, cpu: 1, mem: 3 },
      { at: 120_000, state: InstanceState.RUNNING, cpu: 1, mem: 3 },
      { at: 150_250, state: InstanceState.ERROR, cpu: 1, mem: 3 },
      { at: 151_000, state: InstanceState.ERROR, cpu: 8, mem: 2 },
      { at: 200_000, state: InstanceState.STOPPED, cpu: 2, mem: 2 },
      { at: 210_000, state: InstanceState.RUNNING, cpu: 2, mem: 2 },
    ];
    const asOf = t0 + 300_000;
    const { registry, ledger } = await start();
    for (const s of life) {
      vi.setSystemTime(t0 + s.at);
      const cause = s.state === InstanceState.STANDBY ? "standby" : "request";
      await registry.upsert(vm({ state: s.state, allocatedVcpus: s.cpu, allocatedMemoryBytes: BigInt(s.mem) * GI }), { cause });
    }
    // Independently of the ledger: compute is billed while RUNNING, and in ERROR entered from
    // RUNNING (metering.md: the interval stays open); storage all along.
    let cpuMs = 0;
    let memGiMs = 0;
    let storageCpuMs = 0;
    let computeOpen = false;
    for (const [i, s] of life.entries()) {
      const until = (life[i + 1]?.at ?? asOf - t0) - s.at;
      computeOpen = s.state === InstanceState.RUNNING || (s.state === InstanceState.ERROR && computeOpen);
      if (computeOpen) {
        cpuMs += s.cpu * until;
        memGiMs += s.mem * until;
      }
      storageCpuMs += s.cpu * until;
    }
    const { intervals, problems } = pairIntervals(
      ledger.read(1, 1000).map((e) => ({ host: "", ledgerId: "L", line: e.line })),
      asOf,
    );
    assert.deepEqual(problems, []);
    const sum = (family: string, f: (shape: (typeof intervals)[number]["shape"]) => number) =>
      intervals.filter((x) => x.family === family).reduce((a, x) => a + f(x.shape) * x.durationMs!, 0);
    assert.equal(sum("vm.compute", (s) => s.cpu ?? 0), cpuMs);
    assert.equal(sum("vm.compute", (s) => (s.mem_bytes ?? 0) / 2 ** 30), memGiMs);
    // Storage intervals carry the full shape too: their vCPUs follow the instance's.
    assert.equal(sum("vm.storage", (s) => s.cpu ?? 0), storageCpuMs);
    assert.equal(intervals.filter((x) => x.family === "vm.storage").reduce((a, x) => a + x.durationMs!, 0), asOf - t0);
    assert.ok(intervals.every((x) => x.status === "closed" || x.status === "open"));
    // Resized: twice while RUNNING (4 each), in STANDBY (storage: 2), in ERROR (4), with the stop (storage: 2).
    assert.equal(ledger.read(1, 1000).filter((e) => e.reason === "resize").length, 16);
  });
});
