import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { InstanceSchema, InstanceState, type Instance } from "../../../gen/fleetlet/agent/v1/inventory_pb.js";
import {
  lifecycleEntries,
  shapeOf,
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

/** Like chain, with a vCPU count per step; entries as "kind reason cpu". */
function chainShapes(steps: [InstanceState, StepCause, number][]): string[][] {
  let previous: Instance | undefined;
  let meter: MeterState | undefined;
  const out: string[][] = [];
  for (const [state, cause, cpu] of steps) {
    const next = vm(state, { allocatedVcpus: cpu });
    const r = lifecycleEntries({ type: "upsert", previous, meter, next, cause }, T);
    out.push(r.entries.map((e) => `${e.kind} ${e.reason ?? "-"} ${e.shape.cpu}`));
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

  it("shape changed while RUNNING: compute and storage each stop with the old shape and start with the new one, reason resize, one timestamp", () => {
    const old = vm(S.RUNNING);
    const meter: MeterState = { computeOpen: true, storageOpen: true, everRan: true };
    const r = lifecycleEntries({ type: "upsert", previous: old, meter, next: vm(S.RUNNING, { allocatedVcpus: 8 }), cause: "request" }, T);
    // Nested like restore: compute closes first and reopens last.
    assert.deepEqual(kr(r.entries), ["vm.compute.stop resize", "vm.storage.stop resize", "vm.storage.start resize", "vm.compute.start resize"]);
    assert.deepEqual(r.entries.map((e) => e.shape.cpu), [4, 4, 8, 8]);
    assert.ok(r.entries.every((e) => e.emittedAtNs === T && e.vmId === "vm1" && e.hypervisor === "cloud-hypervisor"));
    assert.deepEqual(r.meter, meter, "the same intervals are open after it");
    // Memory and storage count as much as vCPUs: each is part of every vm entry's shape.
    for (const changed of [{ allocatedMemoryBytes: 2n << 30n }, { allocatedStorageBytes: 20n << 30n }]) {
      assert.deepEqual(kr(lifecycleEntries({ type: "upsert", previous: old, meter, next: vm(S.RUNNING, changed), cause: "request" }, T).entries), [
        "vm.compute.stop resize",
        "vm.storage.stop resize",
        "vm.storage.start resize",
        "vm.compute.start resize",
      ]);
    }
  });

  it("shape changed while STANDBY, STOPPED or CREATED: only the open storage interval is resized; the next compute start has the new shape", () => {
    for (const state of [S.STANDBY, S.STOPPED, S.CREATED]) {
      const meter: MeterState = { computeOpen: false, storageOpen: true, everRan: state !== S.CREATED };
      const r = lifecycleEntries({ type: "upsert", previous: vm(state), meter, next: vm(state, { allocatedVcpus: 2 }), cause: "request" }, T);
      assert.deepEqual(kr(r.entries), ["vm.storage.stop resize", "vm.storage.start resize"], `${S[state]}`);
      assert.deepEqual(r.entries.map((e) => e.shape.cpu), [4, 2]);
      assert.deepEqual(r.meter, meter);
    }
    const woken = chainShapes([
      [S.RUNNING, "request", 4],
      [S.STANDBY, "standby", 4],
      [S.STANDBY, "request", 2],
      [S.RUNNING, "wake", 2],
    ]);
    assert.deepEqual(woken, [
      ["vm.storage.start boot 4", "vm.compute.start boot 4"],
      ["vm.compute.stop standby 4"],
      ["vm.storage.stop resize 4", "vm.storage.start resize 2"],
      ["vm.compute.start hibernate-wake 2"],
    ]);
  });

  it("shape changed in ERROR keeps metering the interval left open: both resized", () => {
    assert.deepEqual(chainShapes([[S.RUNNING, "request", 4], [S.ERROR, "request", 4], [S.ERROR, "request", 6]]).at(-1), [
      "vm.compute.stop resize 4",
      "vm.storage.stop resize 4",
      "vm.storage.start resize 6",
      "vm.compute.start resize 6",
    ]);
  });

  it("shape changed together with a state change: the transition's stop has the old shape, its start the new one, storage is resized between", () => {
    assert.deepEqual(chainShapes([[S.RUNNING, "request", 4], [S.STOPPED, "request", 2], [S.RUNNING, "request", 8]]).slice(1), [
      ["vm.compute.stop stop-user 4", "vm.storage.stop resize 4", "vm.storage.start resize 2"],
      ["vm.storage.stop resize 2", "vm.storage.start resize 8", "vm.compute.start restart 8"],
    ]);
  });

  it("no resize: the same shape re-registered, other fields changed, or a new instance", () => {
    assert.deepEqual(chainShapes([[S.RUNNING, "request", 4], [S.RUNNING, "request", 4]]).at(-1), []);
    const r = lifecycleEntries({ type: "upsert", previous: vm(S.RUNNING), meter: { computeOpen: true, storageOpen: true, everRan: true }, next: vm(S.RUNNING, { name: "renamed", pid: 42 }), cause: "request" }, T);
    assert.deepEqual(r.entries, []);
  });

  it("snapshots: start with snapshot_id, hypervisor and only storage_bytes, no reason; stop snap-rm", () => {
    assert.deepEqual(snapshotRegisteredEntry("snap-1", "firecracker", 5000, T), { kind: "snap.storage.start", snapshotId: "snap-1", hypervisor: "firecracker", shape: { storageBytes: 5000 }, emittedAtNs: T });
    assert.deepEqual(kr([snapshotRemovedEntry("snap-1", "firecracker", 5000, T)]), ["snap.storage.stop snap-rm"]);
  });

  it("at most one open interval of each kind, each carrying the shape the instance has, whatever the order of requests and resizes", () => {
    // Random walks over states, causes and shapes: a start never follows an open interval of
    // its kind, a stop never closes one that is not open, a stop carries the shape its start
    // had, and after every step each open interval's shape is the instance's shape (a resize
    // that left an interval on the old shape would bill the wrong shape until the next stop).
    let seed = 7;
    const rand = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
    const pick = <X,>(xs: readonly X[]) => xs[Math.floor(rand() * xs.length)]!;
    const states = [S.CREATED, S.RUNNING, S.STANDBY, S.STOPPED, S.ERROR];
    const causes: StepCause[] = ["request", "crash", "standby", "wake"];
    const cpus = [1, 2, 4];
    const mems = [1n << 30n, 2n << 30n];
    const disks = [10n << 30n, 20n << 30n];
    let resizesSeen = 0;
    for (let walk = 0; walk < 200; walk++) {
      let previous: Instance | undefined;
      let meter: MeterState | undefined;
      const open: Record<"compute" | "storage", LifecycleEntry["shape"] | undefined> = { compute: undefined, storage: undefined };
      for (let step = 0; step < 30; step++) {
        // Half the steps keep the shape (a state change only), half draw one (often a resize).
        const shape = !previous || rand() < 0.5 ? { allocatedVcpus: pick(cpus), allocatedMemoryBytes: pick(mems), allocatedStorageBytes: pick(disks) } : {};
        const next = vm(previous && rand() < 0.3 ? previous.state : pick(states), { ...(previous ? { allocatedVcpus: previous.allocatedVcpus, allocatedMemoryBytes: previous.allocatedMemoryBytes, allocatedStorageBytes: previous.allocatedStorageBytes } : {}), ...shape });
        const stepT = T + BigInt(walk * 1000 + step);
        const r = lifecycleEntries({ type: "upsert", previous, meter, next, cause: pick(causes) }, stepT);
        const where = `walk ${walk} step ${step}`;
        for (const e of r.entries) {
          const which = e.kind.startsWith("vm.compute") ? "compute" : "storage";
          const starting = e.kind.endsWith(".start");
          assert.notEqual(open[which] !== undefined, starting, `${where}: ${e.kind} with the interval ${open[which] ? "open" : "closed"}`);
          if (!starting) assert.deepEqual(e.shape, open[which], `${where}: ${e.kind} ${e.reason} closes with another shape than it opened with`);
          assert.equal(e.emittedAtNs, stepT, `${where}: one timestamp per step`);
          if (e.reason === "resize") resizesSeen++;
          open[which] = starting ? e.shape : undefined;
        }
        assert.deepEqual([r.meter?.computeOpen, r.meter?.storageOpen], [open.compute !== undefined, open.storage !== undefined]);
        for (const which of ["compute", "storage"] as const) {
          if (open[which]) assert.deepEqual(open[which], shapeOf(next), `${where}: the open ${which} interval keeps a shape the instance no longer has`);
        }
        previous = next;
        meter = r.meter;
      }
    }
    assert.ok(resizesSeen > 100, `the walks resized (${resizesSeen} resize entries)`);
  });
});
