import { ConnectionState, FleetService, HostSyncState } from "../gen/fleetlet/aggregator/v1/fleet_pb.js";
import type { ListenAddress } from "../lib/listen-address.js";
import { createLogger, type Logger } from "../lib/rpc/logger.js";
import { startGrpcServer } from "../lib/rpc/grpc-server.js";
import { daemonIdentityResolvers } from "../lib/rpc/authz/authorize.js";
import { TokensFile } from "../lib/rpc/authz/tokens-file.js";
import { channelTlsCredentials, type TlsFiles } from "../lib/rpc/tls-credentials.js";
import { serviceRegistration } from "../lib/rpc/service-adapter.js";
import { startDaemonMetrics } from "../lib/otel-metrics.js";
import { createRpcMetrics } from "../lib/rpc/rpc-metrics.js";
import { claimStateDir } from "../lib/state-dir.js";
import { reportFaultInjection } from "../lib/fault-injection.js";
import { createFleetService } from "./fleet-service.js";
import { HostRegistry } from "./hosts/host-registry.js";
import type { AddressAllowlist } from "./hosts/address-allowlist.js";
import { MeteringFollower } from "./metering/metering-follower.js";
import { MeteringStore } from "./metering/metering-store.js";
import { InventoryFollower, type InventoryFollowerOptions } from "./inventory/inventory-follower.js";
import { InventoryStore } from "./inventory/inventory-store.js";
import { MergedView } from "./inventory/merged-view.js";
import type { HostConfig, ReconnectBackoff } from "./hosts/host-connection.js";
import type { StreamLimits } from "../lib/rpc/stream-budget.js";
import type { ListenerLimits } from "../lib/rpc/listener-limits.js";
import { PolicyStore } from "./policies/policy-store.js";
import { RuleSet } from "./policies/rule-set.js";
import { RulesFile } from "./policies/rules-file.js";
import { ValidationLoop } from "./policies/validation-loop.js";
import { registerPolicyInstruments } from "./policies/policy-metrics.js";

export interface AggregatorOptions {
  listen: ListenAddress;
  /** --tls-cert/--tls-key/--tls-ca of the aggregator's own listener; none: plaintext. */
  tls?: TlsFiles;
  /** --insecure: plaintext allowed off loopback. */
  insecure?: boolean;
  /** --agent-tls-*: dial agents over TLS (CA + SAN check), presenting our certificate (mTLS). */
  agentTls?: TlsFiles;
  /** --tokens-file: callers need a bearer token from it; none: every caller is "local" admin. */
  tokensFile?: string;
  /** --agent-token: presented to agents that have a tokens file (an admin token there). */
  agentToken?: string;
  stateDir: string;
  metricsListen?: ListenAddress;
  hosts: HostConfig[];
  defaultPerHostTimeoutMs: number;
  fanOutConcurrency: number;
  backoff: ReconnectBackoff;
  /** The merged inventory (inventory.md); defaults: stale after 30 s, digest every 60 s. */
  inventory?: Partial<InventoryFollowerOptions> & { watchBuffer?: number };
  logger?: Logger;
  /** Per-stream byte budget and stall cut (default 64 KiB, 30 s). */
  streamLimits?: StreamLimits;
  /** gRPC listener limits (docs/operations.md "Limits"); unset fields keep their defaults. */
  limits?: Partial<ListenerLimits>;
  /** AddHost past this many hosts: RESOURCE_EXHAUSTED (default DEFAULT_MAX_HOSTS). */
  maxHosts?: number;
  /** --add-host-allow: the addresses AddHost may use (unset: any). */
  addHostAllow?: AddressAllowlist;
  /** Fleet policies (issue 14): --policies FILE, --policy-sweep-interval; `off`: no policies at all. */
  policies?: { off?: boolean; file?: string; sweepIntervalMs?: number };
}

export interface RunningAggregator {
  address: string;
  metricsUrl: string | undefined;
  hosts: HostRegistry;
  close(): Promise<void>;
}

