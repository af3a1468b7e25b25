import * as grpc from "@grpc/grpc-js";
import { setMaxListeners } from "node:events";
import { Code, ConnectError } from "@connectrpc/connect";
import type { DescService } from "@bufbuild/protobuf";
import { Health } from "../../gen/grpc/health/v1/health_pb.js";
import { ServerReflection as ReflectionV1 } from "../../gen/grpc/reflection/v1/reflection_pb.js";
import { ServerReflection as ReflectionV1alpha } from "../../gen/grpc/reflection/v1alpha/reflection_pb.js";
import { createHealthRegistry, ServingStatus, type HealthRegistry } from "./health-service.js";
import { createReflectionImpls } from "./reflection-service.js";
import { adaptService, type CallInterceptor, type ServiceRegistration } from "./service-adapter.js";
import type { CallFinished } from "./rpc-metrics.js";
import type { Logger } from "./logger.js";
import type { StreamLimits } from "./stream-budget.js";
import { StreamSlots } from "./stream-slots.js";
import { DEFAULT_LISTENER_LIMITS, type ListenerLimits } from "./listener-limits.js";
import { MutatingRateLimit } from "./authz/mutating-rate-limit.js";

export { DEFAULT_LISTENER_LIMITS, type ListenerLimits };
import type { ListenAddress } from "../listen-address.js";
import { createAuthorizer, type IdentityResolver } from "./authz/authorize.js";
import { serverTlsCredentials, type TlsFiles } from "./tls-credentials.js";
import { plaintextBindProblem } from "./tls-plaintext-bind.js";

export interface GrpcServerOptions {
  listen: ListenAddress;
  services: ServiceRegistration[];
  logger: Logger;
  interceptors?: CallInterceptor[];
  /**
   * How callers are identified (bearer tokens, client certificates), tried in order. Every call
   * is authorised against the role table first (default deny). None: every caller is "local"
   * with role admin — the development default on loopback (security.md "Authorisation").
   */
  identify?: IdentityResolver[];
  /**
   * TLS from these files, re-read on change (--tls-cert/--tls-key; --tls-ca: mTLS). Without
   * them the listener is plaintext, which a non-loopback address refuses unless `insecure`.
   */
  tls?: TlsFiles;
  /** --insecure: plaintext off loopback is allowed, with a warning at start. */
  insecure?: boolean;
  /** Per-stream byte budget and stall cut for clients that do not read (default: 64 KiB, 30 s). */
  streamLimits?: StreamLimits;
  /** Message sizes, streams, connection lifetimes and open watches (default DEFAULT_LISTENER_LIMITS). */
  limits?: Partial<ListenerLimits>;
  /** Told of every call's end (the daemons' grpc_server_* metrics, rpc-metrics.ts). */
  onCallFinished?: CallFinished;
}


export interface RunningGrpcServer {
  /** host:port actually bound (port 0 resolved). */
  address: string;
  port: number;
  health: HealthRegistry;
  /**
   * Graceful stop: health goes NOT_SERVING, streams are told to end, in-flight unary calls get
   * up to `graceMs` to finish, then remaining calls are cancelled.
   */
  close(graceMs?: number): Promise<void>;
}

/** TLS from the files, or plaintext where security.md allows it (throws the one-line refusal). */
function listenerCredentials(options: GrpcServerOptions): grpc.ServerCredentials {
  const tls = options.tls;
  if (tls && (tls.certFile !== undefined || tls.keyFile !== undefined || tls.caFile !== undefined)) {
    return serverTlsCredentials(tls, (problem) => options.logger.warn({ problem }, "TLS files not reloaded"));
  }
  const bind = plaintextBindProblem(options.listen, "--listen", options.insecure ?? false);
  if (bind.refuse) throw new Error(bind.refuse);
  if (bind.warn) options.logger.warn({ listen: options.listen.grpcTarget }, bind.warn);
  return grpc.ServerCredentials.createInsecure();
}

/**
 * One gRPC port serving the given Connect services plus grpc.health.v1 (a status per service)
 * and server reflection v1/v1alpha built from the same generated descriptors.
 */
export async function startGrpcServer(options: GrpcServerOptions): Promise<RunningGrpcServer> {
  const credentials = listenerCredentials(options);
  const shutdown = new AbortController();
  // Every in-flight call listens on this signal; hundreds at once are normal.
  setMaxListeners(0, shutdown.signal);
  const health = createHealthRegistry();
  const reflection = createReflectionImpls([
    ...options.services.map((s) => s.service),
    Health as DescService,
    ReflectionV1 as DescService,
    ReflectionV1alpha as DescService,
  ]);
  const all: ServiceRegistration[] = [
    ...options.services,
    { service: Health, impl: health.impl } as unknown as ServiceRegistration,
    { service: ReflectionV1, impl: reflection.v1 } as unknown as ServiceRegistration,
    { service: ReflectionV1alpha, impl: reflection.v1alpha } as unknown as ServiceRegistration,
  ];
  const limits: ListenerLimits = { ...DEFAULT_LISTENER_LIMITS, ...options.limits };
  const streamSlots = new StreamSlots(limits);
  const server = new grpc.Server({
    "grpc.max_receive_message_length": limits.maxReceiveMessageBytes,
    "grpc.max_send_message_length": limits.maxSendMessageBytes,
    "grpc.max_concurrent_streams": limits.maxConcurrentStreams,
    "grpc.max_connection_idle_ms": limits.maxConnectionIdleMs,
    "grpc.max_connection_age_ms": limits.maxConnectionAgeMs,
    "grpc.max_connection_age_grace_ms": limits.maxConnectionAgeGraceMs,
    "grpc-node.max_session_memory": limits.maxSessionMemoryMiB,
    // Keep idle client connections (the aggregator's long-lived channels) alive through NATs.
    "grpc.keepalive_time_ms": 60_000,
    "grpc.keepalive_permit_without_calls": 1,
  });
  const authorize = createAuthorizer({
    resolvers: options.identify ?? [],
    logger: options.logger,
    mutatingRateLimit: limits.maxMutatingCallsPerSecond > 0 ? new MutatingRateLimit(limits.maxMutatingCallsPerSecond) : undefined,
  });
  const quietMethods = new Set([`/${Health.typeName}/Check`, `/${Health.typeName}/Watch`]);
  for (const registration of all) {
    const { definition, handlers } = adaptService(registration, {
      logger: options.logger,
      shutdownSignal: shutdown.signal,
      interceptors: [authorize, ...(options.interceptors ?? [])],
      quietMethods,
      streamLimits: options.streamLimits,
      streamSlots,
      onCallFinished: options.onCallFinished,
    });
    server.addService(definition, handlers);
  }
  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync(
      `${options.listen.grpcTarget}`,
      credentials,
      (err, boundPort) => (err ? reject(err) : resolve(boundPort)),
    );
  });
  health.set("", ServingStatus.SERVING);
  for (const s of options.services) health.set(s.service.typeName, ServingStatus.SERVING);

  let closing: Promise<void> | undefined;
  return {
    address: `${options.listen.hostForClients}:${port}`,
    port,
    health,
    close(graceMs = 5000) {
      closing ??= new Promise<void>((resolve) => {
        health.shutdown();
        // UNAVAILABLE, not CANCELLED: clients may retry elsewhere or after a restart.
        shutdown.abort(new ConnectError("server shutting down", Code.Unavailable));
        const force = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, graceMs);
        server.tryShutdown(() => {
          clearTimeout(force);
          resolve();
        });
      });
      return closing;
    },
  };
}
