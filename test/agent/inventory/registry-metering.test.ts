import { afterEach, beforeEach, describe, it } from "vitest";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { InstanceSchema, InstanceState, SnapshotSchema } from "../../../gen/fleetlet/agent/v1/inventory_pb.js";
import { InstanceRegistry, type LifecycleLedger } from "../../../agent/inventory/instance-registry.js";
import { RegistryStore } from "../../../agent/inventory/registry-store.js";
import type { LifecycleEntry } from "../../../agent/metering/lifecycle-entries.js";
import { tempDir } from "../../helpers/temp-dir.js";

// The registry is the one place state changes, and it writes the metering entries of each
// change atomically with it: the registry file is the commit point, the ledger follows.

/** An in-memory ledger that can be told to fail. */
class MemoryLedger implements LifecycleLedger {
  entries: LifecycleEntry[] = [];
  appends = 0;
  failNext = false;
  get lastSeq(): number {
    return this.entries.length;
  }
  read(fromSeq: number, limit: number): LifecycleEntry[] {
    return this.entries.slice(fromSeq - 1, fromSeq - 1 + limit);
  }
  async append(entries: LifecycleEntry[]): Promise<unknown> {
    await new Promise((r) => setImmediate(r));
    if (this.failNext) {
      this.failNext = false;
      throw new Error("disk full");
    }
    this.appends++;
    this.entries.push(...entries);
    return entries;
  }
}

const kr = (l: MemoryLedger) => l.entries.map((e) => `${e.kind} ${e.reason ?? "-"} ${e.vmId}`);
let dir: ReturnType<typeof tempDir>;

beforeEach(() => (dir = tempDir("reg-meter")));
afterEach(() => dir.remove());

