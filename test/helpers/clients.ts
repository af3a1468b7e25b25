import { createClient, type Client } from "@connectrpc/connect";
import { InventoryService } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { MetricsService } from "../../gen/fleetlet/agent/v1/metrics_pb.js";
import { FleetService } from "../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { createGrpcJsTransport } from "../../lib/rpc/grpc-transport.js";

/** Typed clients for an agent at `address`; close() releases the channel. */
export function agentClients(address: string): {
  inventory: Client<typeof InventoryService>;
  metrics: Client<typeof MetricsService>;
  close(): void;
} {
  const transport = createGrpcJsTransport(address);
  return {
    inventory: createClient(InventoryService, transport),
    metrics: createClient(MetricsService, transport),
    close: () => transport.close(),
  };
}

export function fleetClient(address: string): { fleet: Client<typeof FleetService>; close(): void } {
  const transport = createGrpcJsTransport(address);
  return { fleet: createClient(FleetService, transport), close: () => transport.close() };
}
