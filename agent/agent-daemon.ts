import { InstanceSource, InventoryService } from "../gen/fleetlet/agent/v1/inventory_pb.js";
import { MetricsService } from "../gen/fleetlet/agent/v1/metrics_pb.js";
import type { ListenAddress } from "../lib/listen-address.js";
import { createLogger, type Logger } from "../lib/rpc/logger.js";
import { startGrpcServer } from "../lib/rpc/grpc-server.js";
import { daemonIdentityResolvers } from "../lib/rpc/authz/authorize.js";
import { TokensFile } from "../lib/rpc/authz/tokens-file.js";
import type { TlsFiles } from "../lib/rpc/tls-credentials.js";
import { serviceRegistration } from "../lib/rpc/service-adapter.js";
import { startDaemonMetrics } from "../lib/otel-metrics.js";
import { createRpcMetrics } from "../lib/rpc/rpc-metrics.js";
import { readHostInfo } from "./inventory/host-info.js";
import { claimStateDir } from "../lib/state-dir.js";
import { reportFaultInjection } from "../lib/fault-injection.js";
import { InstanceRegistry } from "./inventory/instance-registry.js";
import type { RegistryLimits } from "../lib/resource-limits.js";
import { watchProcessLiveness } from "./inventory/process-liveness.js";
import { ProcessGroupRecord } from "./inventory/pid-ownership.js";
import { join } from "node:path";
import { MeteringService } from "../gen/fleetlet/agent/v1/metering_pb.js";
import { MeteringLedger } from "./metering/ledger.js";
import { registerMeteringEnabledGauge, registerMeteringInstruments } from "./metering/metering-metrics.js";
import { startDiscovery } from "./discovery/discovery-sync.js";
import { createMeteringService } from "./metering/metering-service.js";
import { createInventoryService } from "./inventory/inventory-service.js";
import { DEFAULT_ROOTS, type KernelRoots } from "./kernel/instance-probe.js";
import { createMetricsService } from "./metrics/metrics-service.js";
import { StandbyService } from "../gen/fleetlet/agent/v1/standby_pb.js";
import { setUpStandby } from "./standby/standby-setup.js";
import type { StandbyTimings } from "./standby/standby-timings.js";
import { createStandbyService } from "./standby/standby-service.js";
import { DEFAULT_POLICY_LIMITS } from "./standby/standby-policy.js";
import type { ExecDriverCommands } from "./standby/drivers/exec-driver.js";
import { registerVmInstruments } from "./metrics/prometheus-export.js";
import { SharedSampler } from "./metrics/shared-sampler.js";
import { StatsCollector } from "./metrics/stats-collector.js";
import { RuntimeService } from "../gen/fleetlet/agent/v1/runtime_pb.js";
import { createRuntimeService } from "./runtime/runtime-service.js";
import { setUpRuntimes, type RuntimeOptions } from "./runtime/runtime-setup.js";
import type { StreamLimits } from "../lib/rpc/stream-budget.js";
import type { ListenerLimits } from "../lib/rpc/listener-limits.js";

/** Sweeps younger than this serve a watch tick without reading /proc again. */
const SAMPLER_SHARE_MS = 50;

