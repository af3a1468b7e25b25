import { Command, Option } from "commander";
import { createClient } from "@connectrpc/connect";
import type { DescMessage, MessageShape } from "@bufbuild/protobuf";
import { durationMs, timestampMs } from "@bufbuild/protobuf/wkt";
import {
  ListStandbyStatusResponseSchema as AgentStandbySchema,
  StandbyReason,
  StandbyService,
  StandbyState,
  type StandbyStatus,
} from "../gen/fleetlet/agent/v1/standby_pb.js";
import { formatDurationMs } from "../lib/duration.js";
import { InventoryService, InstanceKind, InstanceState, ListInstancesResponseSchema } from "../gen/fleetlet/agent/v1/inventory_pb.js";
import { MetricsService, ListInstanceStatsResponseSchema as AgentStatsSchema, type InstanceStats } from "../gen/fleetlet/agent/v1/metrics_pb.js";
import {
  ConnectionState,
  FleetService,
  HostSyncState,
  ListHostsResponseSchema,
  ListInstanceStatsResponseSchema as FleetStatsSchema,
  ListInstancesResponseSchema as FleetInstancesSchema,
  ListStandbyStatusResponseSchema as FleetStandbySchema,
  ListContainersResponseSchema as FleetContainersSchema,
  type HostMetering,
  type HostResult,
  type Concern,
  type PolicySeverity,
} from "../gen/fleetlet/aggregator/v1/fleet_pb.js";
import {
  ContainerState,
  HealthStatus,
  ListContainersResponseSchema as AgentContainersSchema,
  RuntimeService,
  type Container,
} from "../gen/fleetlet/agent/v1/runtime_pb.js";
import { createGrpcJsTransport } from "../lib/rpc/grpc-transport.js";
import { clientTransportOptions } from "./client-token.js";
import { readAllPages } from "../lib/paging/read-all-pages.js";
import { getMetering, meteringFromOption, meteringLimitOption } from "./metering-command.js";
import { parse } from "./options.js";
import { formatAge, formatBytes, formatPercent, formatTable, tableOptions } from "./table.js";
import { equalityLabels, formatMessage, OUTPUT_FORMATS, parseSelector, selectorMatches, type LabelTerm, type OutputFormat } from "./output.js";
import { describeCallError } from "./call-errors.js";
import { errorMessage } from "../lib/error-message.js";
import { concernsCell, failingOption, getPolicies, severityOption } from "./policies-command.js";

interface GetOptions {
  aggregator?: string;
  agent?: string;
  output: OutputFormat;
  headers: boolean;
  selector?: LabelTerm[];
  host?: string[];
  timeout: number;
  failing?: string[];
  severity?: PolicySeverity[];
  allowPartial?: boolean;
}

/** Exit status when some hosts did not answer a fan-out (the answer is partial): not 0, not 1 (error), not 2 (usage). */
export const EXIT_PARTIAL = 3;

const RESOURCES = ["hosts", "instances", "stats", "standby", "containers", "metering", "policies"];

