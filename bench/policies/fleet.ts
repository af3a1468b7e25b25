/**
 * The synthetic fleet of bench/policies: hosts with facts, instances with realistic fields, and
 * the 14 rules that join the 6 built-in ones (CEL over instance, host and params, as an operator
 * would write them in a --policies file).
 */
import { create } from "@bufbuild/protobuf";
import { HostInfoSchema, InstanceKind, InstanceSchema, InstanceSource, InstanceState, type HostInfo, type Instance } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { StandbyPolicySchema } from "../../gen/fleetlet/agent/v1/standby_pb.js";
import { PolicySeverity, PolicySource } from "../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import type { RuleSpec } from "../../aggregator/policies/policy-rule.js";

// The same seeded PRNG as the fuzz tests: the same fleet and change stream in every run and round.
import { prng } from "../../test/helpers/random-message.js";

export { prng };

const ZONES = ["eu-1a", "eu-1b", "us-2a", "us-2b"];
const ENVS = ["prod", "staging", "dev", "qa"];
const TEAMS = ["web", "batch", "db", "ml", "infra"];
const HYPERVISORS = ["cloud-hypervisor", "firecracker", "qemu", "kvmtool"];
const GIB = 1024n ** 3n;
const MIB = 1024n ** 2n;

export const hostName = (h: number) => `h${String(h).padStart(4, "0")}`;

/** What an agent reports of its host (GetHostInfo). */
export function hostInfo(h: number): HostInfo {
  const r = prng(1000 + h);
  return create(HostInfoSchema, {
    hostname: hostName(h),
    cpuCount: [32, 64, 96, 128][Math.floor(r() * 4)]!,
    memoryBytes: [256n, 512n, 768n][Math.floor(r() * 3)]! * GIB,
    kernel: "6.1.0-18-amd64",
    agentVersion: r() < 0.1 ? "0.0.9" : "0.1.0",
    labels: { zone: ZONES[h % ZONES.length]!, rack: `r${h % 17}`, ...(r() < 0.2 ? { gpu: "a100" } : {}) },
    incarnation: `inc-${h}`,
    standbySupported: r() < 0.9,
  });
}

/** One instance as its agent reports it. */
export function makeInstance(h: number, i: number, resourceVersion: bigint): Instance {
  const r = prng(h * 100_003 + i);
  const kind = r() < 0.6 ? InstanceKind.VM : r() < 0.7 ? InstanceKind.CONTAINER : InstanceKind.PROCESS;
  const stateRoll = r();
  const state = stateRoll < 0.8 ? InstanceState.RUNNING : stateRoll < 0.9 ? InstanceState.STOPPED : stateRoll < 0.97 ? InstanceState.STANDBY : InstanceState.ERROR;
  const labels: Record<string, string> = { team: TEAMS[Math.floor(r() * TEAMS.length)]!, app: `app-${Math.floor(r() * 200)}` };
  if (r() < 0.9) labels.owner = `user${Math.floor(r() * 500)}`;
  if (r() < 0.95) labels.env = ENVS[Math.floor(r() * ENVS.length)]!;
  if (r() < 0.7) labels.zone = ZONES[Math.floor(r() * ZONES.length)]!;
  const network = r() < 0.85;
  const standby = kind !== InstanceKind.CONTAINER && r() < 0.7;
  return create(InstanceSchema, {
    id: `vm-${h}-${i}`,
    name: r() < 0.98 ? `${labels.app}-${i}` : `Legacy_${i}`,
    kind,
    state,
    pid: kind === InstanceKind.CONTAINER || r() < 0.97 ? 10_000 + i : undefined,
    tapDevice: kind === InstanceKind.VM && network ? (r() < 0.98 ? `tap${i}` : `vnet${i}`) : "",
    ip: network && r() < 0.99 ? `10.${h % 256}.${i >> 8}.${i & 255}` : "",
    networkEnabled: network,
    hasVgpu: r() < 0.05,
    allocatedVcpus: [1, 2, 4, 8, 16, 48][Math.floor(r() * 6)]!,
    allocatedMemoryBytes: [128n, 512n, 2048n, 8192n, 16384n, 1000n][Math.floor(r() * 6)]! * MIB,
    allocatedStorageBytes: BigInt(Math.floor(r() * 600)) * GIB,
    hypervisor: kind === InstanceKind.VM ? HYPERVISORS[Math.floor(r() * HYPERVISORS.length)]! : "",
    standbyPolicy: standby ? create(StandbyPolicySchema, { enabled: r() < 0.8, idleTimeout: "300s", wakeOnTraffic: true }) : undefined,
    labels,
    source: kind === InstanceKind.CONTAINER ? InstanceSource.RUNTIME : InstanceSource.REGISTERED,
    runtimeRef: kind === InstanceKind.CONTAINER ? `docker://${h}-${i}` : "",
    pidStartTime: 123_456n + BigInt(i),
    resourceVersion,
  });
}

