import type { Meter } from "@opentelemetry/api";

/** What the server reports when a call ends: its full method path, gRPC code name and duration. */
export type CallFinished = (method: string, code: string, seconds: number) => void;

/**
 * Per-method gRPC server metrics under the names go-grpc-prometheus made the convention (and its
 * Grafana dashboards and alerts expect): grpc_server_handled_total{grpc_service, grpc_method,
 * grpc_code} and the grpc_server_handling_seconds histogram. Every call counts, health checks
 * included; streams count when they end.
 */
export function createRpcMetrics(meter: Meter): CallFinished {
  const handled = meter.createCounter("grpc_server_handled_total", { description: "RPCs completed on the server, by method and gRPC status code" });
  const handling = meter.createHistogram("grpc_server_handling_seconds", {
    description: "Time from a call's start to its status, by method (streams: their whole life)",
    unit: "s",
    advice: { explicitBucketBoundaries: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300] },
  });
  return (method, code, seconds) => {
    // "/fleetlet.agent.v1.InventoryService/ListInstances"
    const slash = method.lastIndexOf("/");
    const labels = { grpc_service: method.slice(1, slash), grpc_method: method.slice(slash + 1) };
    handled.add(1, { ...labels, grpc_code: code });
    handling.record(seconds, labels);
  };
}