export function getCommand(): Command {
  return new Command("get")
    .description("read commands: hosts and policies (aggregator), instances, stats, standby, containers and metering (aggregator or one agent)")
    .argument("<what>", "hosts | instances | stats | standby | containers | metering | policies")
    .argument("[names...]", "only these (instance id or name, host/name, host name for hosts, rule for policies)")
    .option("--aggregator <host:port>", "aggregator to ask (default 127.0.0.1:7700)")
    .option("--agent <host:port>", "ask one agent directly instead")
    .addOption(new Option("-o, --output <format>", "table, json or yaml (the proto JSON mapping)").choices([...OUTPUT_FORMATS]).default("table"))
    .option("--no-headers", "tables without their header line")
    .addOption(new Option("-l, --selector <labels>", "instances whose labels match: key=value, key!=value, key, !key, comma-separated").argParser((v: string) => parseSelector(v)))
    .addOption(new Option("--host <name>", "only this host's (repeatable)").argParser((v: string, prev: string[] = []) => [...prev, v]))
    .addOption(new Option("--timeout <duration>", "deadline of the call").default(10_000, "10s").argParser(parse.durationMs))
    .addOption(meteringFromOption())
    .addOption(meteringLimitOption())
    .addOption(failingOption())
    .addOption(severityOption())
    .option("--allow-partial", `exit 0 when some hosts did not answer (stats, standby, containers; default: exit ${EXIT_PARTIAL} after printing what did)`)
    .action(async (what: string, names: string[], opts: GetOptions, command: Command) => {
      tableOptions.headers = opts.headers;
      if (!RESOURCES.includes(what)) {
        command.error(`error: unknown resource ${JSON.stringify(what)} (expected hosts, instances, stats, standby, containers, metering or policies)`, { exitCode: 2 });
      }
      if (opts.agent && opts.aggregator) command.error("error: give --agent or --aggregator, not both", { exitCode: 2 });
      if (opts.agent && what === "hosts") command.error("error: hosts come from the aggregator; drop --agent", { exitCode: 2 });
      if (opts.agent && what === "policies") command.error("error: policies are the aggregator's (an agent has none); drop --agent", { exitCode: 2 });
      const policyFilters = [opts.failing && "--failing", opts.severity && "--severity"].filter(Boolean).join(" and ");
      if (policyFilters && what !== "instances") command.error(`error: ${policyFilters} ${policyFilters.includes(" and ") ? "apply" : "applies"} to get instances only`, { exitCode: 2 });
      if (policyFilters && opts.agent) command.error(`error: ${policyFilters} filter on the aggregator's policies (an agent has none); drop --agent`, { exitCode: 2 });
      if (opts.selector && what !== "instances") command.error("error: -l/--selector applies to get instances only", { exitCode: 2 });
      if (opts.host && opts.agent) command.error("error: --host picks hosts of the aggregator; with --agent there is one", { exitCode: 2 });
      if ((opts.host || names.length > 0) && what === "metering") command.error("error: get metering takes no names or --host (see fleetlet metering intervals --vm)", { exitCode: 2 });
      const pick = new NamePicker(what, names);
      const target = opts.agent ?? opts.aggregator ?? "127.0.0.1:7700";
      try {
        parse.address(target);
      } catch (e) {
        command.error(`error: ${opts.agent ? "--agent" : "--aggregator"}: ${errorMessage(e)}`, { exitCode: 2 });
      }
      if (await getMetering(what, opts, command)) return;
      const transport = createGrpcJsTransport(target, clientTransportOptions());
      const call = { timeoutMs: opts.timeout };
      const onHost = (host: string) => !opts.host || opts.host.includes(host);
      const labelled = (labels: Record<string, string>) => !opts.selector || selectorMatches(opts.selector, labels);
      const hostResultsOf = (results: HostResult[]) => results.filter((r) => onHost(r.host));
      try {
        if (opts.agent) {
          if (what === "containers") {
            const all = await createClient(RuntimeService, transport).listContainers({}, call);
            const res = { ...all, containers: all.containers.filter((c) => pick.match("", c.id, c.name)) };
            print(opts, AgentContainersSchema, res, () =>
              [containersTable(res.containers.map((container) => ({ host: "", container })), false), res.unavailable.map((u) => `unavailable: ${u}`).join("\n")].filter(Boolean).join("\n\n"),
            );
          } else if (what === "standby") {
            const all = await createClient(StandbyService, transport).listStandbyStatus({}, call);
            const res = { ...all, statuses: all.statuses.filter((st) => pick.match("", st.instanceId)) };
            print(opts, AgentStandbySchema, res, () => standbyTable(res.statuses.map((status) => ({ host: "", status })), false));
          } else if (what === "instances") {
            const inventory = createClient(InventoryService, transport);
            const pages = await readAllPages((pageToken) => inventory.listInstances({ pageToken }, call));
            // One answer of the whole list (every page carries the same version and digest).
            const res = { ...pages[0]!, instances: pages.flatMap((p) => p.instances).filter((i) => labelled(i.labels) && pick.match("", i.id, i.name)), nextPageToken: "" };
            print(opts, ListInstancesResponseSchema, res, () =>
              instancesTable(res.instances.map((i) => ({ host: "", ...i })), false),
            );
          } else {
            const all = await createClient(MetricsService, transport).listInstanceStats({}, call);
            const res = { ...all, stats: all.stats.filter((st) => pick.match("", st.instanceId, st.instanceName)) };
            print(opts, AgentStatsSchema, res, () => statsTable(res.stats.map((st) => ({ host: "", ...st })), false));
          }
        } else {
          const fleet = createClient(FleetService, transport);
          if (what === "policies") {
            await getPolicies(fleet, call, opts.output, (rule) => pick.match("", rule));
          } else if (what === "hosts") {
            const all = await fleet.listHosts({}, call);
            const res = { ...all, hosts: all.hosts.filter((h) => onHost(h.name) && pick.match("", h.name)) };
            print(opts, ListHostsResponseSchema, res, () =>
              formatTable(
                ["HOST", "ADDRESS", "VERSION", "CONNECTION", "INVENTORY", "METERING", "LAST-SEEN", "LAST-ERROR"],
                res.hosts.map((h) => [
                  h.name,
                  h.address,
                  // The agent's fleetlet version (GetHostInfo; "?" until it answered).
                  h.info?.agentVersion || "?",
                  ConnectionState[h.connectionState] ?? String(h.connectionState),
                  // Its part of the merged inventory (get instances says why when not SYNCED).
                  HostSyncState[h.syncState] ?? "-",
                  // Its part of the metering feed (get metering has the details).
                  meteringCell(h.metering),
                  h.lastSeen ? `${formatAge(timestampMs(h.lastSeen))} ago` : "never",
                  h.lastError,
                ]),
              ),
            );
          } else if (what === "containers") {
            const all = await fleet.listContainers({}, call);
            const res = { ...all, containers: all.containers.filter((c) => onHost(c.host) && pick.match(c.host, c.container?.id ?? "", c.container?.name)), hostResults: hostResultsOf(all.hostResults) };
            print(opts, FleetContainersSchema, res, () =>
              [
                containersTable(res.containers.map((c) => ({ host: c.host, container: c.container! })), true),
                res.unavailable.map((u) => `unavailable: ${u}`).join("\n"),
                hostResultLines(res.hostResults),
              ].filter(Boolean).join("\n\n"),
            );
            partial(what, res.hostResults, opts);
          } else if (what === "standby") {
            const all = await fleet.listStandbyStatus({}, call);
            const res = { ...all, statuses: all.statuses.filter((st) => onHost(st.host) && pick.match(st.host, st.status?.instanceId ?? "")), hostResults: hostResultsOf(all.hostResults) };
            print(opts, FleetStandbySchema, res, () =>
              [standbyTable(res.statuses.map((st) => ({ host: st.host, status: st.status! })), true), hostResultLines(res.hostResults)].join("\n\n"),
            );
            partial(what, res.hostResults, opts);
          } else if (what === "instances") {
            // Hosts and label equality are filtered by the aggregator; the rest of the selector and the names here.
            const filters = { failingRules: opts.failing ?? [], concernSeverities: opts.severity ?? [], hosts: opts.host ?? [], labels: equalityLabels(opts.selector ?? []) };
            const pages = await readAllPages((pageToken) => fleet.listInstances({ pageToken, ...filters }, call));
            // One answer of the whole view (every page carries the same hosts and cursor).
            const res = { ...pages[0]!, instances: pages.flatMap((p) => p.instances).filter((i) => labelled(i.labels) && pick.match(i.host, i.id, i.name)), nextPageToken: "" };
            print(opts, FleetInstancesSchema, res, () =>
              [
                instancesTable(res.instances, true),
                // Every host's part of the merged view: how current it is, and why not.
                formatTable(
                  ["HOST", "SYNC", "INSTANCES", "VERSION", "LAST-SEEN", "WHY"],
                  res.hosts.filter((h) => onHost(h.host)).map((h) => [
                    h.host,
                    HostSyncState[h.state] ?? "",
                    String(h.instanceCount),
                    h.resourceVersion.toString(),
                    h.lastSeen ? `${formatAge(timestampMs(h.lastSeen))} ago` : "never",
                    h.lastError || "-",
                  ]),
                ),
              ].filter(Boolean).join("\n\n"),
            );
          } else {
            const all = await fleet.listInstanceStats({}, call);
            const res = { ...all, stats: all.stats.filter((st) => onHost(st.host) && pick.match(st.host, st.instanceId, st.instanceName)), hostResults: hostResultsOf(all.hostResults) };
            print(opts, FleetStatsSchema, res, () =>
              [statsTable(res.stats, true), hostResultLines(res.hostResults)].filter(Boolean).join("\n\n"),
            );
            partial(what, res.hostResults, opts);
          }
        }
        pick.reportMissing();
      } catch (e) {
        process.stderr.write(`fleetlet get ${what}: ${describeCallError(e, opts.agent ? "agent" : "aggregator", target)}\n`);
        process.exitCode = 1;
      } finally {
        transport.close();
      }
    });
}

