import { Command, Option } from "commander";
import { createClient } from "@connectrpc/connect";
import { toJsonString, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
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
import { formatAge, formatBytes, formatPercent, formatTable } from "./table.js";
import { errorMessage } from "../lib/error-message.js";
import { concernsCell, failingOption, getPolicies, severityOption } from "./policies-command.js";

interface GetOptions {
  aggregator?: string;
  agent?: string;
  output: "table" | "json";
  timeout: number;
  failing?: string[];
  severity?: PolicySeverity[];
}

const RESOURCES = ["hosts", "instances", "stats", "standby", "containers", "metering", "policies"];

export function getCommand(): Command {
  return new Command("get")
    .description("read commands: hosts and policies (aggregator), instances, stats, standby, containers and metering (aggregator or one agent)")
    .argument("<what>", "hosts | instances | stats | standby | containers | metering | policies")
    .option("--aggregator <host:port>", "aggregator to ask (default 127.0.0.1:7700)")
    .option("--agent <host:port>", "ask one agent directly instead")
    .addOption(new Option("-o, --output <format>", "table or json").choices(["table", "json"]).default("table"))
    .addOption(new Option("--timeout <duration>", "deadline of the call").default(10_000, "10s").argParser(parse.durationMs))
    .addOption(meteringFromOption())
    .addOption(meteringLimitOption())
    .addOption(failingOption())
    .addOption(severityOption())
    .action(async (what: string, opts: GetOptions, command: Command) => {
      if (!RESOURCES.includes(what)) {
        command.error(`error: unknown resource ${JSON.stringify(what)} (expected hosts, instances, stats, standby, containers, metering or policies)`, { exitCode: 2 });
      }
      if (opts.agent && opts.aggregator) command.error("error: give --agent or --aggregator, not both", { exitCode: 2 });
      if (opts.agent && what === "hosts") command.error("error: hosts come from the aggregator; drop --agent", { exitCode: 2 });
      if (opts.agent && what === "policies") command.error("error: policies are the aggregator's (an agent has none); drop --agent", { exitCode: 2 });
      const policyFilters = [opts.failing && "--failing", opts.severity && "--severity"].filter(Boolean).join(" and ");
      if (policyFilters && what !== "instances") command.error(`error: ${policyFilters} ${policyFilters.includes(" and ") ? "apply" : "applies"} to get instances only`, { exitCode: 2 });
      if (policyFilters && opts.agent) command.error(`error: ${policyFilters} filter on the aggregator's policies (an agent has none); drop --agent`, { exitCode: 2 });
      const target = opts.agent ?? opts.aggregator ?? "127.0.0.1:7700";
      try {
        parse.address(target);
      } catch (e) {
        command.error(`error: ${opts.agent ? "--agent" : "--aggregator"}: ${errorMessage(e)}`, { exitCode: 2 });
      }
      if (await getMetering(what, opts, command)) return;
      const transport = createGrpcJsTransport(target, clientTransportOptions());
      const call = { timeoutMs: opts.timeout };
      try {
        if (opts.agent) {
          if (what === "containers") {
            const res = await createClient(RuntimeService, transport).listContainers({}, call);
            print(opts, AgentContainersSchema, res, () =>
              [containersTable(res.containers.map((container) => ({ host: "", container })), false), res.unavailable.map((u) => `unavailable: ${u}`).join("\n")].filter(Boolean).join("\n\n"),
            );
          } else if (what === "standby") {
            const res = await createClient(StandbyService, transport).listStandbyStatus({}, call);
            print(opts, AgentStandbySchema, res, () => standbyTable(res.statuses.map((status) => ({ host: "", status })), false));
          } else if (what === "instances") {
            const inventory = createClient(InventoryService, transport);
            const pages = await readAllPages((pageToken) => inventory.listInstances({ pageToken }, call));
            // One answer of the whole list (every page carries the same version and digest).
            const res = { ...pages[0]!, instances: pages.flatMap((p) => p.instances), nextPageToken: "" };
            print(opts, ListInstancesResponseSchema, res, () =>
              instancesTable(res.instances.map((i) => ({ host: "", ...i })), false),
            );
          } else {
            const res = await createClient(MetricsService, transport).listInstanceStats({}, call);
            print(opts, AgentStatsSchema, res, () => statsTable(res.stats.map((s) => ({ host: "", ...s })), false));
          }
        } else {
          const fleet = createClient(FleetService, transport);
          if (what === "policies") {
            await getPolicies(fleet, call, opts.output);
          } else if (what === "hosts") {
            const res = await fleet.listHosts({}, call);
            print(opts, ListHostsResponseSchema, res, () =>
              formatTable(
                ["HOST", "ADDRESS", "CONNECTION", "INVENTORY", "METERING", "LAST-SEEN", "LAST-ERROR"],
                res.hosts.map((h) => [
                  h.name,
                  h.address,
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
            const res = await fleet.listContainers({}, call);
            print(opts, FleetContainersSchema, res, () =>
              [
                containersTable(res.containers.map((c) => ({ host: c.host, container: c.container! })), true),
                res.unavailable.map((u) => `unavailable: ${u}`).join("\n"),
                hostResultLines(res.hostResults),
              ].filter(Boolean).join("\n\n"),
            );
          } else if (what === "standby") {
            const res = await fleet.listStandbyStatus({}, call);
            print(opts, FleetStandbySchema, res, () =>
              [standbyTable(res.statuses.map((s) => ({ host: s.host, status: s.status! })), true), hostResultLines(res.hostResults)].join("\n\n"),
            );
          } else if (what === "instances") {
            const filters = { failingRules: opts.failing ?? [], concernSeverities: opts.severity ?? [] };
            const pages = await readAllPages((pageToken) => fleet.listInstances({ pageToken, ...filters }, call));
            // One answer of the whole view (every page carries the same hosts and cursor).
            const res = { ...pages[0]!, instances: pages.flatMap((p) => p.instances), nextPageToken: "" };
            print(opts, FleetInstancesSchema, res, () =>
              [
                instancesTable(res.instances, true),
                // Every host's part of the merged view: how current it is, and why not.
                formatTable(
                  ["HOST", "SYNC", "INSTANCES", "VERSION", "LAST-SEEN", "WHY"],
                  res.hosts.map((h) => [
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
            const res = await fleet.listInstanceStats({}, call);
            print(opts, FleetStatsSchema, res, () =>
              [statsTable(res.stats, true), hostResultLines(res.hostResults)].filter(Boolean).join("\n\n"),
            );
          }
        }
      } catch (e) {
        process.stderr.write(`fleetlet get ${what}: ${target}: ${errorMessage(e)}\n`);
        process.exitCode = 1;
      } finally {
        transport.close();
      }
    });
}

function print<T extends DescMessage>(opts: GetOptions, schema: T, msg: MessageShape<T>, table: () => string): void {
  process.stdout.write(opts.output === "json" ? `${toJsonString(schema, msg, { prettySpaces: 2 })}\n` : `${table()}\n`);
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

export function statsTable(rows: (Omit<InstanceStats, "$typeName"> & { host: string })[], withHost: boolean): string {
  const headers = ["ID", "NAME", "CPU-SEC", "CPU%", "RSS", "MEM%", "NET-RX", "NET-TX", "UNAVAILABLE"];
  return formatTable(
    withHost ? ["HOST", ...headers] : headers,
    rows.map((s) => {
      const cells = [
        s.instanceId,
        s.instanceName,
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
export function hostResultLines(results: HostResult[]): string {
  const failed = results.filter((r) => r.code !== "OK");
  const ok = results.length - failed.length;
  const head = `${ok}/${results.length} hosts answered`;
  if (failed.length === 0) return head;
  return [head, ...failed.map((r) => `  ${r.host}: ${r.code} after ${Math.round(r.latencyMs)} ms: ${r.message}`)].join("\n");
}
