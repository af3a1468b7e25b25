import { isIP } from "node:net";
import { clone } from "@bufbuild/protobuf";
import {
  InstanceKind,
  InstanceSchema,
  InstanceSource,
  InstanceState,
  type HostInfo,
  type Instance,
} from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { normalizeStandbyPolicy, type PolicyLimits } from "../standby/standby-policy.js";
import { invalidArgument, requireId, truncate } from "../../lib/rpc/field-error.js";
import { deriveTapName, validateInterfaceName } from "./interface-name.js";
import { checkPidOwnership, PidRefusal, readProcessFacts, type PidPolicy, type ProcessFacts, type ProcessGroupRecord } from "./pid-ownership.js";

/** Linux PID_MAX_LIMIT on 64-bit (include/linux/threads.h). */
const PID_MAX = 4_194_304;
const MAX_LABELS = 64;
const LABEL_KEY = /^([a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?\/)?[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$/;

export interface ValidationOptions {
  tapPrefix: string;
  /** --standby-min-idle and the other bounds of a standby policy (default DEFAULT_POLICY_LIMITS). */
  standbyPolicyLimits?: PolicyLimits;
  /** Which pids may be instances (security.md "The host itself"); absent: /proc, no allow lists. */
  pidPolicy?: PidPolicy;
  /** Where registration records a pid that leads its own process group (the signal driver reads it). */
  processGroups?: ProcessGroupRecord;
  /** GetHostInfo's answer (host-info.ts); absent: UNIMPLEMENTED. */
  hostInfo?: () => HostInfo;
}

/**
 * The ownership rules for an instance's pid at registration: INVALID_ARGUMENT for a pid that is
 * never an instance (1, the agent and its ancestors, kernel threads), PERMISSION_DENIED outside
 * --allowed-uids / --allowed-cgroups, both naming `instance.pid`. Returns what /proc says of the
 * process (undefined: none yet; the drivers check again before acting).
 */
export function checkInstancePid(instance: Instance, options: ValidationOptions): ProcessFacts | undefined {
  if (instance.pid === undefined) return undefined;
  const policy = options.pidPolicy ?? { procRoot: "/proc" };
  let facts: ProcessFacts | undefined;
  try {
    facts = readProcessFacts(policy.procRoot, instance.pid);
  } catch (e) {
    throw invalidArgument("instance.pid", `pid ${instance.pid}: /proc cannot be read: ${(e as Error).message}`);
  }
  try {
    checkPidOwnership(instance.pid, facts, policy);
  } catch (e) {
    if (e instanceof PidRefusal) throw e.toConnectError("instance.pid");
    throw e;
  }
  return facts;
}

/**
 * Validates an instance from RegisterInstance and returns the normalised copy the registry
 * stores. Every rejection is INVALID_ARGUMENT naming the field (`instance.<field>`).
 *
 * Defaults, documented in docs/architecture.md: kind UNSPECIFIED → VM; state UNSPECIFIED →
 * RUNNING when a pid is given, else CREATED; source is always REGISTERED (the caller is the
 * API); tap_device is derived from the id when network_enabled and empty.
 */
export function validateInstance(input: Instance | undefined, options: ValidationOptions): Instance {
  if (!input) throw invalidArgument("instance", "is required");
  const out = clone(InstanceSchema, input);
  requireId("instance.id", out.id);
  // Output only: a container's health is its runtime's to say.
  out.health = 0;
  out.healthSince = undefined;
  checkText("instance.name", out.name, 253);
  if (!(out.kind in InstanceKind)) throw invalidArgument("instance.kind", `unknown value ${out.kind}`);
  if (out.kind === InstanceKind.UNSPECIFIED) out.kind = InstanceKind.VM;
  if (!(out.state in InstanceState)) throw invalidArgument("instance.state", `unknown value ${out.state}`);
  if (out.pid !== undefined && (out.pid <= 0 || out.pid > PID_MAX)) {
    throw invalidArgument("instance.pid", `must be between 1 and ${PID_MAX}, got ${out.pid}`);
  }
  if (out.state === InstanceState.UNSPECIFIED) {
    out.state = out.pid !== undefined ? InstanceState.RUNNING : InstanceState.CREATED;
  }
  if (out.tapDevice !== "") validateInterfaceName("instance.tap_device", out.tapDevice);
  else if (out.networkEnabled) out.tapDevice = deriveTapName(options.tapPrefix, out.id);
  if (out.ip !== "" && isIP(out.ip) === 0) {
    throw invalidArgument("instance.ip", `${JSON.stringify(truncate(out.ip))} is not an IPv4 or IPv6 address`);
  }
  if (out.allocatedVcpus < 0) throw invalidArgument("instance.allocated_vcpus", `must be >= 0, got ${out.allocatedVcpus}`);
  if (out.allocatedMemoryBytes < 0n) {
    throw invalidArgument("instance.allocated_memory_bytes", `must be >= 0, got ${out.allocatedMemoryBytes}`);
  }
  if (out.allocatedStorageBytes < 0n) {
    throw invalidArgument("instance.allocated_storage_bytes", `must be >= 0, got ${out.allocatedStorageBytes}`);
  }
  checkText("instance.hypervisor", out.hypervisor, 64);
  checkText("instance.runtime_ref", out.runtimeRef, 512);
  const keys = Object.keys(out.labels);
  if (keys.length > MAX_LABELS) throw invalidArgument("instance.labels", `at most ${MAX_LABELS} labels, got ${keys.length}`);
  for (const key of keys) {
    if (!LABEL_KEY.test(key)) {
      throw invalidArgument(`instance.labels[${JSON.stringify(truncate(key))}]`, "key must be [prefix/]name with name 1-63 of [A-Za-z0-9._-], alphanumeric at both ends");
    }
    checkText(`instance.labels[${JSON.stringify(key)}]`, out.labels[key] ?? "", 256);
  }
  // Missing policy = none, and stays absent: `{enabled: false}` is a policy that is off
  // (POLICY_DISABLED), a missing one is POLICY_MISSING (seed 002). A given one is normalised.
  out.standbyPolicy = out.standbyPolicy ? normalizeStandbyPolicy(out.standbyPolicy, "instance.standby_policy", options.standbyPolicyLimits) : undefined;
  out.source = InstanceSource.REGISTERED;
  // Output only: the agent records the pid's start time itself.
  out.pidStartTime = undefined;
  out.resourceVersion = 0n;
  return out;
}

function checkText(field: string, value: string, max: number): void {
  if (value.length > max) throw invalidArgument(field, `at most ${max} characters, got ${value.length}`);
  // Control characters break tables, logs and label values downstream.
  if (/[\u0000-\u001f\u007f]/.test(value)) throw invalidArgument(field, "must not contain control characters");
}