function print<T extends DescMessage>(opts: GetOptions, schema: T, msg: MessageShape<T>, table: () => string): void {
  process.stdout.write(opts.output === "table" ? `${table()}\n` : formatMessage(schema, msg, opts.output));
}

/**
 * `get instances web-1 h2/db`: a name picks rows by id or name, `host/name` on one host. A name
 * that picked nothing is an error (stderr, exit 1) after the rows that were found are printed,
 * as kubectl does for `get pods a b` with b missing.
 */
class NamePicker {
  private readonly found = new Set<string>();
  constructor(
    private readonly what: string,
    private readonly names: readonly string[],
  ) {}

  match(host: string, id: string, name?: string): boolean {
    if (this.names.length === 0) return true;
    let hit = false;
    for (const n of this.names) {
      const slash = n.indexOf("/");
      const [h, rest] = slash > 0 ? [n.slice(0, slash), n.slice(slash + 1)] : [undefined, n];
      if ((h === undefined || h === host) && (rest === id || (name !== undefined && rest === name))) {
        this.found.add(n);
        hit = true;
      }
    }
    return hit;
  }

  reportMissing(): void {
    const missing = this.names.filter((n) => !this.found.has(n));
    if (missing.length === 0) return;
    process.stderr.write(`fleetlet get ${this.what}: not found: ${missing.join(", ")}\n`);
    process.exitCode = 1;
  }
}

