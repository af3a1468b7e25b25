import { clone, create } from "@bufbuild/protobuf";
import { durationFromMs, durationMs, timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { InstanceSchema, InstanceSource } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import {
  StandbyReason,
  type StandbyService,
  StandbyState,
  StandbyStatusSchema,
  type StandbyStatus,
} from "../../gen/fleetlet/agent/v1/standby_pb.js";
import { sleepUnlessAborted } from "../../lib/abort-race.js";
import { invalidArgument, requireId } from "../../lib/rpc/field-error.js";
import type { InstanceRegistry } from "../inventory/instance-registry.js";
import type { StandbyController, StandbyDescription } from "./standby-controller.js";
import { normalizeStandbyPolicy, type PolicyLimits } from "./standby-policy.js";

const MAX_HOLD_MS = 30 * 24 * 3600 * 1000;
const WATCH_POLL_MS = 250;

/** StandbyService: the controller's Describe table and commands over RPC. */
export function createStandbyService(
  registry: InstanceRegistry,
  controller: StandbyController,
  limits: PolicyLimits,
): ServiceImpl<typeof StandbyService> {
  const status = (id: string): StandbyStatus => toStatus(controller.describe(id));
  /**
   * Calls that change what standby would do answer FAILED_PRECONDITION where standby cannot run
   * at all: succeeding with no effect would let a caller believe a policy or a hold is in force.
   */
  const requireSupported = (what: string) => {
    if (!controller.supported) {
      // The reason can change (a tracking check that fails, then passes): read it each time.
      throw new ConnectError(`${what}: standby is not supported on this agent: ${controller.unsupportedReason ?? "conntrack unavailable"}`, Code.FailedPrecondition);
    }
  };
  const known = (field: string, id: string) => {
    requireId(field, id);
    if (!registry.get(id)) throw new ConnectError(`instance ${JSON.stringify(id)} not found`, Code.NotFound);
  };
  return {
    getStandbyStatus(req) {
      known("instance_id", req.instanceId);
      return { status: status(req.instanceId) };
    },
    listStandbyStatus() {
      return { statuses: registry.list().map((i) => status(i.id)) };
    },
    async *watchStandbyStatus(req, context) {
      req.instanceIds.forEach((id, i) => known(`instance_ids[${i}]`, id));
      // Current state first, then a message whenever an instance's row changes. Polled from
      // the controller's table: cheap (no I/O) and it can never miss a transition's end state.
      const last = new Map<string, string>();
      while (!context.signal.aborted) {
        const ids = req.instanceIds.length > 0 ? req.instanceIds : registry.list().map((i) => i.id);
        for (const id of ids) {
          if (!registry.get(id)) continue;
          const s = status(id);
          const fingerprint = JSON.stringify({ ...s, countdownRemaining: undefined, $typeName: undefined }, (_k, v: unknown) => (typeof v === "bigint" ? v.toString() : v));
          if (last.get(id) === fingerprint) continue;
          last.set(id, fingerprint);
          yield { status: s };
        }
        await sleepUnlessAborted(WATCH_POLL_MS, context.signal);
      }
    },
    async setStandbyPolicy(req) {
      known("instance_id", req.instanceId);
      if (registry.get(req.instanceId)!.source === InstanceSource.DISCOVERED) {
        throw new ConnectError(`instance ${JSON.stringify(req.instanceId)} was discovered on the host and is read-only`, Code.FailedPrecondition);
      }
      if (!req.policy) throw invalidArgument("policy", "is required");
      requireSupported("SetStandbyPolicy");
      const policy = normalizeStandbyPolicy(req.policy, "policy", limits);
      const next = clone(InstanceSchema, registry.get(req.instanceId)!);
      next.standbyPolicy = policy;
      await registry.upsert(next);
      return { policy };
    },
    holdStandby(req) {
      known("instance_id", req.instanceId);
      const ms = req.duration ? durationMs(req.duration) : 0;
      if (!(ms > 0) || ms > MAX_HOLD_MS) throw invalidArgument("duration", `must be > 0 and <= 720h, got ${ms} ms`);
      requireSupported("HoldStandby");
      return { holdUntil: timestampFromMs(controller.hold(req.instanceId, ms)) };
    },
    resetIdle(req) {
      known("instance_id", req.instanceId);
      requireSupported("ResetIdle");
      controller.resetIdle(req.instanceId);
      return { status: status(req.instanceId) };
    },
    async wakeInstance(req) {
      known("instance_id", req.instanceId);
      await controller.wake(req.instanceId);
      return { status: status(req.instanceId) };
    },
  };
}

function toStatus(d: StandbyDescription): StandbyStatus {
  const ts = (ms: number | undefined) => (ms === undefined ? undefined : timestampFromMs(ms));
  return create(StandbyStatusSchema, {
    instanceId: d.instanceId,
    supported: d.supported,
    configured: d.configured,
    enabled: d.enabled,
    eligible: d.eligible,
    status: StandbyState[d.status],
    reason: StandbyReason[d.reason],
    activeInboundCount: d.activeInboundCount,
    idleTimeout: d.idleTimeout,
    idleSince: ts(d.idleSince),
    lastInboundActivityAt: ts(d.lastInboundActivityAt),
    nextStandbyAt: ts(d.nextStandbyAt),
    countdownRemaining: d.countdownRemainingMs === undefined ? undefined : durationFromMs(d.countdownRemainingMs),
    trackingMode: d.trackingMode,
    holdUntil: ts(d.holdUntil),
    lastError: d.lastError ?? "",
    unsupportedReason: d.supported ? "" : (d.unsupportedReason ?? ""),
  });
}
