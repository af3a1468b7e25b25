import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { faultInjection, reportFaultInjection } from "../../lib/fault-injection.js";

// security.md: test fault-injection switches are not reachable in a normal run; they need
// FLEETLET_ENABLE_FAULT_INJECTION=1 too, and a daemon says loudly which are active.

function recorder(): { logger: { warn(obj: object, msg: string): void }; lines: { obj: object; msg: string }[] } {
  const lines: { obj: object; msg: string }[] = [];
  return { lines, logger: { warn: (obj, msg) => lines.push({ obj, msg }) } };
}

describe("fault injection", () => {
  it("a fault-injection variable without the enabling switch reads as unset, and the daemon says it is ignored", () => {
    const env = { FLEETLET_TEST_DROP_INVENTORY_EVENT: "vm1", FLEETLET_FAULT_DROP_CONNTRACK_NEW: "1" };
    assert.equal(faultInjection("FLEETLET_TEST_DROP_INVENTORY_EVENT", env), undefined);
    assert.equal(faultInjection("FLEETLET_FAULT_DROP_CONNTRACK_NEW", env), undefined);
    assert.equal(faultInjection("FLEETLET_FAULT_DROP_CONNTRACK_NEW", { ...env, FLEETLET_ENABLE_FAULT_INJECTION: "true" }), undefined);
    const r = recorder();
    reportFaultInjection(r.logger, env);
    assert.deepEqual(r.lines, [
      { obj: { variables: ["FLEETLET_FAULT_DROP_CONNTRACK_NEW", "FLEETLET_TEST_DROP_INVENTORY_EVENT"] }, msg: "fault-injection variables ignored: they need FLEETLET_ENABLE_FAULT_INJECTION=1 (tests only)" },
    ]);
  });

  it("with FLEETLET_ENABLE_FAULT_INJECTION=1 they take effect and the daemon warns loudly", () => {
    const env = { FLEETLET_TEST_DROP_INVENTORY_EVENT: "vm1", FLEETLET_ENABLE_FAULT_INJECTION: "1" };
    assert.equal(faultInjection("FLEETLET_TEST_DROP_INVENTORY_EVENT", env), "vm1");
    assert.equal(faultInjection("FLEETLET_FAULT_DROP_CONNTRACK_EVENTS", env), undefined);
    const r = recorder();
    reportFaultInjection(r.logger, env);
    assert.equal(r.lines.length, 1);
    assert.match(r.lines[0]!.msg, /^FAULT INJECTION ENABLED/);
    assert.deepEqual(r.lines[0]!.obj, { variables: ["FLEETLET_TEST_DROP_INVENTORY_EVENT"] });
  });

  it("says nothing when none is set", () => {
    const r = recorder();
    reportFaultInjection(r.logger, {});
    assert.deepEqual(r.lines, []);
  });
});
