import type * as grpc from "@grpc/grpc-js";
import { create } from "@bufbuild/protobuf";
import { ConnectError, createClient } from "@connectrpc/connect";
import { InventoryService } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { HostProbeSchema, type ConnectionState, type HostProbe } from "../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { Health, HealthCheckResponse_ServingStatus } from "../../gen/grpc/health/v1/health_pb.js";
import { createGrpcJsTransport } from "../../lib/rpc/grpc-transport.js";
import { codeName } from "../../lib/rpc/status-codes.js";
import { connectionStateOf } from "./host-connection.js";
import { bearerTokenChannelOptions } from "../../lib/rpc/authz/call-credentials.js";

/**
 * AddHost's dry run: dials `address` on a channel of its own (the fleet's channels are not
 * touched), asks the server's health and the agent's inventory (one instance: the answer's
 * digest counts them all), all within `timeoutMs`, and reports what answered — or the first
 * call that failed, with its gRPC code. A refused port fails at once (UNAVAILABLE); an address
 * that drops packets costs the timeout (DEADLINE_EXCEEDED). Never throws for the host's sake.
 */
export async function probeHost(address: string, timeoutMs: number, signal?: AbortSignal, credentials?: grpc.ChannelCredentials, agentToken?: string): Promise<{ probe: HostProbe; connectionState: ConnectionState }> {
  // The fleet's own credentials: a TLS agent is probed over TLS, with the same SAN check.
  const transport = createGrpcJsTransport(address, { credentials, channelOptions: bearerTokenChannelOptions(agentToken) });
  const started = performance.now();
  const deadline = started + timeoutMs;
  const remaining = () => Math.max(1, Math.round(deadline - performance.now()));
  const probe = create(HostProbeSchema, { code: "OK" });
  try {
    const health = await createClient(Health, transport).check({ service: "" }, { timeoutMs: remaining(), signal });
    probe.healthStatus = HealthCheckResponse_ServingStatus[health.status] ?? String(health.status);
    const list = await createClient(InventoryService, transport).listInstances({ pageSize: 1 }, { timeoutMs: remaining(), signal });
    probe.reachable = true;
    probe.agentVersion = list.agentVersion;
    probe.agentIncarnation = list.incarnation;
    probe.resourceVersion = list.resourceVersion;
    // The digest of the whole list (without snapshots: instances only); an agent from before
    // digests has none, and its page is then the whole list's count only when it fits.
    probe.instanceCount = list.digest?.count ?? list.instances.length;
  } catch (e) {
    const err = ConnectError.from(e);
    probe.code = codeName(err.code);
    probe.message = err.rawMessage;
  } finally {
    probe.latencyMs = Math.round((performance.now() - started) * 1000) / 1000;
  }
  const connectionState = connectionStateOf(transport);
  transport.close();
  return { probe, connectionState };
}
