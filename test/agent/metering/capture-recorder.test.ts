import { afterEach, beforeEach, describe, it } from "vitest";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { InstanceSchema, InstanceState } from "../../../gen/fleetlet/agent/v1/inventory_pb.js";
import { InstanceRegistry } from "../../../agent/inventory/instance-registry.js";
import { CaptureRecorder } from "../../../agent/metering/capture-recorder.js";
import { tempDir } from "../../helpers/temp-dir.js";

// Seed 000's CaptureRecorder: the in-memory ledger tests assert emit sequences with, driven
// through the registry's real commit path.

let dir: ReturnType<typeof tempDir>;
beforeEach(() => (dir = tempDir("capture")));
afterEach(() => dir.remove());

describe("CaptureRecorder", () => {
  it("captures a lifecycle's entries through the registry, in seq order, one emitted_at per change", async () => {
    const recorder = new CaptureRecorder();
    const r = InstanceRegistry.open(dir.path);
    await r.attachLedger(recorder);
    await r.upsert(create(InstanceSchema, { id: "vm1", state: InstanceState.RUNNING, hypervisor: "firecracker", allocatedVcpus: 2 }));
    await r.setState("vm1", InstanceState.STOPPED);
    await r.setState("vm1", InstanceState.STOPPED); // STOPPED -> STOPPED: nothing
    await r.remove("vm1");
    r.close();
    const entries = recorder.entries();
    assert.deepEqual(
      entries.map((e) => `${e.kind} ${e.reason} ${e.vmId} ${e.hypervisor} ${e.shape.cpu}`),
      ["vm.storage.start boot vm1 firecracker 2", "vm.compute.start boot vm1 firecracker 2", "vm.compute.stop stop-user vm1 firecracker 2", "vm.storage.stop vm-rm vm1 firecracker 2"],
    );
    assert.equal(entries[0]!.emittedAtNs, entries[1]!.emittedAtNs, "the entries of one change share one timestamp");
    assert.equal(recorder.lastSeq, 4);
    assert.deepEqual(recorder.read(3, 10).map((e) => e.kind), ["vm.compute.stop", "vm.storage.stop"], "read is by seq (1-based)");
    assert.equal(recorder.appends, 3, "one append per durable change");
  });

  it("entries() is a copy: changing it changes nothing captured", async () => {
    const recorder = new CaptureRecorder();
    await recorder.append([{ kind: "vm.storage.start", vmId: "a", reason: "boot", shape: { cpu: 1 }, emittedAtNs: 5n }]);
    const first = recorder.entries();
    first[0]!.vmId = "changed";
    first[0]!.shape.cpu = 99;
    first.push({ kind: "vm.storage.stop", vmId: "x", shape: {}, emittedAtNs: 6n });
    assert.deepEqual(recorder.entries(), [{ kind: "vm.storage.start", vmId: "a", reason: "boot", shape: { cpu: 1 }, emittedAtNs: 5n }]);
    assert.equal(recorder.lastSeq, 1);
  });

  it("a failing append captures nothing and counts; truncate drops the newest entries", async () => {
    const recorder = new CaptureRecorder("00000000000000cc", "EIO: disk gone");
    recorder.failNext = true;
    await assert.rejects(recorder.append([{ kind: "vm.storage.start", vmId: "a", shape: {}, emittedAtNs: 1n }]), /EIO: disk gone/);
    assert.deepEqual([recorder.failures, recorder.appends, recorder.lastSeq], [1, 0, 0]);
    await recorder.append([
      { kind: "vm.storage.start", vmId: "a", shape: {}, emittedAtNs: 1n },
      { kind: "vm.storage.start", vmId: "b", shape: {}, emittedAtNs: 1n },
    ]);
    recorder.truncate(1);
    assert.deepEqual(recorder.entries().map((e) => e.vmId), ["a"]);
    assert.equal(recorder.ledgerId, "00000000000000cc");
  });
});
