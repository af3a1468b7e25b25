import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { InstanceSchema, InstanceState, type Instance } from "../../../gen/fleetlet/agent/v1/inventory_pb.js";
import {
  lifecycleEntries,
  snapshotRegisteredEntry,
  snapshotRemovedEntry,
  type LifecycleEntry,
  type MeterState,
  type StepCause,
} from "../../../agent/metering/lifecycle-entries.js";

// metering.md's lifecycle table, row by row, including the transitions that write nothing.

const T = 1_779_238_923_500_000_000n;
const S = InstanceState;

function vm(state: InstanceState, fields: MessageInitShape<typeof InstanceSchema> = {}): Instance {
  return create(InstanceSchema, { id: "vm1", state, hypervisor: "cloud-hypervisor", allocatedVcpus: 4, allocatedMemoryBytes: 1n << 30n, allocatedStorageBytes: 10n << 30n, ...fields });
}

/** kind/reason pairs, the part of each entry the table fixes. */
const kr = (entries: LifecycleEntry[]) => entries.map((e) => `${e.kind} ${e.reason ?? "-"}`);

/** Runs a chain of states from a fresh registration; returns each step's entries. */
function chain(states: [InstanceState, StepCause][]): string[][] {
  let previous: Instance | undefined;
  let meter: MeterState | undefined;
  const out: string[][] = [];
  for (const [state, cause] of states) {
    const next = vm(state);
    const r = lifecycleEntries({ type: "upsert", previous, meter, next, cause }, T);
    out.push(kr(r.entries));
    previous = next;
    meter = r.meter;
  }
  return out;
}

