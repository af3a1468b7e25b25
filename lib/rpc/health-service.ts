import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import {
  type Health,
  HealthCheckResponse_ServingStatus as ServingStatus,
} from "../../gen/grpc/health/v1/health_pb.js";
import { followSource } from "./follow-source.js";

export { ServingStatus };

/**
 * grpc.health.v1.Health with one status per service plus "" for the server as a whole
 * (https://github.com/grpc/grpc/blob/master/doc/health-checking.md). Watch answers at once with
 * the current status, then every change, and SERVICE_UNKNOWN for a name never registered.
 */
export interface HealthRegistry {
  set(service: string, status: ServingStatus): void;
  /** Marks every service NOT_SERVING: the first step of a graceful shutdown. */
  shutdown(): void;
  impl: ServiceImpl<typeof Health>;
}

export function createHealthRegistry(): HealthRegistry {
  const statuses = new Map<string, ServingStatus>();
  const watchers = new Set<() => void>();
  const notify = () => {
    for (const wake of watchers) wake();
  };
  const lookup = (service: string) => statuses.get(service) ?? ServingStatus.SERVICE_UNKNOWN;

  return {
    set(service, status) {
      if (statuses.get(service) === status) return;
      statuses.set(service, status);
      notify();
    },
    shutdown() {
      for (const key of statuses.keys()) statuses.set(key, ServingStatus.NOT_SERVING);
      notify();
    },
    impl: {
      check(req) {
        const status = statuses.get(req.service);
        if (status === undefined) {
          throw new ConnectError(`unknown service ${JSON.stringify(req.service)}`, Code.NotFound);
        }
        return { status };
      },
      list() {
        const out: Record<string, { status: ServingStatus }> = {};
        for (const [service, status] of statuses) out[service] = { status };
        return { statuses: out };
      },
      watch(req, context) {
        // The status table is the durable source: a stream reads the current status whenever
        // something changed and sends it when it differs from what this stream sent last, so a
        // slow client skips intermediate statuses instead of queueing them.
        let last: ServingStatus | undefined;
        return followSource(
          context.signal,
          (notify) => {
            watchers.add(notify);
            return () => watchers.delete(notify);
          },
          () => {
            const current = lookup(req.service);
            if (current === last) return undefined;
            last = current;
            return { status: current };
          },
        );
      },
    },
  };
}