/** Wires the aggregator: state dir → hosts and their channels → FleetService → one gRPC port. */
export async function startAggregator(options: AggregatorOptions): Promise<RunningAggregator> {
  const logger = options.logger ?? createLogger("fleetlet-aggregator");
  const claim = claimStateDir(options.stateDir, "aggregator", (path, from, to) =>
    logger.warn({ path, from: `0${from.toString(8)}`, to: `0${to.toString(8)}` }, "state dir: narrowed a path readable by group or others (made by an earlier version)"),
  );
  reportFaultInjection(logger);
  const agentCredentials = options.agentTls ? channelTlsCredentials(options.agentTls, (problem) => logger.warn({ problem }, "agent TLS files not reloaded"), "--agent-tls-ca") : undefined;
  let tokens: TokensFile | undefined;
  const hosts = new HostRegistry(options.stateDir, options.backoff, options.maxHosts, agentCredentials, options.agentToken);
  try {
    hosts.load(options.hosts);
    // The fleet's metering feed: every host's ledger merged exactly once (metering.md).
    const store = MeteringStore.open(options.stateDir);
    const follower = new MeteringFollower(store, hosts, logger);
    // The merged inventory: the last-known view from disk (STALE), then every host followed.
    const inventoryStore = InventoryStore.open(options.stateDir);
    const view = new MergedView(inventoryStore, options.inventory?.watchBuffer);
    const inventory = new InventoryFollower(view, hosts, logger, {
      staleAfterMs: options.inventory?.staleAfterMs ?? 30_000,
      digestIntervalMs: options.inventory?.digestIntervalMs ?? 60_000,
      dropEventOf: options.inventory?.dropEventOf,
    });
    // Fleet policies over the merged view (policies.md): rules, then the validation loop.
    const policies = options.policies?.off ? undefined : startPolicies(view, options, logger);
    const metrics = await startDaemonMetrics("fleetlet-aggregator", options.metricsListen, {
      tls: options.tls,
      insecure: options.insecure,
      warn: (message) => logger.warn({ metrics_listen: options.metricsListen?.grpcTarget }, message),
    });
    const applied = metrics.meter.createObservableCounter("fleetlet_aggregator_inventory_changes_applied", { description: "Watched instance changes applied to the merged inventory" });
    applied.addCallback((result) => result.observe(inventory.applied));
    const relists = metrics.meter.createObservableCounter("fleetlet_aggregator_inventory_relists", { description: "Host relists (first load, expired cursor, new incarnation, digest mismatch)" });
    relists.addCallback((result) => result.observe(inventory.relists));
    const syncGauge = metrics.meter.createObservableGauge("fleetlet_aggregator_inventory_hosts", { unit: "{host}", description: "Hosts by inventory sync state" });
    syncGauge.addCallback((result) => {
      const counts = new Map<string, number>(["LOADING", "SYNCED", "STALE", "DEGRADED"].map((s) => [s, 0]));
      for (const name of view.hostNames()) {
        const state = HostSyncState[view.host(name)!.state] ?? "UNSPECIFIED";
        counts.set(state, (counts.get(state) ?? 0) + 1);
      }
      for (const [state, n] of counts) result.observe(n, { state });
    });
    const merged = metrics.meter.createObservableCounter("fleetlet_aggregator_metering_merged", { unit: "{entry}", description: "Metering entries merged into the fleet feed" });
    merged.addCallback((result) => result.observe(follower.merged));
    const lag = metrics.meter.createObservableGauge("fleetlet_aggregator_metering_lag_entries", { unit: "{entry}", description: "Entries of a host's ledger not merged yet" });
    lag.addCallback((result) => {
      for (const h of hosts.list()) {
        const s = follower.status(h.config.name);
        if (s) result.observe(Number(s.lagEntries), { host: h.config.name });
      }
    });
    if (policies) registerPolicyInstruments(metrics.meter, policies.loop, policies.rules);
    const hostGauge = metrics.meter.createObservableGauge("fleetlet_aggregator_hosts", { unit: "{host}", description: "Hosts by connection state" });
    hostGauge.addCallback((result) => {
      const counts = new Map<number, number>();
      for (const h of hosts.list()) counts.set(h.state, (counts.get(h.state) ?? 0) + 1);
      for (const [state, n] of counts) result.observe(n, { state: ConnectionState[state] ?? String(state) });
    });
    tokens = options.tokensFile === undefined ? undefined : new TokensFile(options.tokensFile, logger);
    const server = await startGrpcServer({
      onCallFinished: createRpcMetrics(metrics.meter),
      listen: options.listen,
      tls: options.tls,
      insecure: options.insecure,
      identify: daemonIdentityResolvers({ tokens, clientCertificates: options.tls?.caFile !== undefined }),
      logger,
      streamLimits: options.streamLimits,
      limits: options.limits,
      services: [
        serviceRegistration(
          FleetService,
          createFleetService(hosts, {
            defaultPerHostTimeoutMs: options.defaultPerHostTimeoutMs,
            fanOutConcurrency: options.fanOutConcurrency,
            metering: { store, follower },
            inventory: { view, follower: inventory },
            addHostAllow: options.addHostAllow,
            policies,
          }),
        ),
      ],
    });
    logger.info({ address: server.address, hosts: hosts.list().length, metrics: metrics.url }, "aggregator serving");
    let closed: Promise<void> | undefined;
    return {
      address: server.address,
      metricsUrl: metrics.url,
      hosts,
      close() {
        closed ??= (async () => {
          await server.close();
          tokens?.close();
          await follower.close();
          await inventory.close();
          policies?.close();
          store.close();
          inventoryStore.close();
          hosts.close();
          await metrics.shutdown();
          claim.release();
          logger.info("aggregator stopped");
        })();
        return closed;
      },
    };
  } catch (e) {
    tokens?.close();
    hosts.close();
    claim.release();
    throw e;
  }
}

/** The rules in force (built-in, --policies file, API) and the loop that validates the view against them. */
function startPolicies(view: MergedView, options: AggregatorOptions, logger: Logger) {
  const store = PolicyStore.open(options.stateDir);
  let rules: RuleSet | undefined;
  let file: RulesFile | undefined;
  try {
    file = options.policies?.file
      ? new RulesFile(
          options.policies.file,
          (content) => {
            rules?.setFile(content);
            logger.info({ file: options.policies?.file, rules: content.rules.length, version: rules?.version }, "policies file reloaded");
          },
          (problem) => logger.warn({ problem }, "policies file not reloaded"),
        )
      : undefined;
    rules = new RuleSet(store, undefined, file?.content);
    const loop = new ValidationLoop(view, rules, {
      logger,
      store,
      sweepIntervalMs: options.policies?.sweepIntervalMs ?? 10_000,
      startGraceMs: options.inventory?.staleAfterMs ?? 30_000,
    });
    const ruleSet = rules;
    return {
      rules: ruleSet,
      loop,
      fileError: () => file?.lastError ?? "",
      close() {
        file?.close();
        loop.close();
        store.close();
      },
    };
  } catch (e) {
    file?.close();
    store.close();
    throw e;
  }
}