describe("lifecycle entries (metering.md table)", () => {
  it("registered CREATED: storage start boot with the full shape", () => {
    const r = lifecycleEntries({ type: "upsert", previous: undefined, meter: undefined, next: vm(S.CREATED), cause: "request" }, T);
    assert.deepEqual(r.entries, [{ kind: "vm.storage.start", vmId: "vm1", reason: "boot", hypervisor: "cloud-hypervisor", shape: { cpu: 4, memBytes: 2 ** 30, storageBytes: 10 * 2 ** 30 }, emittedAtNs: T }]);
    assert.deepEqual(r.meter, { computeOpen: false, storageOpen: true, everRan: false });
  });

  it("registered already RUNNING: storage start boot, then compute start boot; one timestamp", () => {
    const r = lifecycleEntries({ type: "upsert", previous: undefined, meter: undefined, next: vm(S.RUNNING), cause: "request" }, T);
    assert.deepEqual(kr(r.entries), ["vm.storage.start boot", "vm.compute.start boot"]);
    assert.ok(r.entries.every((e) => e.emittedAtNs === T));
  });

  it("→ RUNNING first time: boot; again after STOPPED: restart; RUNNING → STOPPED on request: stop-user", () => {
    assert.deepEqual(chain([[S.CREATED, "request"], [S.RUNNING, "request"], [S.STOPPED, "request"], [S.RUNNING, "request"]]), [
      ["vm.storage.start boot"],
      ["vm.compute.start boot"],
      ["vm.compute.stop stop-user"],
      ["vm.compute.start restart"],
    ]);
  });

  it("process gone: stop-crash; standby and wake: standby / hibernate-wake", () => {
    assert.deepEqual(chain([[S.RUNNING, "request"], [S.STOPPED, "crash"], [S.RUNNING, "request"], [S.STANDBY, "standby"], [S.RUNNING, "wake"]]), [
      ["vm.storage.start boot", "vm.compute.start boot"],
      ["vm.compute.stop stop-crash"],
      ["vm.compute.start restart"],
      ["vm.compute.stop standby"],
      ["vm.compute.start hibernate-wake"],
    ]);
  });

  it("→ ERROR writes nothing and keeps the interval open until a later stop or removal", () => {
    assert.deepEqual(chain([[S.RUNNING, "request"], [S.ERROR, "request"], [S.RUNNING, "request"], [S.ERROR, "request"], [S.STOPPED, "request"]]), [
      ["vm.storage.start boot", "vm.compute.start boot"],
      [],
      [],
      [],
      ["vm.compute.stop stop-user"],
    ]);
  });

  it("no-ops: STOPPED → STOPPED, CREATED → STOPPED, RUNNING → RUNNING, STANDBY → STOPPED", () => {
    assert.deepEqual(chain([[S.CREATED, "request"], [S.STOPPED, "request"], [S.STOPPED, "request"]]), [["vm.storage.start boot"], [], []]);
    assert.deepEqual(chain([[S.RUNNING, "request"], [S.RUNNING, "request"], [S.STANDBY, "standby"], [S.STOPPED, "request"]]).slice(1), [[], ["vm.compute.stop standby"], []]);
  });

  it("clone: storage start clone, then compute start clone if running, both with source_snapshot_id", () => {
    const running = lifecycleEntries({ type: "upsert", previous: undefined, meter: undefined, next: vm(S.RUNNING), cause: "request", sourceSnapshotId: "snap-9" }, T);
    assert.deepEqual(kr(running.entries), ["vm.storage.start clone", "vm.compute.start clone"]);
    assert.ok(running.entries.every((e) => e.sourceSnapshotId === "snap-9"));
    const created = lifecycleEntries({ type: "upsert", previous: undefined, meter: undefined, next: vm(S.CREATED), cause: "request", sourceSnapshotId: "snap-9" }, T);
    assert.deepEqual(kr(created.entries), ["vm.storage.start clone"]);
  });

  it("restore: compute stop (old shape, if open), storage stop (old), storage start (new), compute start (new), all with source_snapshot_id", () => {
    const old = vm(S.RUNNING);
    const next = vm(S.RUNNING, { allocatedVcpus: 8, allocatedStorageBytes: 20n << 30n });
    const r = lifecycleEntries({ type: "restore", previous: old, meter: { computeOpen: true, storageOpen: true, everRan: true }, next, sourceSnapshotId: "snap-1" }, T);
    assert.deepEqual(kr(r.entries), ["vm.compute.stop restore", "vm.storage.stop restore", "vm.storage.start restore", "vm.compute.start restore"]);
    assert.deepEqual(r.entries.map((e) => e.shape.cpu), [4, 4, 8, 8]);
    assert.ok(r.entries.every((e) => e.sourceSnapshotId === "snap-1"));
    const fromStopped = lifecycleEntries({ type: "restore", previous: vm(S.STOPPED), meter: { computeOpen: false, storageOpen: true, everRan: true }, next: vm(S.STOPPED), sourceSnapshotId: "s" }, T);
    assert.deepEqual(kr(fromStopped.entries), ["vm.storage.stop restore", "vm.storage.start restore"]);
  });

  it("deregistered: compute stop-user if running, then storage stop vm-rm; only storage when not running", () => {
    assert.deepEqual(kr(lifecycleEntries({ type: "remove", previous: vm(S.RUNNING), meter: { computeOpen: true, storageOpen: true, everRan: true } }, T).entries), [
      "vm.compute.stop stop-user",
      "vm.storage.stop vm-rm",
    ]);
    const r = lifecycleEntries({ type: "remove", previous: vm(S.STANDBY), meter: { computeOpen: false, storageOpen: true, everRan: true } }, T);
    assert.deepEqual(kr(r.entries), ["vm.storage.stop vm-rm"]);
    assert.equal(r.meter, undefined);
  });

  it("snapshots: start with snapshot_id, hypervisor and only storage_bytes, no reason; stop snap-rm", () => {
    assert.deepEqual(snapshotRegisteredEntry("snap-1", "firecracker", 5000, T), { kind: "snap.storage.start", snapshotId: "snap-1", hypervisor: "firecracker", shape: { storageBytes: 5000 }, emittedAtNs: T });
    assert.deepEqual(kr([snapshotRemovedEntry("snap-1", "firecracker", 5000, T)]), ["snap.storage.stop snap-rm"]);
  });

  it("at most one open interval of each kind, whatever the order of requests", () => {
    // Random walks over states and causes: a start never follows an open interval of its kind,
    // a stop never closes one that is not open.
    let seed = 7;
    const rand = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
    const states = [S.CREATED, S.RUNNING, S.STANDBY, S.STOPPED, S.ERROR];
    const causes: StepCause[] = ["request", "crash", "standby", "wake"];
    for (let walk = 0; walk < 200; walk++) {
      let previous: Instance | undefined;
      let meter: MeterState | undefined;
      let open = { compute: false, storage: false };
      for (let step = 0; step < 30; step++) {
        const next = vm(states[Math.floor(rand() * states.length)]!);
        const r = lifecycleEntries({ type: "upsert", previous, meter, next, cause: causes[Math.floor(rand() * causes.length)]! }, T);
        for (const e of r.entries) {
          const which = e.kind.startsWith("vm.compute") ? "compute" : "storage";
          const starting = e.kind.endsWith(".start");
          assert.notEqual(open[which], starting, `walk ${walk} step ${step}: ${e.kind} with the interval ${open[which] ? "open" : "closed"}`);
          open = { ...open, [which]: starting };
        }
        assert.deepEqual([r.meter?.computeOpen, r.meter?.storageOpen], [open.compute, open.storage]);
        previous = next;
        meter = r.meter;
      }
    }
  });
});
