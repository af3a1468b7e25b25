import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { METHOD_ROLES, requiredRole, roleIncludes } from "../../../../lib/rpc/authz/role-table.js";
import { generatedServices, methodPath } from "./generated-services.js";

describe("role table", () => {
  it("has an entry for every method of every generated service, and nothing else", async () => {
    const services = await generatedServices();
    const names = services.map((s) => s.typeName);
    for (const expected of ["fleetlet.agent.v1.InventoryService", "fleetlet.aggregator.v1.FleetService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"]) {
      assert.ok(names.includes(expected), `descriptor walk found ${expected}`);
    }
    const paths = services.flatMap((s) => s.methods.map((m) => methodPath(s, m.name)));
    const missing = paths.filter((p) => requiredRole(p) === undefined);
    assert.deepEqual(missing, [], "methods without a role (a new RPC must be added to lib/rpc/authz/role-table.ts)");
    const stale = Object.keys(METHOD_ROLES).filter((p) => !paths.includes(p));
    assert.deepEqual(stale, [], "role table entries for methods that no longer exist");
  });

  it("orders roles viewer < operator < admin and puts the dangerous calls at admin (acknowledging at the aggregator's own role)", () => {
    assert.ok(roleIncludes("admin", "operator") && roleIncludes("operator", "viewer"));
    assert.ok(!roleIncludes("viewer", "operator") && !roleIncludes("operator", "admin"));
    // Only the aggregator's identity acknowledges metering; it cannot do an admin's work.
    assert.equal(requiredRole("/fleetlet.agent.v1.MeteringService/AcknowledgeMeteringEntries"), "aggregator");
    assert.ok(!roleIncludes("admin", "aggregator") && roleIncludes("aggregator", "aggregator"));
    assert.ok(roleIncludes("aggregator", "operator") && !roleIncludes("aggregator", "admin"));
    assert.equal(requiredRole("/fleetlet.aggregator.v1.FleetService/RemoveHost"), "admin");
    assert.equal(requiredRole("/fleetlet.agent.v1.RuntimeService/StreamContainerLogs"), "operator");
    assert.equal(requiredRole("/grpc.health.v1.Health/Check"), "viewer");
    assert.equal(requiredRole("/fleetlet.agent.v1.InventoryService/NoSuchMethod"), undefined);
  });
});
