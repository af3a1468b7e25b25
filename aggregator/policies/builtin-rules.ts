import { PolicySeverity, PolicySource } from "../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import type { RuleSpec } from "./policy-rule.js";

/**
 * The rules on by default (docs/operations.md "Policies"). Enum values are named in full
 * (`fleetlet.agent.v1.InstanceState.INSTANCE_STATE_RUNNING`): a rule reads as what it checks.
 * A rule put through the API under one of these names replaces it; deleting one turns it off.
 */
const STATE = "fleetlet.agent.v1.InstanceState";
const KIND = "fleetlet.agent.v1.InstanceKind";
const SOURCE = "fleetlet.agent.v1.InstanceSource";

export const BUILTIN_RULES: readonly RuleSpec[] = [
  {
    name: "running-without-process",
    severity: PolicySeverity.WARNING,
    description: "RUNNING but no process to measure: a registered VM or process without a pid has no stats, and standby cannot act on it",
    failsWhen: `instance.state == ${STATE}.INSTANCE_STATE_RUNNING && instance.source == ${SOURCE}.INSTANCE_SOURCE_REGISTERED && instance.kind != ${KIND}.INSTANCE_KIND_CONTAINER && !has(instance.pid)`,
    source: PolicySource.BUILTIN,
  },
  {
    name: "no-standby-policy",
    severity: PolicySeverity.INFO,
    description: "no standby policy: the instance is never put on standby when idle",
    failsWhen: `instance.source == ${SOURCE}.INSTANCE_SOURCE_REGISTERED && instance.kind != ${KIND}.INSTANCE_KIND_CONTAINER && !has(instance.standby_policy)`,
    source: PolicySource.BUILTIN,
  },
  {
    name: "standby-unsupported",
    severity: PolicySeverity.WARNING,
    description: "standby is enabled for a network instance but its host cannot see traffic (conntrack not tracking): it will never be put on standby",
    failsWhen: "instance.network_enabled && has(instance.standby_policy) && instance.standby_policy.enabled && host.facts_known && !host.standby_supported",
    source: PolicySource.BUILTIN,
  },
  {
    name: "memory-above-host",
    severity: PolicySeverity.CRITICAL,
    description: "allocated memory is more than the host has",
    failsWhen: "host.facts_known && host.memory_bytes > 0u && uint(instance.allocated_memory_bytes) > host.memory_bytes",
    source: PolicySource.BUILTIN,
  },
  {
    name: "vcpu-overcommit",
    severity: PolicySeverity.WARNING,
    description: "the instances of its host together are allocated more vCPUs than params.vcpu_overcommit_ratio times the host's CPUs",
    failsWhen: `instance.state != ${STATE}.INSTANCE_STATE_STOPPED && host.facts_known && host.cpu_count > 0u && double(host.allocated_vcpus) > params.vcpu_overcommit_ratio * double(host.cpu_count)`,
    source: PolicySource.BUILTIN,
  },
  {
    name: "container-unhealthy",
    severity: PolicySeverity.WARNING,
    description: "a container whose health check has been failing for longer than params.unhealthy_after_seconds",
    failsWhen: `instance.kind == ${KIND}.INSTANCE_KIND_CONTAINER && instance.health == fleetlet.agent.v1.HealthStatus.HEALTH_STATUS_UNHEALTHY && has(instance.health_since) && now - instance.health_since > duration(string(int(params.unhealthy_after_seconds)) + "s")`,
    source: PolicySource.BUILTIN,
  },
  {
    name: "host-stale-running",
    severity: PolicySeverity.CRITICAL,
    description: "RUNNING on a host the aggregator has not heard from for --stale-after: its state is not known",
    failsWhen: `instance.state == ${STATE}.INSTANCE_STATE_RUNNING && host.sync_state == fleetlet.aggregator.v1.HostSyncState.HOST_SYNC_STATE_STALE`,
    source: PolicySource.BUILTIN,
  },
];

/** Parameters rules see as `params`, before the --policies file's. */
export const DEFAULT_PARAMETERS: ReadonlyMap<string, number> = new Map([
  ["vcpu_overcommit_ratio", 4],
  ["unhealthy_after_seconds", 300],
]);
