import { faultInjection } from "../lib/fault-injection.js";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Command, InvalidArgumentError } from "commander";
import { validateTapPrefix } from "../agent/inventory/interface-name.js";
import { parseRuntimeList, type RuntimeOptions } from "../agent/runtime/runtime-setup.js";
import { mergeHostConfigs, parseHostsFile, parseHostsFlag } from "../aggregator/hosts/host-list-parser.js";
import { AddressAllowlist } from "../aggregator/hosts/address-allowlist.js";
import type { ListenAddress } from "../lib/listen-address.js";
import { createLogger } from "../lib/rpc/logger.js";
import { applyConfigFile, configurable, parse } from "./options.js";
import type { TlsFiles } from "../lib/rpc/tls-credentials.js";
import { errorMessage } from "../lib/error-message.js";
import { DEFAULT_STREAM_LIMITS } from "../lib/rpc/stream-budget.js";
import { DEFAULT_LISTENER_LIMITS, type ListenerLimits } from "../lib/rpc/listener-limits.js";
import { DEFAULT_MAX_HOSTS, DEFAULT_REGISTRY_LIMITS } from "../lib/resource-limits.js";
import { DEFAULT_MIN_IDLE_MS, DEFAULT_STANDBY_TIMINGS } from "../agent/standby/standby-timings.js";

/** Default state location: /var/lib/fleetlet as root, ./.fleetlet otherwise (architecture.md). */
export function defaultStateBase(): string {
  return process.getuid?.() === 0 ? "/var/lib/fleetlet" : ".fleetlet";
}

/** Runs a daemon until SIGTERM/SIGINT, then stops it gracefully and exits 0. */
async function runUntilSignal(name: string, start: () => Promise<{ close(): Promise<void> }>): Promise<void> {
  let daemon: { close(): Promise<void> };
  try {
    daemon = await start();
  } catch (e) {
    // Unusable state dir, port in use, bad hosts file: one line, exit 2.
    process.stderr.write(`fleetlet ${name}: ${errorMessage(e)}\n`);
    process.exit(2);
  }
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    const force = setTimeout(() => {
      process.stderr.write(`fleetlet ${name}: graceful stop after ${signal} took too long, exiting\n`);
      process.exit(1);
    }, 10_000);
    force.unref();
    void daemon.close().then(() => process.exit(0));
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
}

/** TLS of the gRPC listener, the same flags on both daemons (docs/operations.md "TLS"). */
function addTlsOptions(cmd: Command, prefix: "AGENT" | "AGGREGATOR"): Command {
  return cmd
    .addOption(configurable(prefix, "--tls-cert <file>", "PEM certificate (chain) of this listener; re-read when it changes"))
    .addOption(configurable(prefix, "--tls-key <file>", "PEM private key of --tls-cert; re-read when it changes"))
    .addOption(configurable(prefix, "--tls-ca <file>", "PEM CA: clients must present a certificate chaining to it (mTLS)"))
    .addOption(configurable(prefix, "--insecure", "allow plaintext gRPC on a non-loopback --listen (warned at every start)"));
}

interface TlsFlags {
  tlsCert?: string;
  tlsKey?: string;
  tlsCa?: string;
  /** true from the flag; "true"/"false" from a --config file (a string "false" must not count). */
  insecure?: boolean | string;
}

function insecureFlag(o: TlsFlags): boolean {
  return o.insecure === true || o.insecure === "true";
}

function tlsFiles(o: TlsFlags): TlsFiles | undefined {
  if (o.tlsCert === undefined && o.tlsKey === undefined && o.tlsCa === undefined) return undefined;
  return { certFile: o.tlsCert, keyFile: o.tlsKey, caFile: o.tlsCa };
}

/** --tokens-file on both daemons (docs/operations.md "Roles and tokens"). */
function addTokensFileOption(cmd: Command, prefix: "AGENT" | "AGGREGATOR"): Command {
  return cmd.addOption(
    configurable(prefix, "--tokens-file <file>", "bearer tokens, one 'name role sha256-hex' per line, re-read on change; unset: every caller is 'local' admin (loopback development)"),
  );
}