export interface AgentOptions {
  listen: ListenAddress;
  /** --tls-cert/--tls-key/--tls-ca (security.md "Identities and transport"); none: plaintext. */
  tls?: TlsFiles;
  /** --insecure: plaintext allowed off loopback. */
  insecure?: boolean;
  /** --tokens-file: callers need a bearer token from it (security.md "Authorisation"); none: every caller is "local" admin. */
  tokensFile?: string;
  stateDir: string;
  /** undefined = no Prometheus endpoint. */
  metricsListen?: ListenAddress;
  /** --host-label k=v: reported to the aggregator with the host's facts (GetHostInfo). */
  hostLabels?: Record<string, string>;
  tapPrefix: string;
  metricsLabelBudget: number;
  /** How old a shared sweep ListInstanceStats may answer from; 0 = always fresh. */
  statsMaxAgeMs?: number;
  roots?: KernelRoots;
  logger?: Logger;
  /** Auto-standby over conntrack; false reports every instance UNSUPPORTED (tests, benches). */
  standby?: boolean;
  standbyConcurrency?: number;
  /** --standby-min-idle: the shortest idle_timeout a policy may have (default 5 s). */
  standbyMinIdleMs?: number;
  /** --standby-reconcile-interval, --standby-sync-interval, --standby-reconnect-delay. */
  standbyTimings?: StandbyTimings;
  /** Acknowledged ledger entries kept (default 1,000,000); unacknowledged ones always are. */
  meteringRetain?: number;
  /** Ledger segment size (default 64 MiB); retention deletes whole segments. */
  meteringSegmentBytes?: number;
  /** false: `--metering off` (seed 000's NopRecorder): no ledger, lifecycle changes not metered. */
  metering?: boolean;
  /** --discover: hypervisor processes in /proc become (read-only) instances. */
  discover?: boolean;
  /** Inventory changes kept for WatchInstances (default 16,384). */
  watchHistory?: number;
  standbyExec?: ExecDriverCommands;
  /** Container runtimes (runtime.md); default "auto". */
  runtime?: RuntimeOptions;
  /** Per-stream byte budget and stall cut (default 64 KiB, 30 s). */
  streamLimits?: StreamLimits;
  /** --allowed-uids: instance processes must run as these uids (empty: any). */
  allowedUids?: number[];
  /** --allowed-cgroups: instance processes must be in these cgroups or below (empty: any). */
  allowedCgroups?: string[];
  /** --standby-cgroup-root: the cgroup driver freezes only cgroups below it. */
  standbyCgroupRoot?: string;
  /** gRPC listener limits (docs/operations.md "Limits"); unset fields keep their defaults. */
  limits?: Partial<ListenerLimits>;
  /** Caps on instances and snapshots (docs/operations.md "Limits"). */
  registryLimits?: Partial<RegistryLimits>;
}

export interface RunningAgent {
  address: string;
  metricsUrl: string | undefined;
  registry: InstanceRegistry;
  collector: StatsCollector;
  sampler: SharedSampler;
  /** Graceful stop: stop serving, end streams, release the state dir. */
  close(): Promise<void>;
}

