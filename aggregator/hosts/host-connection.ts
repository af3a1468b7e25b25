import * as grpc from "@grpc/grpc-js";
import { createClient, type Client } from "@connectrpc/connect";
import { InventoryService } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { StandbyService } from "../../gen/fleetlet/agent/v1/standby_pb.js";
import { RuntimeService } from "../../gen/fleetlet/agent/v1/runtime_pb.js";
import { MeteringService } from "../../gen/fleetlet/agent/v1/metering_pb.js";
import { ConnectionState, type HostOrigin } from "../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { createGrpcJsTransport, type GrpcJsTransport } from "../../lib/rpc/grpc-transport.js";
import { bearerTokenChannelOptions } from "../../lib/rpc/authz/call-credentials.js";

export interface ReconnectBackoff {
  initialMs: number;
  maxMs: number;
}

export interface HostConfig {
  name: string;
  address: string;
  origin: HostOrigin;
  /** Deadline for calls to this host when the request sets none; undefined = aggregator default. */
  perHostTimeoutMs: number | undefined;
}

const STATE: Record<grpc.connectivityState, ConnectionState> = {
  [grpc.connectivityState.IDLE]: ConnectionState.IDLE,
  [grpc.connectivityState.CONNECTING]: ConnectionState.CONNECTING,
  [grpc.connectivityState.READY]: ConnectionState.READY,
  [grpc.connectivityState.TRANSIENT_FAILURE]: ConnectionState.TRANSIENT_FAILURE,
  [grpc.connectivityState.SHUTDOWN]: ConnectionState.SHUTDOWN,
};

/** The state of a transport's channel as the API reports it (also for a probe's own channel). */
export function connectionStateOf(transport: GrpcJsTransport): ConnectionState {
  return STATE[(transport.client.getChannel() as grpc.Channel).getConnectivityState(false)];
}

/**
 * The aggregator's one long-lived channel to an agent. grpc-js reconnects with exponential
 * backoff (initial/max from flags); we keep the channel out of IDLE so a host's state in
 * ListHosts is always current and the first fan-out after a quiet period pays no handshake.
 * Calls do not wait for a connection (no waitForReady): a dead host fails fast with UNAVAILABLE,
 * a hung one costs its deadline.
 */
export class HostConnection {
  readonly transport: GrpcJsTransport;
  readonly inventory: Client<typeof InventoryService>;
  readonly standby: Client<typeof StandbyService>;
  readonly runtime: Client<typeof RuntimeService>;
  readonly metering: Client<typeof MeteringService>;
  /** Wall-clock epoch ms, reported as last_seen (a timestamp; nothing measures a duration on it). */
  lastSeenMs: number | undefined;
  lastError = "";
  incarnation = "";
  private closed = false;

  constructor(
    readonly config: HostConfig,
    backoff: ReconnectBackoff,
    /** TLS to the agent (--agent-tls-*): its certificate is checked against the CA and the dialled host. */
    credentials?: grpc.ChannelCredentials,
    /** --agent-token: the aggregator's bearer token, sent on every call to the agent. */
    agentToken?: string,
  ) {
    this.transport = createGrpcJsTransport(config.address, {
      credentials,
      channelOptions: {
        ...bearerTokenChannelOptions(agentToken),
        "grpc.initial_reconnect_backoff_ms": backoff.initialMs,
        "grpc.max_reconnect_backoff_ms": backoff.maxMs,
        "grpc.keepalive_time_ms": 30_000,
        "grpc.keepalive_timeout_ms": 10_000,
        "grpc.keepalive_permit_without_calls": 1,
        // Distinct channels per host even when two hosts share an address (tests, benches).
        "grpc.use_local_subchannel_pool": 1,
      },
    });
    this.inventory = createClient(InventoryService, this.transport);
    this.standby = createClient(StandbyService, this.transport);
    this.runtime = createClient(RuntimeService, this.transport);
    this.metering = createClient(MeteringService, this.transport);
    this.watchState(this.channel.getConnectivityState(true));
  }

  get channel(): grpc.Channel {
    return this.transport.client.getChannel() as grpc.Channel;
  }

  get state(): ConnectionState {
    return this.closed ? ConnectionState.SHUTDOWN : STATE[this.channel.getConnectivityState(false)];
  }

  /** Records the outcome of a call: any answer from the agent, even an error status, is "seen". */
  recordSuccess(nowMs: number): void {
    this.lastSeenMs = nowMs;
    this.lastError = "";
  }

  recordFailure(code: string, message: string, agentAnswered: boolean, nowMs: number): void {
    if (agentAnswered) this.lastSeenMs = nowMs;
    this.lastError = `${code}: ${message}`;
  }

  close(): void {
    this.closed = true;
    this.transport.close();
  }

  private watchState(current: grpc.connectivityState): void {
    if (this.closed || current === grpc.connectivityState.SHUTDOWN) return;
    if (current === grpc.connectivityState.READY) this.lastSeenMs = Date.now();
    if (current === grpc.connectivityState.IDLE) this.channel.getConnectivityState(true);
    this.channel.watchConnectivityState(current, Infinity, () => {
      if (this.closed) return;
      this.watchState(this.channel.getConnectivityState(true));
    });
  }
}