/** The gRPC listener limits, the same flags on both daemons (docs/operations.md "Limits"). */
function addListenerLimitOptions(cmd: Command, prefix: "AGENT" | "AGGREGATOR"): Command {
  const d = DEFAULT_LISTENER_LIMITS;
  return cmd
    .addOption(configurable(prefix, "--max-receive-message-size <bytes>", "largest request accepted (RESOURCE_EXHAUSTED past it)").default(d.maxReceiveMessageBytes).argParser(parse.positiveInt))
    .addOption(configurable(prefix, "--max-send-message-size <bytes>", "largest response sent (container logs answer up to 16 MiB)").default(d.maxSendMessageBytes).argParser(parse.positiveInt))
    .addOption(configurable(prefix, "--max-concurrent-streams <n>", "HTTP/2 streams one connection may have open (announced in SETTINGS)").default(d.maxConcurrentStreams).argParser(parse.positiveInt))
    .addOption(configurable(prefix, "--max-connection-idle <duration>", "a connection with no call for this long is closed").default(d.maxConnectionIdleMs, "30m").argParser(parse.durationMs))
    .addOption(configurable(prefix, "--max-connection-age <duration>", "a connection is asked to reconnect after this long").default(d.maxConnectionAgeMs, "24h").argParser(parse.durationMs))
    .addOption(configurable(prefix, "--max-connection-age-grace <duration>", "calls still open this long after --max-connection-age are cut (watches resume)").default(d.maxConnectionAgeGraceMs, "1h").argParser(parse.durationMs))
    .addOption(configurable(prefix, "--max-session-memory <MiB>", "HTTP/2 memory per connection past which new streams are refused").default(d.maxSessionMemoryMiB).argParser(parse.positiveInt))
    .addOption(configurable(prefix, "--max-watch-streams <n>", "streaming calls (watches) open at once on this daemon (RESOURCE_EXHAUSTED past it)").default(d.maxStreams).argParser(parse.positiveInt))
    .addOption(configurable(prefix, "--max-watch-streams-per-peer <n>", "streaming calls one client (its identity; its address with no credentials configured) may have open at once").default(d.maxStreamsPerPeer).argParser(parse.positiveInt))
    .addOption(configurable(prefix, "--max-mutating-calls-per-second <n>", "state-changing calls one identity (token or certificate) may make per second, bursts of twice that; 0: no limit").default(d.maxMutatingCallsPerSecond).argParser(parse.nonNegativeInt));
}

type ListenerLimitFlags = {
  maxReceiveMessageSize: number;
  maxSendMessageSize: number;
  maxConcurrentStreams: number;
  maxConnectionIdle: number;
  maxConnectionAge: number;
  maxConnectionAgeGrace: number;
  maxSessionMemory: number;
  maxWatchStreams: number;
  maxWatchStreamsPerPeer: number;
  maxMutatingCallsPerSecond: number;
};

function listenerLimits(o: ListenerLimitFlags): ListenerLimits {
  return {
    maxReceiveMessageBytes: o.maxReceiveMessageSize,
    maxSendMessageBytes: o.maxSendMessageSize,
    maxConcurrentStreams: o.maxConcurrentStreams,
    maxConnectionIdleMs: o.maxConnectionIdle,
    maxConnectionAgeMs: o.maxConnectionAge,
    maxConnectionAgeGraceMs: o.maxConnectionAgeGrace,
    maxSessionMemoryMiB: o.maxSessionMemory,
    maxStreams: o.maxWatchStreams,
    maxStreamsPerPeer: o.maxWatchStreamsPerPeer,
    maxMutatingCallsPerSecond: o.maxMutatingCallsPerSecond,
  };
}