/** Wires the agent: state dir → registry → readers → services → one gRPC port. */
export async function startAgent(options: AgentOptions): Promise<RunningAgent> {
  const logger = options.logger ?? createLogger("fleetlet-agent");
  const roots = options.roots ?? DEFAULT_ROOTS;
  const claim = claimStateDir(options.stateDir, "agent", (path, from, to) =>
    logger.warn({ path, from: `0${from.toString(8)}`, to: `0${to.toString(8)}` }, "state dir: narrowed a path readable by group or others (made by an earlier version)"),
  );
  reportFaultInjection(logger);
  try {
    const registry = InstanceRegistry.open(options.stateDir, roots, { watchHistory: options.watchHistory, limits: options.registryLimits });
    // The metering ledger, made to agree with the registry before anything can change state
    // (a corrupt ledger or one that is not this registry's stops the agent: never skip data).
    // With --metering off there is none: not opened, not created, nothing written (the registry
    // keeps what an earlier run still owed it for when metering is on again).
    const ledger = options.metering === false ? undefined : MeteringLedger.open(join(options.stateDir, "metering"), { retainAcknowledgedEntries: options.meteringRetain, segmentBytes: options.meteringSegmentBytes });
    if (registry.store.tornRecords > 0) logger.warn({ torn_records: registry.store.tornRecords }, "instance registry: a torn last journal record (a crash mid-write, never acknowledged) is cut off before the next write");
    if (ledger && ledger.tornLinesRepaired > 0) logger.warn({ torn_lines: ledger.tornLinesRepaired }, "metering ledger: a torn last line (a crash mid-write, never acknowledged) was cut off");
    if (ledger && ledger.checksumsAdded > 0) logger.warn({ lines: ledger.checksumsAdded }, "metering ledger: lines without a checksum (the newest, cut by a crash, or a ledger from before checksums) were checksummed as they are");
    if (ledger) await registry.attachLedger(ledger);
    else logger.info({ pending_entries: registry.pendingMeteringEntries }, "metering is off (--metering off): no ledger is opened and lifecycle changes are not metered");
    // A ledger outage (its disk full): said once when it begins and once when it ends.
    registry.onLedgerTrouble = (e) =>
      e.kind === "start"
        ? logger.warn({ error: e.error, pending_entries: e.pendingEntries }, "metering ledger: appends fail; changes are applied but not yet metered, retried with backoff")
        : logger.info({ failures: e.failures, seconds: e.seconds, pending_entries: e.pendingEntries }, "metering ledger: appends work again; the pending entries are in");
    const collector = new StatsCollector(registry, { roots });
    // A RUNNING instance whose process is gone becomes STOPPED (metering's stop-crash).
    const stopLiveness = watchProcessLiveness(registry, logger, roots.proc);
    const policyLimits = { ...DEFAULT_POLICY_LIMITS, ...(options.standbyMinIdleMs !== undefined ? { minIdleMs: options.standbyMinIdleMs } : {}) };
    // Which processes may be instances, checked at registration and before every driver acts.
    const pidPolicy = { procRoot: roots.proc, allowedUids: options.allowedUids, allowedCgroups: options.allowedCgroups };
    const processGroups = new ProcessGroupRecord();
    // Registered instances only: discovered and runtime ones are never signalled as a group.
    processGroups.restore(registry.list().filter((i) => i.source === InstanceSource.REGISTERED || i.source === InstanceSource.UNSPECIFIED), roots.proc);
    const validation = { tapPrefix: options.tapPrefix, standbyPolicyLimits: policyLimits, pidPolicy, processGroups };
    const discovery = options.discover ? startDiscovery(registry, logger, validation, roots.proc) : undefined;
    // Watch ticks and scrapes share recent sweeps too: many streams opening at once, or a
    // scrape next to a watch, cost one pass over /proc, not one each.
    const sampler = new SharedSampler((ids) => collector.recentSweep(SAMPLER_SHARE_MS, ids));
    const metrics = await startDaemonMetrics("fleetlet-agent", options.metricsListen, {
      tls: options.tls,
      insecure: options.insecure,
      warn: (message) => logger.warn({ metrics_listen: options.metricsListen?.grpcTarget }, message),
    });
    registerVmInstruments(metrics, () => collector.recentSweep(options.statsMaxAgeMs ?? 0), options.metricsLabelBudget, logger);
    if (ledger) registerMeteringInstruments(metrics.meter, ledger, registry);
    registerMeteringEnabledGauge(metrics.meter, ledger !== undefined);
    const runtimes = await setUpRuntimes(registry, options.runtime ?? { runtimes: "auto" }, logger);
    const standby = await setUpStandby(registry, {
      dockerRuntime: runtimes.docker,
      stateDir: options.stateDir,
      logger,
      concurrency: options.standbyConcurrency ?? 16,
      // The exec driver's failure output is the host's: logged here, never returned to callers.
      exec: options.standbyExec && { ...options.standbyExec, onFailureOutput: (command, output) => logger.warn({ command, output }, "exec driver: command failed") },
      conntrack: options.standby !== false,
      meter: metrics.meter,
      timings: options.standbyTimings,
      pidPolicy,
      processGroups,
      cgroupRoot: options.standbyCgroupRoot,
    });
    const tokens = options.tokensFile === undefined ? undefined : new TokensFile(options.tokensFile, logger);
    const hostInfo = () =>
      readHostInfo({
        procRoot: roots.proc,
        labels: options.hostLabels ?? {},
        incarnation: registry.incarnation,
        standby: () => ({ supported: options.standby !== false && standby.controller.supported, reason: options.standby === false ? "--standby off" : standby.unsupportedReason }),
      });
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
        serviceRegistration(InventoryService, createInventoryService(registry, { ...validation, hostInfo })),
        serviceRegistration(MetricsService, createMetricsService(registry, collector, sampler, options.statsMaxAgeMs ?? 0)),
        serviceRegistration(StandbyService, createStandbyService(registry, standby.controller, policyLimits)),
        serviceRegistration(RuntimeService, createRuntimeService(runtimes.runtimes, runtimes.events)),
        serviceRegistration(MeteringService, createMeteringService(ledger, registry)),
      ],
    });
    logger.info(
      { address: server.address, state_dir: options.stateDir, metering: ledger ? "on" : "off", ledger_id: ledger?.ledgerId, ledger_last_seq: ledger?.lastSeq, metrics: metrics.url, instances: registry.size, incarnation: registry.incarnation, runtimes: runtimes.runtimes.runtimes.map((r) => r.name) },
      "agent serving",
    );
    let closed: Promise<void> | undefined;
    return {
      address: server.address,
      metricsUrl: metrics.url,
      registry,
      collector,
      sampler,
      close() {
        closed ??= (async () => {
          stopLiveness();
          discovery?.stop();
          sampler.close();
          standby.close();
          await server.close();
          tokens?.close();
          await runtimes.close();
          registry.close();
          await ledger?.close();
          collector.close();
          await metrics.shutdown();
          claim.release();
          logger.info("agent stopped");
        })();
        return closed;
      },
    };
  } catch (e) {
    claim.release();
    throw e;
  }
}
