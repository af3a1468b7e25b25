import { createHash } from "node:crypto";
import { create, toBinary } from "@bufbuild/protobuf";
import { InstanceState } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { PolicyHostSchema, type PolicyHost } from "../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import type { HostView } from "../inventory/merged-view.js";

/**
 * What a rule sees of a host (PolicyHost): the agent's report of it (GetHostInfo), its sync
 * state in the merged view, and the sums of allocated vCPUs and memory over its instances that
 * are not STOPPED (what the host is asked to carry).
 */
export function policyHostOf(view: HostView): PolicyHost {
  let vcpus = 0n;
  let memory = 0n;
  for (const i of view.instances.values()) {
    if (i.state === InstanceState.STOPPED) continue;
    vcpus += BigInt(i.allocatedVcpus);
    memory += i.allocatedMemoryBytes;
  }
  const info = view.info;
  return create(PolicyHostSchema, {
    name: view.name,
    labels: info?.labels ?? {},
    syncState: view.state,
    agentVersion: info?.agentVersion ?? "",
    cpuCount: info?.cpuCount ?? 0,
    memoryBytes: info?.memoryBytes ?? 0n,
    kernel: info?.kernel ?? "",
    standbySupported: info?.standbySupported ?? false,
    allocatedVcpus: vcpus,
    allocatedMemoryBytes: memory,
    factsKnown: info !== undefined,
  });
}

/** A host's revision for validation: a digest of what rules see of it (labels in sorted order). */
export function policyHostRevision(host: PolicyHost): string {
  const labels = Object.fromEntries(Object.entries(host.labels).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
  return createHash("sha256")
    .update(toBinary(PolicyHostSchema, create(PolicyHostSchema, { ...host, labels })))
    .digest("hex")
    .slice(0, 16);
}