/** --host-label k=v, repeatable: the labels so far with this one added (label syntax as instances'). */
function parseHostLabel(value: string, previous: Record<string, string> | undefined): Record<string, string> {
  const at = value.indexOf("=");
  const k = at > 0 ? value.slice(0, at) : "";
  const v = at > 0 ? value.slice(at + 1) : "";
  if (!/^[A-Za-z0-9][A-Za-z0-9._/-]{0,252}$/.test(k)) throw new InvalidArgumentError(`${JSON.stringify(value)}: want key=value, the key 1 to 253 of A-Z a-z 0-9 . _ / -`);
  if (v.length > 256 || /[\u0000-\u001f\u007f]/.test(v)) throw new InvalidArgumentError(`${JSON.stringify(value)}: the value is at most 256 printable characters`);
  return { ...(previous ?? {}), [k]: v };
}

/** --allowed-uids: "0,1000" → [0, 1000]. */
function parseUidList(value: string): number[] {
  return value.split(",").map((v) => parse.nonNegativeInt(v.trim()));
}

/** --allowed-cgroups, --standby-cgroup-root: absolute cgroup paths as /proc/<pid>/cgroup shows them. */
function parseCgroupList(value: string): string[] {
  return value.split(",").map((v) => {
    const p = v.trim();
    if (!p.startsWith("/") || p.split("/").includes("..")) throw new InvalidArgumentError(`${JSON.stringify(p)} is not an absolute cgroup path (as /proc/<pid>/cgroup shows it)`);
    return p.length > 1 ? p.replace(/\/+$/, "") : p;
  });
}

