import type { ServiceImpl } from "@connectrpc/connect";
import { Code, ConnectError } from "@connectrpc/connect";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { create } from "@bufbuild/protobuf";
import {
  ListInstanceStatsResponseSchema,
  type MetricsService,
  type InstanceStats,
  type ListInstanceStatsResponse,
} from "../../gen/fleetlet/agent/v1/metrics_pb.js";
import { invalidArgument, requireId } from "../../lib/rpc/field-error.js";
import type { InstanceRegistry } from "../inventory/instance-registry.js";
import type { StatsCollector } from "./stats-collector.js";
import { CALLER_PEER } from "../../lib/rpc/service-adapter.js";
import { peerAddress } from "../../lib/rpc/stream-slots.js";
import { DEFAULT_INTERVAL_MS, MIN_INTERVAL_MS, type SharedSampler } from "./shared-sampler.js";

const MAX_IDS = 10_000;
const MAX_INTERVAL_MS = 3_600_000;

/** MetricsService: readers → RPC answers (metrics.md "Service"). */
export function createMetricsService(
  registry: InstanceRegistry,
  collector: StatsCollector,
  sampler: SharedSampler,
  /** ListInstanceStats may answer from a sweep this recent (0 = always sweep anew). */
  statsMaxAgeMs = 0,
): ServiceImpl<typeof MetricsService> {
  let shared: { stats: InstanceStats[]; response: ListInstanceStatsResponse } | undefined;
  const checkIds = (ids: string[]) => {
    if (ids.length > MAX_IDS) throw invalidArgument("instance_ids", `at most ${MAX_IDS} ids, got ${ids.length}`);
    ids.forEach((id, i) => requireId(`instance_ids[${i}]`, id));
  };
  return {
    getInstanceStats(req) {
      requireId("instance_id", req.instanceId);
      const instance = registry.get(req.instanceId);
      if (!instance) throw new ConnectError(`instance ${JSON.stringify(req.instanceId)} not found`, Code.NotFound);
      return { stats: collector.measure(instance) };
    },
    listInstanceStats(req) {
      checkIds(req.instanceIds);
      const stats = collector.recentSweep(statsMaxAgeMs, req.instanceIds);
      // The same sweep gives the same response object, which the adapter encodes only once.
      if (shared?.stats !== stats) shared = { stats, response: create(ListInstanceStatsResponseSchema, { stats }) };
      return shared.response;
    },
    async *watchInstanceStats(req, context) {
      checkIds(req.instanceIds);
      const interval = req.intervalMs === 0 ? DEFAULT_INTERVAL_MS : req.intervalMs;
      if (interval < MIN_INTERVAL_MS || interval > MAX_INTERVAL_MS) {
        throw invalidArgument("interval_ms", `must be between ${MIN_INTERVAL_MS} and ${MAX_INTERVAL_MS} (0 = ${DEFAULT_INTERVAL_MS}), got ${req.intervalMs}`);
      }
      for await (const batch of sampler.watch(interval, req.instanceIds, context.signal, peerAddress(context.values.get(CALLER_PEER)))) {
        yield { stats: batch.stats, sampledAt: timestampFromMs(batch.sampledAtMs), droppedBatches: batch.dropped };
      }
    },
  };
}
