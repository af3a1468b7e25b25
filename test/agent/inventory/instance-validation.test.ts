import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { InstanceKind, InstanceSchema, InstanceSource, InstanceState } from "../../../gen/fleetlet/agent/v1/inventory_pb.js";
import { validateInstance } from "../../../agent/inventory/instance-validation.js";
import { deriveTapName, validateTapPrefix } from "../../../agent/inventory/interface-name.js";

const validate = (init: MessageInitShape<typeof InstanceSchema>) => validateInstance(create(InstanceSchema, init), { tapPrefix: "fl-" });

function rejects(init: MessageInitShape<typeof InstanceSchema>, field: string, rule?: RegExp): void {
  assert.throws(
    () => validate(init),
    (e: unknown) => {
      assert.ok(e instanceof ConnectError);
      assert.equal(e.code, Code.InvalidArgument);
      assert.ok(e.rawMessage.startsWith(`${field}: `), `message ${JSON.stringify(e.rawMessage)} names ${field}`);
      if (rule) assert.match(e.rawMessage, rule);
      return true;
    },
  );
}

describe("validateInstance rejects, naming the field", () => {
  it("an id with '/'", () => rejects({ id: "a/b" }, "instance.id", /must match/));
  it("an empty id", () => rejects({ id: "" }, "instance.id", /is required/));
  it("an id starting with '.' or over 128 characters", () => {
    rejects({ id: ".hidden" }, "instance.id");
    rejects({ id: "a".repeat(129) }, "instance.id");
  });
  it("a negative or zero pid", () => {
    rejects({ id: "x", pid: -1 }, "instance.pid", /between 1 and/);
    rejects({ id: "x", pid: 0 }, "instance.pid");
  });
  it("a tap name '../x' or of 16 characters", () => {
    rejects({ id: "x", tapDevice: "../x" }, "instance.tap_device", /'\/'/);
    rejects({ id: "x", tapDevice: "a".repeat(16) }, "instance.tap_device", /1-15 characters, got 16/);
    rejects({ id: "x", tapDevice: ".." }, "instance.tap_device");
    rejects({ id: "x", tapDevice: "tap 0" }, "instance.tap_device");
  });
  it("a bad ip", () => rejects({ id: "x", ip: "10.0.0.300" }, "instance.ip"));
  it("negative allocations", () => {
    rejects({ id: "x", allocatedVcpus: -1 }, "instance.allocated_vcpus");
    rejects({ id: "x", allocatedMemoryBytes: -1n }, "instance.allocated_memory_bytes");
    rejects({ id: "x", allocatedStorageBytes: -1n }, "instance.allocated_storage_bytes");
  });
  it("enum values the proto does not define", () => {
    rejects({ id: "x", kind: 99 as InstanceKind }, "instance.kind");
    rejects({ id: "x", state: 99 as InstanceState }, "instance.state");
  });
  it("bad labels", () => {
    rejects({ id: "x", labels: { "bad key!": "v" } }, 'instance.labels["bad key!"]');
    rejects({ id: "x", labels: { ok: "line\nbreak" } }, 'instance.labels["ok"]');
  });
  it("control characters in the name", () => rejects({ id: "x", name: "a\u0000b" }, "instance.name"));
  it("a standby policy that could not work", () => {
    rejects({ id: "x", standbyPolicy: { idleTimeout: "5 minutes" } }, "instance.standby_policy.idle_timeout", /"5 minutes": invalid duration/);
    rejects({ id: "x", standbyPolicy: { ignoreSourceCidrs: ["10.0.0.0/8", "10.0.0.0/33"] } }, "instance.standby_policy.ignore_source_cidrs[1]");
    rejects({ id: "x", standbyPolicy: { ignoreSourceCidrs: ["nope"] } }, "instance.standby_policy.ignore_source_cidrs[0]");
    rejects({ id: "x", standbyPolicy: { ignoreDestinationPorts: [22, 0] } }, "instance.standby_policy.ignore_destination_ports[1]");
    rejects({ id: "x", standbyPolicy: { driver: "teleport" } }, "instance.standby_policy.driver");
    const ok = validate({ id: "x", standbyPolicy: { enabled: true, idleTimeout: "300s", ignoreSourceCidrs: ["fd00::1/8"], ignoreDestinationPorts: [22, 22], driver: "cgroup" } });
    assert.equal(ok.standbyPolicy?.idleTimeout, "5m0s", "stored normalised");
    assert.deepEqual(ok.standbyPolicy?.ignoreSourceCidrs, ["fd00::/8"]);
    assert.deepEqual(ok.standbyPolicy?.ignoreDestinationPorts, [22]);
  });
  it("a missing instance", () => {
    assert.throws(() => validateInstance(undefined, { tapPrefix: "fl-" }), /^ConnectError: \[invalid_argument\] instance: is required$/);
  });
});

describe("validateInstance normalises", () => {
  it("fills kind, state and source, derives the tap name", () => {
    const i = validate({ id: "ABCD1234efgh5678", pid: 10, networkEnabled: true, source: InstanceSource.DISCOVERED, pidStartTime: 5n });
    assert.equal(i.kind, InstanceKind.VM);
    assert.equal(i.state, InstanceState.RUNNING);
    assert.equal(i.source, InstanceSource.REGISTERED);
    assert.equal(i.tapDevice, "fl-abcd1234");
    assert.equal(i.pidStartTime, undefined, "output-only field is ignored");
  });
  it("CREATED without a pid; an explicit state is kept", () => {
    assert.equal(validate({ id: "x" }).state, InstanceState.CREATED);
    assert.equal(validate({ id: "x", pid: 3, state: InstanceState.STANDBY }).state, InstanceState.STANDBY);
  });
  it("keeps an explicit tap name and does not derive one without networking", () => {
    assert.equal(validate({ id: "x", tapDevice: "tap7", networkEnabled: true }).tapDevice, "tap7");
    assert.equal(validate({ id: "abc" }).tapDevice, "");
  });
});

describe("tap names", () => {
  it("derives <prefix><first 8 of the id, lower-cased> (metrics.md)", () => {
    assert.equal(deriveTapName("fl-", "abcd1234efgh5678"), "fl-abcd1234");
    assert.equal(deriveTapName("hype-", "01234567-89ab"), "hype-01234567");
    assert.equal(deriveTapName("fl-", "ab"), "fl-ab");
  });
  it("refuses prefixes that cannot fit 15 characters with 8 more", () => {
    assert.throws(() => validateTapPrefix("toolong-"), /1-7 characters/);
    assert.throws(() => validateTapPrefix("a/b"), /without/);
    validateTapPrefix("hype-");
  });
});
