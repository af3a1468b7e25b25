import { create, equals } from "@bufbuild/protobuf";
import { InstanceSchema, type Instance } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import type { FleetInstance } from "../../gen/fleetlet/aggregator/v1/fleet_pb.js";

/**
 * The inventory checker (issue 6): the aggregator's merged view must equal the union of the
 * agents' own lists exactly — every instance present, field for field (its resource_version
 * included), and nothing else (no ghosts). Returns one line per problem; empty = equal. Used by
 * test/e2e/inventory-fleet.test.ts and bench/inventory.
 */
export function compareMergedView(merged: readonly FleetInstance[], agents: readonly { host: string; instances: readonly Instance[] }[]): string[] {
  const problems: string[] = [];
  const byKey = new Map(merged.map((i) => [`${i.host}/${i.id}`, i]));
  for (const { host, instances } of agents) {
    for (const i of instances) {
      const key = `${host}/${i.id}`;
      const m = byKey.get(key);
      byKey.delete(key);
      if (!m) problems.push(`missing: ${key}`);
      else if (!equals(InstanceSchema, asInstance(m), i)) problems.push(`differs: ${key} (view v${m.resourceVersion} state ${m.state}, agent v${i.resourceVersion} state ${i.state})`);
    }
  }
  for (const key of byKey.keys()) problems.push(`ghost: ${key}`);
  return problems;
}

function asInstance(f: FleetInstance): Instance {
  const { $typeName: _, host: _h, ...fields } = f;
  return create(InstanceSchema, fields);
}