interface InstanceRow {
  host: string;
  id: string;
  name: string;
  kind: InstanceKind;
  state: InstanceState;
  pid?: number;
  tapDevice: string;
  allocatedVcpus: number;
  allocatedMemoryBytes: bigint;
  labels: Record<string, string>;
  concerns?: Concern[];
}

/**
 * Through the aggregator (withHost) there is a CONCERNS column: what the fleet's policies find
 * wrong with each instance (`2 (critical: host-stale-running)`, `-`). It is in the default table,
 * not behind an `-o wide` (which fleetlet does not have): as kubectl's STATUS and RESTARTS in
 * `get pods`, it is what someone listing instances looks for first. It comes before LABELS,
 * which stays last as kubectl's --show-labels column does. An agent has no policies: no column.
 */
export function instancesTable(rows: InstanceRow[], withHost: boolean): string {
  const headers = ["ID", "NAME", "KIND", "STATE", "PID", "TAP", "VCPUS", "MEMORY", ...(withHost ? ["CONCERNS"] : []), "LABELS"];
  return formatTable(
    withHost ? ["HOST", ...headers] : headers,
    rows.map((i) => {
      const cells = [
        i.id,
        i.name,
        InstanceKind[i.kind] ?? "",
        InstanceState[i.state] ?? "",
        i.pid?.toString() ?? "-",
        i.tapDevice || "-",
        String(i.allocatedVcpus),
        formatBytes(i.allocatedMemoryBytes),
        ...(withHost ? [concernsCell(i.concerns ?? [])] : []),
        Object.entries(i.labels).map(([k, v]) => `${k}=${v}`).join(",") || "-",
      ];
      return withHost ? [i.host, ...cells] : cells;
    }),
  );
}

/**
 * Stats rows; with `state` on the rows (fleetlet up: every instance of the merged view, stats or
 * not) a STATE column, so an instance on standby or stopped stays in the table.
 */
export function statsTable(rows: (Omit<InstanceStats, "$typeName"> & { host: string; state?: InstanceState })[], withHost: boolean, colour = false): string {
  const withState = rows.some((r) => r.state !== undefined);
  const headers = ["ID", "NAME", ...(withState ? ["STATE"] : []), "CPU-SEC", "CPU%", "RSS", "MEM%", "NET-RX", "NET-TX", "UNAVAILABLE"];
  return formatTable(
    withHost ? ["HOST", ...headers] : headers,
    rows.map((s) => {
      const cells = [
        s.instanceId,
        s.instanceName,
        ...(withState ? [stateCell(s.state, colour)] : []),
        s.cpuSeconds === undefined ? "-" : s.cpuSeconds.toFixed(2),
        formatPercent(s.cpuUtilizationRatio),
        formatBytes(s.memoryRssBytes),
        formatPercent(s.memoryUtilizationRatio),
        formatBytes(s.netRxBytes),
        formatBytes(s.netTxBytes),
        s.unavailable.join("; ") || "-",
      ];
      return withHost ? [s.host, ...cells] : cells;
    }),
  );
}

const STATE_COLOURS: Partial<Record<InstanceState, string>> = {
  [InstanceState.RUNNING]: "\x1b[32m",
  [InstanceState.STANDBY]: "\x1b[33m",
  [InstanceState.STOPPED]: "\x1b[2m",
  [InstanceState.ERROR]: "\x1b[31m",
};