export function agentCommand(): Command {
  const cmd = new Command("agent")
    .description("the per-host daemon: inventory, metrics, standby and container runtimes on one gRPC port")
    .addOption(configurable("AGENT", "--listen <host:port>", "gRPC address").default(parse.address("127.0.0.1:7701"), "127.0.0.1:7701").argParser(parse.address))
    .addOption(configurable("AGENT", "--state-dir <dir>", "instance registry and other durable state").default(undefined, `${defaultStateBase()}/agent`))
    .addOption(configurable("AGENT", "--metrics-listen <host:port>", "Prometheus endpoint; 'off' disables it").default(parse.address("127.0.0.1:9464"), "127.0.0.1:9464").argParser(parse.optionalAddress))
    .addOption(configurable("AGENT", "--tap-prefix <prefix>", "prefix of derived host-side interface names (hypeman hosts use hype-)").default("fl-"))
    .addOption(configurable("AGENT", "--metrics-label-budget <n>", "instances above which the label-budget counter rises").default(200).argParser(parse.positiveInt))
    .addOption(configurable("AGENT", "--stats-max-age <duration>", "ListInstanceStats may answer from a shared sweep this recent ('0s' = always sweep anew)").default(500, "500ms").argParser(parse.nonNegativeDurationMs))
    .addOption(configurable("AGENT", "--standby <on|off>", "auto-standby over conntrack (off: every instance reports UNSUPPORTED)").choices(["on", "off"]).default("on"))
    .addOption(configurable("AGENT", "--standby-concurrency <n>", "standby requests run at once").default(16).argParser(parse.positiveInt))
    .addOption(configurable("AGENT", "--standby-min-idle <duration>", "shortest idle_timeout a standby policy may have").default(DEFAULT_MIN_IDLE_MS, "5s").argParser(parse.durationMs))
    .addOption(configurable("AGENT", "--standby-reconcile-interval <duration>", "conntrack re-read while an instance has active connections").default(DEFAULT_STANDBY_TIMINGS.reconcileMs, "2s").argParser(parse.durationMs))
    .addOption(configurable("AGENT", "--standby-sync-interval <duration>", "full conntrack resync and tracking check").default(DEFAULT_STANDBY_TIMINGS.syncMs, "5m").argParser(parse.durationMs))
    .addOption(configurable("AGENT", "--standby-reconnect-delay <duration>", "restart of a dead conntrack reader, retry of a failed resync").default(DEFAULT_STANDBY_TIMINGS.reconnectMs, "200ms").argParser(parse.durationMs))
    .addOption(configurable("AGENT", "--metering <on|off>", "the metering ledger (off: none is opened, lifecycle changes are not metered; MeteringService answers FAILED_PRECONDITION)").choices(["on", "off"]).default("on"))
    .addOption(configurable("AGENT", "--metering-retain <n>", "acknowledged metering entries kept on disk (unacknowledged ones always are)").default(1_000_000).argParser(parse.nonNegativeInt))
    .addOption(configurable("AGENT", "--metering-segment-bytes <n>", "metering ledger segment size; retention deletes whole segments").default(64 * 1024 * 1024, "67108864").argParser(parse.positiveInt))
    .addOption(configurable("AGENT", "--discover <on|off>", "hypervisor processes in /proc (cloud-hypervisor, firecracker, qemu-system-*) become read-only instances").choices(["on", "off"]).default("off"))
    .addOption(configurable("AGENT", "--host-label <k=v>", "a label of this host, reported to the aggregator for its policies (repeat for more)").argParser(parseHostLabel).default(undefined))
    .addOption(configurable("AGENT", "--allowed-uids <list>", "instance processes must run as one of these uids (comma-separated; default any)").argParser(parseUidList))
    .addOption(configurable("AGENT", "--allowed-cgroups <list>", "instance processes must be in one of these cgroups or below (comma-separated paths; default any)").argParser(parseCgroupList))
    .addOption(configurable("AGENT", "--standby-cgroup-root <path>", "the cgroup driver freezes only cgroups below this one (default: any but the root, init.scope and the agent's own)").argParser((v) => parseCgroupList(v)[0]!))
    .addOption(configurable("AGENT", "--watch-history <n>", "inventory changes kept for WatchInstances resume; an older version must relist").default(16_384).argParser(parse.positiveInt))
    .addOption(configurable("AGENT", "--standby-exec <command>", "exec driver: standby command, run without a shell, split on spaces"))
    .addOption(configurable("AGENT", "--wake-exec <command>", "exec driver: wake command"))
    .addOption(configurable("AGENT", "--runtime <list>", "container runtimes: auto (docker when its socket is there, kubernetes in a cluster), none, or docker,kubernetes").default("auto"))
    .addOption(configurable("AGENT", "--docker-host <url>", "Docker Engine API: unix:///path (default DOCKER_HOST, else unix:///var/run/docker.sock)"))
    .addOption(configurable("AGENT", "--kubeconfig <file>", "Kubernetes: kubeconfig to use (default: in-cluster, else KUBECONFIG / ~/.kube/config)"))
    .addOption(configurable("AGENT", "--kube-node <name>", "Kubernetes: only pods on this node (default in a cluster: NODE_NAME, else the hostname; outside: all pods)"))
    .addOption(configurable("AGENT", "--stream-buffer <bytes>", "encoded bytes one server stream may hold for a client that does not read; the producer waits past it").default(DEFAULT_STREAM_LIMITS.maxPendingBytes).argParser(parse.positiveInt))
    .addOption(configurable("AGENT", "--stream-stall-timeout <duration>", "a server stream whose client took none of its buffered bytes for this long is cut (RESOURCE_EXHAUSTED)").default(DEFAULT_STREAM_LIMITS.stallTimeoutMs, "30s").argParser(parse.durationMs))
    .addOption(configurable("AGENT", "--max-instances <n>", "instances this agent holds (RESOURCE_EXHAUSTED past it)").default(DEFAULT_REGISTRY_LIMITS.maxInstances).argParser(parse.positiveInt))
    .addOption(configurable("AGENT", "--max-snapshots <n>", "registered snapshots this agent holds").default(DEFAULT_REGISTRY_LIMITS.maxSnapshots).argParser(parse.positiveInt))
    .addOption(configurable("AGENT", "--max-instances-per-pid <n>", "instances naming one pid (each keeps 4 file descriptors open)").default(DEFAULT_REGISTRY_LIMITS.maxInstancesPerPid).argParser(parse.positiveInt))
    .addOption(configurable("AGENT", "--log-level <level>", "pino level: trace, debug, info, warn, error, silent").default("info"))
    .option("--config <file>", "JSON config file keyed by flag name; flags and FLEETLET_AGENT_* win over it")
    .action(async (_opts, command: Command) => {
      applyConfigFile(command);
      const o = command.opts<ListenerLimitFlags & TlsFlags & {
        tokensFile?: string;
        maxInstances: number;
        maxSnapshots: number;
        maxInstancesPerPid: number;
        listen: ListenAddress;
        stateDir?: string;
        metricsListen?: ListenAddress;
        tapPrefix: string;
        metricsLabelBudget: number;
        statsMaxAge: number;
        standby: string;
        standbyConcurrency: number;
        standbyMinIdle: number;
        standbyReconcileInterval: number;
        standbySyncInterval: number;
        standbyReconnectDelay: number;
        watchHistory: number;
        discover: string;
        allowedUids?: number[];
        hostLabel?: Record<string, string>;
        allowedCgroups?: string[];
        standbyCgroupRoot?: string;
        metering: string;
        meteringRetain: number;
        meteringSegmentBytes: number;
        standbyExec?: string;
        wakeExec?: string;
        runtime: string;
        streamBuffer: number;
        streamStallTimeout: number;
        dockerHost?: string;
        kubeconfig?: string;
        kubeNode?: string;
        logLevel: string;
      }>();
      try {
        validateTapPrefix(o.tapPrefix);
      } catch (e) {
        command.error(`error: option '--tap-prefix': ${errorMessage(e)}`, { exitCode: 2 });
      }
      let runtimes: RuntimeOptions["runtimes"] = "auto";
      try {
        runtimes = parseRuntimeList(o.runtime);
        if (o.dockerHost !== undefined && !/^unix:\/\/\/.+/.test(o.dockerHost)) throw new Error(`--docker-host: expected unix:///path/to/docker.sock, got ${JSON.stringify(o.dockerHost)}`);
      } catch (e) {
        command.error(`error: option ${errorMessage(e)}`, { exitCode: 2 });
      }
      checkLevel(command, o.logLevel);
      // Each daemon's modules are loaded only by its own command (the agent never loads the
      // aggregator's SQLite store, nor `fleetlet get` either daemon).
      const { startAgent } = await import("../agent/agent-daemon.js");
      await runUntilSignal("agent", () =>
        startAgent({
          listen: o.listen,
          tls: tlsFiles(o),
          insecure: insecureFlag(o),
          tokensFile: o.tokensFile,
          stateDir: o.stateDir ?? join(defaultStateBase(), "agent"),
          metricsListen: o.metricsListen,
          hostLabels: o.hostLabel,
          tapPrefix: o.tapPrefix,
          metricsLabelBudget: o.metricsLabelBudget,
          statsMaxAgeMs: o.statsMaxAge,
          standby: o.standby === "on",
          standbyConcurrency: o.standbyConcurrency,
          standbyMinIdleMs: o.standbyMinIdle,
          standbyTimings: { reconcileMs: o.standbyReconcileInterval, syncMs: o.standbySyncInterval, reconnectMs: o.standbyReconnectDelay },
          watchHistory: o.watchHistory,
          discover: o.discover === "on",
          allowedUids: o.allowedUids,
          allowedCgroups: o.allowedCgroups,
          standbyCgroupRoot: o.standbyCgroupRoot,
          metering: o.metering === "on",
          meteringRetain: o.meteringRetain,
          meteringSegmentBytes: o.meteringSegmentBytes,
          standbyExec: { standby: o.standbyExec?.split(/\s+/).filter(Boolean) ?? [], wake: o.wakeExec?.split(/\s+/).filter(Boolean) ?? [], concurrency: o.standbyConcurrency },
          runtime: { runtimes, dockerHost: o.dockerHost, kubeconfig: o.kubeconfig, kubeNode: o.kubeNode },
          streamLimits: { maxPendingBytes: o.streamBuffer, stallTimeoutMs: o.streamStallTimeout },
          limits: listenerLimits(o),
          registryLimits: { maxInstances: o.maxInstances, maxSnapshots: o.maxSnapshots, maxInstancesPerPid: o.maxInstancesPerPid },
          logger: createLogger("fleetlet-agent", o.logLevel),
        }),
      );
    });
  addListenerLimitOptions(cmd, "AGENT");
  addTlsOptions(cmd, "AGENT");
  addTokensFileOption(cmd, "AGENT");
  return cmd;
}