describe("registry + metering", () => {
  it("writes each change's entries with it; concurrent changes share one ledger append", async () => {
    const ledger = new MemoryLedger();
    const r = InstanceRegistry.open(dir.path);
    await r.attachLedger(ledger);
    await Promise.all(Array.from({ length: 50 }, (_, i) => r.upsert(create(InstanceSchema, { id: `vm${i}`, state: InstanceState.RUNNING, allocatedVcpus: 2 }))));
    assert.equal(ledger.entries.length, 100, "storage start + compute start each");
    assert.ok(ledger.appends < 50, `${ledger.appends} appends for 50 registrations (group commit)`);
    await r.setState("vm3", InstanceState.STANDBY, "standby");
    await r.setState("vm3", InstanceState.RUNNING, "wake");
    await r.setState("vm4", InstanceState.STOPPED, "crash");
    await r.setState("vm4", InstanceState.STOPPED, "request"); // no-op
    await r.remove("vm5");
    assert.deepEqual(kr(ledger).slice(100), [
      "vm.compute.stop standby vm3",
      "vm.compute.start hibernate-wake vm3",
      "vm.compute.stop stop-crash vm4",
      "vm.compute.stop stop-user vm5",
      "vm.storage.stop vm-rm vm5",
    ]);
    // Open intervals survive a restart: vm4 starting again is a restart, not a boot.
    const again = InstanceRegistry.open(dir.path);
    await again.attachLedger(ledger);
    await again.setState("vm4", InstanceState.RUNNING);
    assert.equal(kr(ledger).at(-1), "vm.compute.start restart vm4");
  });

  it("after a crash between the registry write and the ledger append, the entries are appended on restart, once", async () => {
    const ledger = new MemoryLedger();
    const r = InstanceRegistry.open(dir.path);
    await r.attachLedger(ledger);
    await r.upsert(create(InstanceSchema, { id: "a", state: InstanceState.RUNNING }));
    // Simulate the crash: the registry file has the next change and its pending entries, the
    // ledger does not (a failed append leaves exactly that on disk).
    ledger.failNext = true;
    await assert.rejects(r.setState("a", InstanceState.STOPPED), /could not append to the metering ledger: disk full/);
    r.close(); // the "crashed" agent: no retry of its own
    const pending = RegistryStore.open(dir.path).state?.pending;
    assert.deepEqual([pending?.afterSeq, pending?.entries.length], [2, 1]);
    const restarted = InstanceRegistry.open(dir.path);
    assert.equal(restarted.get("a")?.state, InstanceState.STOPPED, "the change is committed");
    await restarted.attachLedger(ledger);
    assert.deepEqual(kr(ledger), ["vm.storage.start boot a", "vm.compute.start boot a", "vm.compute.stop stop-user a"]);
    // Opening again over a ledger that already has them appends nothing more.
    const third = InstanceRegistry.open(dir.path);
    await third.attachLedger(ledger);
    assert.equal(ledger.entries.length, 3);
  });

  it("a repeat of a change whose ledger append failed is acknowledged only with its entries in the ledger", async () => {
    const ledger = new MemoryLedger();
    const r = InstanceRegistry.open(dir.path);
    await r.attachLedger(ledger);
    await r.upsert(create(InstanceSchema, { id: "a", state: InstanceState.RUNNING }));
    ledger.failNext = true;
    await assert.rejects(r.setState("a", InstanceState.STOPPED), /could not append to the metering ledger/);
    assert.equal(ledger.entries.length, 2, "the stop is committed but not metered yet");
    // The same request again: the state is already STOPPED in memory and on disk, but its entry
    // is only pending. OK must mean metered.
    await r.setState("a", InstanceState.STOPPED);
    assert.deepEqual(kr(ledger), ["vm.storage.start boot a", "vm.compute.start boot a", "vm.compute.stop stop-user a"]);
    r.close();
  });

  it("a crash mid-append that left part of a batch: the rest is appended on restart", async () => {
    const ledger = new MemoryLedger();
    const r = InstanceRegistry.open(dir.path);
    await r.attachLedger(ledger);
    ledger.failNext = true;
    await assert.rejects(r.upsert(create(InstanceSchema, { id: "p", state: InstanceState.RUNNING })));
    r.close();
    // The first of the batch's two entries reached the disk before the crash.
    const pending = RegistryStore.open(dir.path).state!.pending!.entries as { emittedAtNs: string }[];
    assert.equal(pending.length, 2);
    ledger.entries.push({ kind: "vm.storage.start", vmId: "p", reason: "boot", shape: {}, emittedAtNs: BigInt(pending[0]!.emittedAtNs) });
    await InstanceRegistry.open(dir.path).attachLedger(ledger);
    assert.deepEqual(kr(ledger), ["vm.storage.start boot p", "vm.compute.start boot p"]);
  });

  it("a ledger that does not match the registry stops the agent", async () => {
    const ledger = new MemoryLedger();
    const r = InstanceRegistry.open(dir.path);
    await r.attachLedger(ledger);
    await r.upsert(create(InstanceSchema, { id: "a", state: InstanceState.RUNNING }));
    ledger.failNext = true;
    await assert.rejects(r.setState("a", InstanceState.STOPPED));
    r.close();
    const other = new MemoryLedger(); // e.g. the metering directory of another agent
    await assert.rejects(InstanceRegistry.open(dir.path).attachLedger(other), /registry and ledger do not belong together/);
  });

  it("instances from before metering get their registration entries when the ledger is attached", async () => {
    const file = join(dir.path, "instances.json");
    writeFileSync(file, JSON.stringify({ format: 1, resourceVersion: "2", instances: [{ id: "old1", state: "INSTANCE_STATE_RUNNING" }, { id: "old2", state: "INSTANCE_STATE_CREATED" }] }));
    const ledger = new MemoryLedger();
    await InstanceRegistry.open(dir.path).attachLedger(ledger);
    assert.deepEqual(kr(ledger), ["vm.storage.start boot old1", "vm.compute.start boot old1", "vm.storage.start boot old2"]);
    await InstanceRegistry.open(dir.path).attachLedger(ledger);
    assert.equal(ledger.entries.length, 3, "only once");
  });

  it("snapshots: start once, stop once (a second removal is NOT_FOUND and writes nothing); restore and clone carry the snapshot", async () => {
    const ledger = new MemoryLedger();
    const r = InstanceRegistry.open(dir.path);
    await r.attachLedger(ledger);
    const snap = create(SnapshotSchema, { id: "s1", instanceId: "a", hypervisor: "firecracker", storageBytes: 5000n });
    await r.registerSnapshot(snap);
    await r.registerSnapshot(snap); // same again: no second start
    await r.removeSnapshot("s1");
    await assert.rejects(r.removeSnapshot("s1"), /snapshot "s1" not found/);
    assert.deepEqual(ledger.entries.map((e) => [e.kind, e.snapshotId, e.reason ?? "-", e.shape.storageBytes]), [
      ["snap.storage.start", "s1", "-", 5000],
      ["snap.storage.stop", "s1", "snap-rm", 5000],
    ]);
    await r.upsert(create(InstanceSchema, { id: "c1", state: InstanceState.RUNNING, allocatedVcpus: 2 }), { sourceSnapshotId: "s1" });
    await r.restore("c1", create(InstanceSchema, { id: "c1", state: InstanceState.RUNNING, allocatedVcpus: 4 }), "s2");
    assert.deepEqual(
      ledger.entries.slice(2).map((e) => `${e.kind} ${e.reason} ${e.sourceSnapshotId} ${e.shape.cpu}`),
      ["vm.storage.start clone s1 2", "vm.compute.start clone s1 2", "vm.compute.stop restore s2 2", "vm.storage.stop restore s2 2", "vm.storage.start restore s2 4", "vm.compute.start restore s2 4"],
    );
    // Snapshots are durable with the registry.
    assert.deepEqual(InstanceRegistry.open(dir.path).snapshotList(), []);
    await r.registerSnapshot(create(SnapshotSchema, { id: "s3", storageBytes: 1n }));
    assert.deepEqual(InstanceRegistry.open(dir.path).snapshotList().map((x) => x.id), ["s3"]);
  });
});