const STATE = "fleetlet.agent.v1.InstanceState";
const KIND = "fleetlet.agent.v1.InstanceKind";

const rule = (name: string, severity: PolicySeverity, failsWhen: string, description: string): RuleSpec => ({ name, severity, failsWhen, description, source: PolicySource.FILE });

/** Parameters the extra rules use (the file's, on top of the built-in vcpu_overcommit_ratio). */
export const EXTRA_PARAMETERS = new Map([
  ["max_vcpus", 32],
  ["max_storage_gib", 500],
]);

/**
 * 14 rules as a --policies file would have them. `missing-owner-label` is the one the change
 * stream flips (it adds and removes the owner label).
 */
export const EXTRA_RULES: readonly RuleSpec[] = [
  rule("missing-owner-label", PolicySeverity.WARNING, `!("owner" in instance.labels)`, "no owner label"),
  rule("bad-env-label", PolicySeverity.WARNING, `!("env" in instance.labels) || !(instance.labels["env"] in ["prod", "staging", "dev"])`, "env label missing or not prod/staging/dev"),
  rule("too-many-vcpus", PolicySeverity.WARNING, "double(instance.allocated_vcpus) > params.max_vcpus", "more vCPUs than params.max_vcpus"),
  rule("vcpus-above-host", PolicySeverity.CRITICAL, "host.facts_known && uint(instance.allocated_vcpus) > host.cpu_count", "more vCPUs than its host has"),
  rule("vm-memory-too-small", PolicySeverity.INFO, `instance.kind == ${KIND}.INSTANCE_KIND_VM && instance.allocated_memory_bytes < 268435456`, "a VM with less than 256 MiB"),
  rule("memory-not-mib-aligned", PolicySeverity.INFO, "instance.allocated_memory_bytes % 1048576 != 0", "memory not a whole number of MiB"),
  rule("bad-name", PolicySeverity.INFO, `!instance.name.matches("^[a-z][a-z0-9-]*$")`, "name is not lower-case letters, digits and dashes"),
  rule("instance-in-error", PolicySeverity.CRITICAL, `instance.state == ${STATE}.INSTANCE_STATE_ERROR`, "instance in ERROR"),
  rule("vgpu-on-host-without-gpu", PolicySeverity.CRITICAL, `instance.has_vgpu && !("gpu" in host.labels)`, "a vGPU instance on a host without gpu label"),
  rule("network-without-ip", PolicySeverity.WARNING, `instance.network_enabled && instance.ip == ""`, "network enabled but no IP"),
  rule("vm-tap-naming", PolicySeverity.INFO, `instance.kind == ${KIND}.INSTANCE_KIND_VM && instance.network_enabled && !instance.tap_device.startsWith("tap")`, "a VM tap device not named tap*"),
  rule("storage-above-limit", PolicySeverity.WARNING, "instance.allocated_storage_bytes > int(params.max_storage_gib) * 1073741824", "more storage than params.max_storage_gib"),
  rule("zone-mismatch", PolicySeverity.WARNING, `"zone" in instance.labels && "zone" in host.labels && instance.labels["zone"] != host.labels["zone"]`, "zone label differs from its host's"),
  rule("unknown-hypervisor", PolicySeverity.INFO, `instance.kind == ${KIND}.INSTANCE_KIND_VM && !(instance.hypervisor in ["cloud-hypervisor", "firecracker", "qemu"])`, "a VM on a hypervisor not in the supported list"),
];

/** Which rule names reference `host` (or `params`), from the expression text: what a host-only change needs. */
export const referencesHost = (r: RuleSpec) => /\bhost\./.test(r.failsWhen);