export function aggregatorCommand(): Command {
  const cmd = new Command("aggregator")
    .description("the fleet daemon: FleetService fanning out to every agent")
    .addOption(configurable("AGGREGATOR", "--listen <host:port>", "gRPC address").default(parse.address("127.0.0.1:7700"), "127.0.0.1:7700").argParser(parse.address))
    .addOption(configurable("AGGREGATOR", "--hosts <list>", "agents as NAME=HOST:PORT,..."))
    .addOption(configurable("AGGREGATOR", "--hosts-file <file>", "agents, one 'NAME=HOST:PORT [timeout=2s]' per line"))
    .addOption(configurable("AGGREGATOR", "--state-dir <dir>", "hosts added through the API and other durable state").default(undefined, `${defaultStateBase()}/aggregator`))
    .addOption(configurable("AGGREGATOR", "--metrics-listen <host:port>", "Prometheus endpoint; 'off' disables it").default(parse.address("127.0.0.1:9465"), "127.0.0.1:9465").argParser(parse.optionalAddress))
    .addOption(configurable("AGGREGATOR", "--per-host-timeout <duration>", "deadline of one host's part of a fan-out (at most 300s)").default(2000, "2s").argParser(parse.hostTimeoutMs))
    .addOption(configurable("AGGREGATOR", "--fan-out-concurrency <n>", "calls in flight at once per fan-out").default(512).argParser(parse.positiveInt))
    .addOption(configurable("AGGREGATOR", "--reconnect-backoff-max <duration>", "longest wait between reconnect attempts to a host").default(30_000, "30s").argParser(parse.durationMs))
    .addOption(configurable("AGGREGATOR", "--stale-after <duration>", "a host not heard from for this long is STALE in the merged inventory").default(30_000, "30s").argParser(parse.durationMs))
    .addOption(configurable("AGGREGATOR", "--digest-interval <duration>", "how often each host's inventory digest is compared with the merged view's").default(60_000, "60s").argParser(parse.durationMs))
    .addOption(configurable("AGGREGATOR", "--watch-buffer <n>", "merged inventory changes kept for WatchInstances cursors").default(65_536).argParser(parse.positiveInt))
    .addOption(configurable("AGGREGATOR", "--stream-buffer <bytes>", "encoded bytes one server stream may hold for a client that does not read; the producer waits past it").default(DEFAULT_STREAM_LIMITS.maxPendingBytes).argParser(parse.positiveInt))
    .addOption(configurable("AGGREGATOR", "--stream-stall-timeout <duration>", "a server stream whose client took none of its buffered bytes for this long is cut (RESOURCE_EXHAUSTED)").default(DEFAULT_STREAM_LIMITS.stallTimeoutMs, "30s").argParser(parse.durationMs))
    .addOption(configurable("AGGREGATOR", "--add-host-allow <list>", "addresses AddHost may use: IPs, CIDRs and exact host names, comma-separated (default: any); --hosts/--hosts-file are not checked").argParser(parseAllowlist))
    .addOption(configurable("AGGREGATOR", "--policies <file|off>", "policy rules (YAML or JSON), re-read on change, on top of the built-in ones; 'off': no policies at all"))
    .addOption(configurable("AGGREGATOR", "--policy-sweep-interval <duration>", "how often every instance whose validation is behind is validated").default(10_000, "10s").argParser(parse.durationMs))
    .addOption(configurable("AGGREGATOR", "--max-hosts <n>", "hosts this aggregator holds; AddHost past it gets RESOURCE_EXHAUSTED").default(DEFAULT_MAX_HOSTS).argParser(parse.positiveInt))
    .addOption(configurable("AGGREGATOR", "--log-level <level>", "pino level: trace, debug, info, warn, error, silent").default("info"))
    .option("--config <file>", "JSON config file keyed by flag name; flags and FLEETLET_AGGREGATOR_* win over it")
    .action(async (_opts, command: Command) => {
      applyConfigFile(command);
      const o = command.opts<ListenerLimitFlags & TlsFlags & {
        tokensFile?: string;
        agentToken?: string;
        agentTlsCa?: string;
        agentTlsCert?: string;
        agentTlsKey?: string;
        maxHosts: number;
        addHostAllow?: AddressAllowlist;
        policies?: string;
        policySweepInterval: number;
        staleAfter: number;
        digestInterval: number;
        watchBuffer: number;
        listen: ListenAddress;
        hosts?: string;
        hostsFile?: string;
        stateDir?: string;
        metricsListen?: ListenAddress;
        perHostTimeout: number;
        fanOutConcurrency: number;
        reconnectBackoffMax: number;
        streamBuffer: number;
        streamStallTimeout: number;
        logLevel: string;
      }>();
      checkLevel(command, o.logLevel);
      let hosts;
      try {
        hosts = mergeHostConfigs(
          o.hosts ? parseHostsFlag(o.hosts) : [],
          o.hostsFile ? parseHostsFile(readFileSync(o.hostsFile, "utf8"), o.hostsFile) : [],
        );
      } catch (e) {
        command.error(`error: ${o.hostsFile && !o.hosts ? "option '--hosts-file'" : "hosts"}: ${errorMessage(e)}`, { exitCode: 2 });
      }
      const { startAggregator } = await import("../aggregator/aggregator-daemon.js");
      await runUntilSignal("aggregator", () =>
        startAggregator({
          listen: o.listen,
          tls: tlsFiles(o),
          insecure: insecureFlag(o),
          agentTls: o.agentTlsCa === undefined && o.agentTlsCert === undefined && o.agentTlsKey === undefined ? undefined : { caFile: o.agentTlsCa, certFile: o.agentTlsCert, keyFile: o.agentTlsKey },
          tokensFile: o.tokensFile,
          agentToken: o.agentToken,
          stateDir: o.stateDir ?? join(defaultStateBase(), "aggregator"),
          metricsListen: o.metricsListen,
          hosts,
          defaultPerHostTimeoutMs: o.perHostTimeout,
          fanOutConcurrency: o.fanOutConcurrency,
          backoff: { initialMs: Math.min(1000, o.reconnectBackoffMax), maxMs: o.reconnectBackoffMax },
          inventory: { staleAfterMs: o.staleAfter, digestIntervalMs: o.digestInterval, watchBuffer: o.watchBuffer, dropEventOf: faultInjection("FLEETLET_TEST_DROP_INVENTORY_EVENT") },
          streamLimits: { maxPendingBytes: o.streamBuffer, stallTimeoutMs: o.streamStallTimeout },
          limits: listenerLimits(o),
          maxHosts: o.maxHosts,
          addHostAllow: o.addHostAllow,
          policies: o.policies === "off" ? { off: true } : { file: o.policies, sweepIntervalMs: o.policySweepInterval },
          logger: createLogger("fleetlet-aggregator", o.logLevel),
        }),
      );
    });
  addListenerLimitOptions(cmd, "AGGREGATOR");
  addTokensFileOption(cmd, "AGGREGATOR").addOption(
    configurable("AGGREGATOR", "--agent-token <token>", "bearer token presented to agents started with --tokens-file (admin there: it acknowledges metering)"),
  );
  addTlsOptions(cmd, "AGGREGATOR")
    .addOption(configurable("AGGREGATOR", "--agent-tls-ca <file>", "dial agents over TLS: their certificates must chain to this CA and name the dialled host/IP"))
    .addOption(configurable("AGGREGATOR", "--agent-tls-cert <file>", "client certificate presented to agents (mTLS)"))
    .addOption(configurable("AGGREGATOR", "--agent-tls-key <file>", "private key of --agent-tls-cert"));
  return cmd;
}

function parseAllowlist(value: string): AddressAllowlist {
  try {
    return new AddressAllowlist(value);
  } catch (e) {
    throw new InvalidArgumentError(errorMessage(e));
  }
}

const LEVELS = new Set(["trace", "debug", "info", "warn", "error", "fatal", "silent"]);

function checkLevel(command: Command, level: string): void {
  if (!LEVELS.has(level)) command.error(`error: option '--log-level': ${JSON.stringify(level)} is not one of ${[...LEVELS].join(", ")}`, { exitCode: 2 });
}
