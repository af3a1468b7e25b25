import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { InstanceSchema } from "../../../gen/fleetlet/agent/v1/inventory_pb.js";
import { validateInstance } from "../../../agent/inventory/instance-validation.js";
import { StandbyController, type StandbyInstance } from "../../../agent/standby/standby-controller.js";
import { FakeClock, FakeFlowSource } from "./fake-clock.js";

// Seed 002: `{enabled: false}` without an idle timeout is a policy that is off (POLICY_DISABLED),
// not a missing one (POLICY_MISSING). Registration used to give every instance an empty policy,
// so "missing" could not be told apart: the policy's presence on the Instance message is the bit.

function describeRegistered(policy: { enabled: boolean } | undefined) {
  const stored = validateInstance(create(InstanceSchema, { id: "vm1", pid: 1, ip: "10.0.0.2", networkEnabled: true, ...(policy ? { standbyPolicy: policy } : {}) }), { tapPrefix: "fl-" });
  // Through the registry's binary form, as a restart reads it.
  const read = fromBinary(InstanceSchema, toBinary(InstanceSchema, stored));
  const view: StandbyInstance = { id: read.id, state: read.state, networkEnabled: read.networkEnabled, ip: read.ip, hasVgpu: read.hasVgpu, policy: read.standbyPolicy };
  const controller = new StandbyController({
    clock: new FakeClock(),
    source: new FakeFlowSource(),
    instances: { list: () => [view], get: (id) => (id === view.id ? view : undefined) },
    runtime: { get: () => undefined, set: () => undefined },
    standby: async () => undefined,
    wake: async () => undefined,
    setState: async () => undefined,
  });
  return { stored: read, status: controller.describe("vm1") };
}

describe("standby policy presence (seed 002)", () => {
  it("registered without a policy: none stored, POLICY_MISSING", () => {
    const { stored, status } = describeRegistered(undefined);
    assert.equal(stored.standbyPolicy, undefined);
    assert.deepEqual([status.status, status.reason, status.configured], ["DISABLED", "POLICY_MISSING", false]);
  });
  it("registered with {enabled: false} and no idle timeout: kept, POLICY_DISABLED", () => {
    const { stored, status } = describeRegistered({ enabled: false });
    assert.ok(stored.standbyPolicy, "the policy is stored");
    assert.equal(stored.standbyPolicy.idleTimeout, "");
    assert.deepEqual([status.status, status.reason, status.configured, status.enabled], ["DISABLED", "POLICY_DISABLED", true, false]);
  });
});