/** The state's name, coloured on a terminal that wants colour (formatTable pads by visible width). */
function stateCell(state: InstanceState | undefined, colour: boolean): string {
  const name = state === undefined ? "-" : (InstanceState[state] ?? String(state));
  const start = state !== undefined ? STATE_COLOURS[state] : undefined;
  return colour && start ? `${start}${name}\x1b[0m` : name;
}

/** Colour only on a terminal, and never when NO_COLOR is set (no-color.org) or TERM is dumb. */
export function wantsColour(stream: NodeJS.WriteStream): boolean {
  return stream.isTTY === true && !process.env.NO_COLOR && process.env.TERM !== "dumb";
}

export function standbyTable(rows: { host: string; status: StandbyStatus }[], withHost: boolean): string {
  const headers = ["ID", "STATUS", "REASON", "ACTIVE", "IDLE-TIMEOUT", "NEXT-STANDBY", "LAST-ERROR"];
  return formatTable(
    withHost ? ["HOST", ...headers] : headers,
    rows.map(({ host, status: s }) => {
      const cells = [
        s.instanceId,
        (StandbyState[s.status] ?? "").replace(/^STANDBY_STATE_/, ""),
        (StandbyReason[s.reason] ?? "").replace(/^STANDBY_REASON_/, ""),
        String(s.activeInboundCount),
        s.idleTimeout || "-",
        s.countdownRemaining ? `in ${formatDurationMs(Math.round(durationMs(s.countdownRemaining) / 1000) * 1000)}` : "-",
        s.lastError || (s.supported ? "-" : s.unsupportedReason || "-"),
      ];
      return withHost ? [host, ...cells] : cells;
    }),
  );
}

export function containersTable(rows: { host: string; container: Container }[], withHost: boolean): string {
  const headers = ["RUNTIME", "ID", "NAME", "IMAGE", "STATE", "HEALTH", "STARTED", "INSTANCE"];
  return formatTable(
    withHost ? ["HOST", ...headers] : headers,
    rows.map(({ host, container: c }) => {
      const state = (ContainerState[c.state] ?? "").toLowerCase();
      const cells = [
        c.runtime,
        c.runtime === "docker" ? c.externalId.slice(0, 12) : c.externalId,
        c.name,
        c.image || "-",
        c.exitCode !== undefined && c.state !== ContainerState.RUNNING ? `${state} (${c.exitCode}${c.oomKilled ? ", oom" : ""})` : state,
        c.health?.hasHealthcheck ? (HealthStatus[c.health.status] ?? "").toLowerCase() : "-",
        c.startedAt ? `${formatAge(timestampMs(c.startedAt))} ago` : "-",
        c.id,
      ];
      return withHost ? [host, ...cells] : cells;
    }),
  );
}

/** A host's metering in one word: off, lag N, or "?" when its agent has not reported yet. */
function meteringCell(m: HostMetering | undefined): string {
  if (!m) return "-";
  if (m.meteringOff) return "off";
  if (!m.agentReportedAt) return "?";
  return m.lagEntries === 0n ? "caught-up" : `lag ${m.lagEntries}`;
}

/** The hosts that did not answer, and why; nothing when all did. */
/**
 * A fan-out some hosts did not answer: what did answer was printed; a script must still be able
 * to tell (kubectl-style tools exit 0 on a partial list and users read it as complete). One
 * stderr line, exit EXIT_PARTIAL, unless --allow-partial.
 */
function partial(what: string, results: HostResult[], opts: GetOptions): void {
  const failed = results.filter((r) => r.code !== "OK");
  if (failed.length === 0 || opts.allowPartial) return;
  process.stderr.write(`fleetlet get ${what}: ${failed.length} of ${results.length} hosts did not answer (${failed.map((r) => `${r.host}: ${r.code}`).join(", ")}); --allow-partial to exit 0\n`);
  process.exitCode = EXIT_PARTIAL;
}

export function hostResultLines(results: HostResult[]): string {
  const failed = results.filter((r) => r.code !== "OK");
  const ok = results.length - failed.length;
  const head = `${ok}/${results.length} hosts answered`;
  if (failed.length === 0) return head;
  return [head, ...failed.map((r) => `  ${r.host}: ${r.code} after ${Math.round(r.latencyMs)} ms: ${r.message}`)].join("\n");
}
