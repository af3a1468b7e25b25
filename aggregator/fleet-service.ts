import { createHash } from "node:crypto";
import { create, toBinary } from "@bufbuild/protobuf";
import { durationMs, timestampFromMs, type Duration } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import {
  FleetMeteringEntrySchema,
  type FleetService,
  type FleetMeteringEntry,
  type FleetInstance,
  type FleetSnapshot,
  FleetSnapshotSchema,
  HostSchema,
  ListInstanceStatsResponseSchema,
  ConnectionState,
  HostOrigin,
  HostSyncState,
  PolicyRuleSchema,
  PolicySeverity,
  PolicySource,
  PolicySummarySchema,
  type Host,
  type HostResult,
  HostResultSchema,
  ListInstancesResponseSchema,
  ListSnapshotsResponseSchema,
  MeteringGapSchema,
} from "../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { MetricsService } from "../gen/fleetlet/agent/v1/metrics_pb.js";
import { InstanceKind, InstanceState } from "../gen/fleetlet/agent/v1/inventory_pb.js";
import { watchFleetInventory } from "./inventory/fleet-inventory-watch.js";
import { framedInstance, type InstanceFilter, type MergedView, type SnapshotFilter } from "./inventory/merged-view.js";
import type { RelistCounts } from "./inventory/inventory-follower.js";
import { probeHost } from "./hosts/host-probe.js";
import { CALLER_IDENTITY } from "../lib/rpc/authz/identity.js";
import { onBehalfOfHeaders } from "../lib/rpc/authz/call-credentials.js";
import { invalidArgument, requireId } from "../lib/rpc/field-error.js";
import { countWithinBytes, fieldBytes, ListPager } from "../lib/paging/list-pager.js";
import { parseHostPort } from "../lib/listen-address.js";
import { fanOut, type HostOutcome } from "./fan-out.js";
import { RUNTIME_NAMES } from "../lib/runtime-names.js";
import type { MeteringFollower } from "./metering/metering-follower.js";
import { MeteringConflictError, type MeteringStore, type StoredEntry } from "./metering/metering-store.js";
import { agentStatEntries, hostStatEntries } from "./stats-splice.js";
import { wireResponse } from "../lib/rpc/service-adapter.js";
import { followSource } from "../lib/rpc/follow-source.js";
import { hostTimeoutProblem } from "../lib/host-timeout.js";
import type { HostConnection } from "./hosts/host-connection.js";
import type { HostRegistry } from "./hosts/host-registry.js";
import type { AddressAllowlist } from "./hosts/address-allowlist.js";
import { errorMessage } from "../lib/error-message.js";
import { RULE_NAME, RuleError } from "./policies/policy-rule.js";
import { RuleSetConflict, type RuleSet } from "./policies/rule-set.js";
import type { ValidationLoop } from "./policies/validation-loop.js";

export interface FleetOptions {
  defaultPerHostTimeoutMs: number;
  fanOutConcurrency: number;
  /**
   * The merged inventory view (inventory.md) and what relists a host on request (the
   * InventoryFollower); absent in tests that do not need them.
   */
  inventory?: { view: MergedView; follower?: { resync(name: string): Promise<RelistCounts> } };
  /** The merged metering feed (metering.md); absent in tests that do not need it. */
  metering?: { store: MeteringStore; follower: MeteringFollower };
  /** --add-host-allow: the addresses AddHost may use (unset: any). */
  addHostAllow?: AddressAllowlist;
  /** Fleet policies (issue 14): the rules in force and the validation loop; absent: FAILED_PRECONDITION. */
  policies?: { rules: RuleSet; loop: ValidationLoop; fileError?: () => string };
}

const listStatsMethod = MetricsService.method.listInstanceStats;
/** ListInstanceStatsRequest{} encodes to nothing. */
const EMPTY = Buffer.alloc(0);


/** FleetService: the hosts registry and the fan-outs over it. */
export function createFleetService(hosts: HostRegistry, options: FleetOptions): ServiceImpl<typeof FleetService> {
  const requireInventory = () => {
    if (!options.inventory) throw new ConnectError("the merged inventory is not enabled on this aggregator", Code.FailedPrecondition);
    return options.inventory.view;
  };
  const requirePolicies = () => {
    if (!options.policies) throw new ConnectError("policies are not enabled on this aggregator", Code.FailedPrecondition);
    return options.policies;
  };
  const requireMetering = () => {
    if (!options.metering) throw new ConnectError("metering is not enabled on this aggregator", Code.FailedPrecondition);
    return options.metering.store;
  };
  const selectHosts = (names: string[]): HostConnection[] => {
    if (names.length === 0) return hosts.list();
    const seen = new Set<string>();
    return names.flatMap((name, i) => {
      requireId(`hosts[${i}]`, name);
      if (seen.has(name)) return [];
      seen.add(name);
      const conn = hosts.get(name);
      if (!conn) throw new ConnectError(`host ${JSON.stringify(name)} not found`, Code.NotFound);
      return [conn];
    });
  };
  const timeoutFor = (override: Duration | undefined, field: string) => {
    const callMs = override ? checkedTimeout(override, field) : undefined;
    return (host: HostConnection) => callMs ?? host.config.perHostTimeoutMs ?? options.defaultPerHostTimeoutMs;
  };

  // Pages of the merged view: hosts sort before ids, and host names never hold a NUL.
  const instancePages = new ListPager<FleetInstance, Uint8Array>({
    scope: "fleetlet.aggregator.v1.FleetService/ListInstances",
    keyOf: (i) => `${i.host}\u0000${i.id}`,
    itemBytes: (i) => framedInstance(i).length,
  });
  const snapshotPages = new ListPager<FleetSnapshot, { hosts: ReturnType<MergedView["hostSyncs"]>; cursor: string }>({
    scope: "fleetlet.aggregator.v1.FleetService/ListSnapshots",
    keyOf: (x) => `${x.host}\u0000${x.id}`,
    itemBytes: (x) => fieldBytes(toBinary(FleetSnapshotSchema, x).length),
  });

  return {
    listHosts() {
      return {
        hosts: hosts.list().map((c) => {
          const h = toHost(c);
          h.metering = options.metering?.follower.status(c.config.name);
          const inv = options.inventory?.view.host(c.config.name);
          if (inv) {
            h.syncState = inv.state;
            h.agentIncarnation ||= inv.incarnation;
            h.info = inv.info;
          }
          // last_error is the latest failure of any call to the host: a fan-out's, else the
          // inventory follower's, else the metering follower's. A host that never answered (a
          // refused certificate, say) has had no fan-out yet; without this it showed no reason.
          if (!h.lastError && h.connectionState !== ConnectionState.READY) h.lastError = inv?.lastError || h.metering?.lastError || "";
          return h;
        }),
      };
    },
    async addHost(req, context) {
      requireId("name", req.name);
      let port: number;
      try {
        port = parseHostPort(req.address).port;
      } catch (e) {
        throw invalidArgument("address", errorMessage(e));
      }
      if (port === 0) throw invalidArgument("address", "port 0 cannot be dialled");
      const host = parseHostPort(req.address).host;
      if (options.addHostAllow && !options.addHostAllow.allows(host)) {
        throw new ConnectError(`address: ${host} is outside --add-host-allow (${options.addHostAllow.text})`, Code.PermissionDenied);
      }
      const perHostTimeoutMs = req.perHostTimeout ? checkedTimeout(req.perHostTimeout, "per_host_timeout") : undefined;
      if (req.dryRun) {
        // What the real add would refuse is refused here too; then the address is tried on a
        // channel of its own, and nothing is added or persisted.
        const existing = hosts.get(req.name);
        if (existing && existing.config.address !== req.address) {
          throw new ConnectError(`host ${JSON.stringify(req.name)} already exists with address ${existing.config.address}`, Code.AlreadyExists);
        }
        const { probe, connectionState } = await probeHost(req.address, perHostTimeoutMs ?? options.defaultPerHostTimeoutMs, context.signal, hosts.credentials, hosts.agentToken);
        const host = create(HostSchema, {
          name: req.name,
          address: req.address,
          connectionState,
          agentIncarnation: probe.agentIncarnation,
          lastError: probe.code === "OK" ? "" : `${probe.code}: ${probe.message}`,
          perHostTimeout: perHostTimeoutMs !== undefined ? msToDuration(perHostTimeoutMs) : undefined,
          origin: HostOrigin.API,
        });
        return { host, probe };
      }
      const conn = hosts.add({ name: req.name, address: req.address, origin: HostOrigin.API, perHostTimeoutMs });
      return { host: toHost(conn) };
    },
    async resyncHost(req) {
      const view = requireInventory();
      requireId("name", req.name);
      if (!hosts.get(req.name)) throw new ConnectError(`host ${JSON.stringify(req.name)} not found`, Code.NotFound);
      const follower = options.inventory?.follower;
      if (!follower) throw new ConnectError("this aggregator does not follow the hosts' inventories", Code.FailedPrecondition);
      const counts = await follower.resync(req.name);
      const hostView = view.host(req.name);
      return { hostSync: hostView ? view.hostSync(hostView) : undefined, ...counts };
    },
    listSnapshots(req) {
      const view = requireInventory();
      const hostsFilter = req.hosts.length > 0 ? new Set(selectHosts(req.hosts).map((h) => h.config.name)) : undefined;
      req.instanceIds.forEach((id, i) => requireId(`instance_ids[${i}]`, id));
      const filter: SnapshotFilter = { hosts: hostsFilter, instanceIds: req.instanceIds.length > 0 ? new Set(req.instanceIds) : undefined };
      const fingerprint = createHash("sha256")
        .update(JSON.stringify([hostsFilter ? [...hostsFilter].sort() : null, [...(filter.instanceIds ?? [])].sort()]))
        .digest("base64url")
        .slice(0, 16);
      const page = snapshotPages.page(
        req,
        () => {
          const meta = { hosts: view.hostSyncs(hostsFilter), cursor: view.cursor };
          const metaBytes = toBinary(ListSnapshotsResponseSchema, create(ListSnapshotsResponseSchema, meta)).length;
          return { version: view.cursor, items: view.listSnapshots(filter), meta, metaBytes };
        },
        fingerprint,
      );
      return { snapshots: [...page.items], ...page.meta, nextPageToken: page.nextPageToken };
    },
    removeHost(req) {
      requireId("name", req.name);
      hosts.remove(req.name);
      return {};
    },
    async listInstanceStats(req, context) {
      const selected = selectHosts(req.hosts);
      // The hot path of every dashboard refresh: a pre-encoded request, and the agents' answers
      // spliced into ours as bytes (stats-splice.ts) instead of decoded and encoded again.
      const outcomes = await fanOut(
        selected,
        async (host, signal, timeoutMs) => {
          const raw = await host.transport.unaryRaw(listStatsMethod, EMPTY, timeoutMs, signal);
          try {
            return agentStatEntries(raw);
          } catch (e) {
            throw new ConnectError(`malformed answer from the agent: ${errorMessage(e)}`, Code.Internal);
          }
        },
        { timeoutMsFor: timeoutFor(req.perHostTimeout, "per_host_timeout"), concurrency: options.fanOutConcurrency, signal: context.signal, operation: "FleetService.ListInstanceStats" },
      );
      const parts = sortedByHost(outcomes).map((o) => hostStatEntries(o.host, o.value ?? []));
      parts.push(Buffer.from(toBinary(ListInstanceStatsResponseSchema, create(ListInstanceStatsResponseSchema, { hostResults: toHostResults(outcomes) }))));
      return wireResponse(ListInstanceStatsResponseSchema, Buffer.concat(parts));
    },
    async listStandbyStatus(req, context) {
      const selected = selectHosts(req.hosts);
      const outcomes = await fanOut(
        selected,
        async (host, signal, timeoutMs) => (await host.standby.listStandbyStatus({}, { signal, timeoutMs })).statuses,
        { timeoutMsFor: timeoutFor(req.perHostTimeout, "per_host_timeout"), concurrency: options.fanOutConcurrency, signal: context.signal, operation: "FleetService.ListStandbyStatus" },
      );
      const statuses = sortedByHost(outcomes).flatMap((o) => (o.value ?? []).map((status) => ({ host: o.host, status })));
      return { statuses, hostResults: toHostResults(outcomes) };
    },
    async listContainers(req, context) {
      // Checked here too: a typo would otherwise be every host's INVALID_ARGUMENT in an OK answer.
      if (req.runtime !== "" && !(RUNTIME_NAMES as readonly string[]).includes(req.runtime)) {
        throw invalidArgument("runtime", `must be one of ${RUNTIME_NAMES.join(", ")} (or empty: all), got ${JSON.stringify(req.runtime.slice(0, 40))}`);
      }
      const selected = selectHosts(req.hosts);
      const outcomes = await fanOut(
        selected,
        async (host, signal, timeoutMs) => host.runtime.listContainers({ runtime: req.runtime, runningOnly: req.runningOnly }, { signal, timeoutMs }),
        { timeoutMsFor: timeoutFor(req.perHostTimeout, "per_host_timeout"), concurrency: options.fanOutConcurrency, signal: context.signal, operation: "FleetService.ListContainers" },
      );
      const containers = sortedByHost(outcomes).flatMap((o) =>
        (o.value?.containers ?? [])
          .slice()
          .sort((a, b) => (a.runtime === b.runtime ? (a.name < b.name ? -1 : a.name > b.name ? 1 : 0) : a.runtime < b.runtime ? -1 : 1))
          .map((container) => ({ host: o.host, container })),
      );
      const unavailable = sortedByHost(outcomes).flatMap((o) => (o.value?.unavailable ?? []).map((u) => `${o.host}: ${u}`));
      return { containers, hostResults: toHostResults(outcomes), unavailable };
    },
    async *streamContainerLogs(req, context) {
      requireId("host", req.host);
      const host = hosts.get(req.host);
      if (!host) throw new ConnectError(`host ${JSON.stringify(req.host)} not found`, Code.NotFound);
      // Relayed as it comes; the agent validates the rest and its errors (NOT_FOUND for the
      // container, UNAVAILABLE for its runtime) reach the caller unchanged.
      const { host: _, $typeName: __, ...agentRequest } = req;
      // The agent authorises the aggregator's own token and records the end user beside it.
      const headers = onBehalfOfHeaders(context.values.get(CALLER_IDENTITY)?.name);
      for await (const m of host.runtime.streamContainerLogs(agentRequest, { signal: context.signal, headers })) {
        yield { lines: m.lines, endReason: m.endReason, endDetail: m.endDetail, errors: m.errors };
      }
    },
    listPolicies() {
      const p = requirePolicies();
      const status = p.loop.status();
      return {
        rules: p.rules.list().map(toPolicyRule),
        version: BigInt(p.rules.version),
        summaries: status.summaries.map((x) => create(PolicySummarySchema, x)),
        parameters: Object.fromEntries(p.rules.parameters),
        unvalidated: status.unvalidated,
        validationLagSeconds: Math.round(status.lagMs) / 1000,
        fileError: p.fileError?.() ?? "",
      };
    },
    putPolicy(req) {
      const p = requirePolicies();
      if (!req.rule) throw invalidArgument("rule", "is required");
      try {
        const rule = p.rules.put({ name: req.rule.name, severity: req.rule.severity, description: req.rule.description, failsWhen: req.rule.failsWhen, source: PolicySource.API });
        return { rule: toPolicyRule(rule), version: BigInt(p.rules.version) };
      } catch (e) {
        throw policyError(e);
      }
    },
    deletePolicy(req) {
      const p = requirePolicies();
      requireId("name", req.name);
      try {
        p.rules.delete(req.name);
      } catch (e) {
        throw policyError(e);
      }
      return { version: BigInt(p.rules.version) };
    },
    acceptMeteringGap(req, context) {
      const store = requireMetering();
      requireId("host", req.host);
      if (!hosts.get(req.host)) throw new ConnectError(`host ${JSON.stringify(req.host)} not found`, Code.NotFound);
      if (!/^[0-9a-f]{16}$/.test(req.ledgerId)) throw invalidArgument("ledger_id", `must be the host's 16-hex-digit ledger id, got ${JSON.stringify(req.ledgerId.slice(0, 40))}`);
      // The ledger the agent now reports instead of the followed one (HostMetering.pending_ledger_id):
      // accepting it is a ledger change, which may resume at seq 1.
      const cursor = store.cursor(req.host);
      const pending = options.metering?.follower.status(req.host)?.pendingLedgerId ?? "";
      const change = cursor !== undefined && req.ledgerId !== cursor.ledgerId && req.ledgerId === pending;
      const minResume = change ? 1n : 2n;
      if (req.resumeSeq < minResume || req.resumeSeq > BigInt(Number.MAX_SAFE_INTEGER)) throw invalidArgument("resume_seq", `must be between ${minResume} and 2^53, got ${req.resumeSeq}`);
      const reason = req.reason.trim();
      if (reason === "" || reason.length > 256 || /[\u0000-\u001f\u007f]/.test(reason)) throw invalidArgument("reason", "is required: 1 to 256 printable characters saying why the entries are given up");
      let gap;
      try {
        // Who gave the entries up is kept with the gap (security.md "Audit").
        const caller = context.values.get(CALLER_IDENTITY);
        const why = caller ? `${reason} (accepted by ${caller.name})` : reason;
        if (change) {
          const accepted = store.acceptLedgerChange(req.host, req.ledgerId, Number(req.resumeSeq), why);
          gap = accepted.gap ?? { host: req.host, ledgerId: req.ledgerId, afterSeq: 0, resumeSeq: Number(req.resumeSeq), acceptedAtMs: accepted.change.changedAtMs, reason: why };
        } else {
          gap = store.acceptGap(req.host, req.ledgerId, Number(req.resumeSeq), why);
        }
      } catch (e) {
        if (e instanceof MeteringConflictError) throw new ConnectError(e.message, Code.FailedPrecondition);
        throw e;
      }
      return {
        gap: create(MeteringGapSchema, {
          host: gap.host,
          ledgerId: gap.ledgerId,
          afterSeq: BigInt(gap.afterSeq),
          resumeSeq: BigInt(gap.resumeSeq),
          acceptedAt: timestampFromMs(gap.acceptedAtMs),
          reason: gap.reason,
        }),
      };
    },
    readMeteringEntries(req) {
      const store = requireMetering();
      const limit = req.limit === 0 ? 1000 : req.limit;
      if (limit > 10_000) throw invalidArgument("limit", `must be at most 10000, got ${limit}`);
      const from = fleetCursor(req.fromFleetSeq);
      // At most `limit` entries and under 2 MiB (long ids make 10,000 entries pass the 4 MiB a
      // default client accepts); next_fleet_seq says where to go on either way.
      const read = store.read(from, limit).map(toFleetEntry);
      const entries = read.slice(0, countWithinBytes(read, (e) => fieldBytes(toBinary(FleetMeteringEntrySchema, e).length)));
      return { entries, nextFleetSeq: entries.length ? entries.at(-1)!.fleetSeq + 1n : BigInt(from), lastFleetSeq: BigInt(store.lastFleetSeq()) };
    },
    async *watchMeteringEntries(req, context) {
      const store = requireMetering();
      let next = fleetCursor(req.fromFleetSeq);
      yield* followSource(context.signal, (notify) => store.subscribe(notify), () => {
        const page = store.read(next, 1000);
        if (page.length === 0) return undefined;
        next = page.at(-1)!.fleetSeq + 1;
        return { entries: page.map(toFleetEntry), lastFleetSeq: BigInt(store.lastFleetSeq()) };
      });
    },
    listInstances(req) {
      const view = requireInventory();
      const filter = instanceFilter(req, selectHosts);
      const page = instancePages.page(
        req,
        () => {
          const hostSyncs = view.hostSyncs(filter.hosts);
          const rest = create(ListInstancesResponseSchema, {
            hosts: hostSyncs,
            // Partial views are normal: OK for a SYNCED host, the reason for any other.
            hostResults: hostSyncs.map((h) => create(HostResultSchema, {
              host: h.host,
              code: h.state === HostSyncState.SYNCED ? "OK" : "UNAVAILABLE",
              message: h.state === HostSyncState.SYNCED ? "" : `${HostSyncState[h.state]}${h.lastError ? `: ${h.lastError}` : ""}`,
            })),
            cursor: view.cursor,
          });
          // Encoded once per listed state: every page of it carries the same.
          const meta = toBinary(ListInstancesResponseSchema, rest);
          return { version: view.cursor, items: view.list(filter), meta, metaBytes: meta.length };
        },
        filterFingerprint(filter),
      );
      // Each instance's bytes were made when it entered the view: the answer is their
      // concatenation plus the rest (protobuf merges repeated fields across concatenation).
      const parts = page.items.map(framedInstance);
      parts.push(page.meta);
      if (page.nextPageToken !== "") parts.push(toBinary(ListInstancesResponseSchema, create(ListInstancesResponseSchema, { nextPageToken: page.nextPageToken })));
      return wireResponse(ListInstancesResponseSchema, Buffer.concat(parts));
    },
    watchInstances(req, context) {
      const view = requireInventory();
      const filter = instanceFilter(req, selectHosts);
      req.snapshotInstanceIds.forEach((id, i) => requireId(`snapshot_instance_ids[${i}]`, id));
      if (!req.includeSnapshots && req.snapshotInstanceIds.length > 0) throw invalidArgument("snapshot_instance_ids", "applies to snapshots: set include_snapshots too");
      const snapshots: SnapshotFilter | undefined = req.includeSnapshots
        ? { hosts: filter.hosts, instanceIds: req.snapshotInstanceIds.length > 0 ? new Set(req.snapshotInstanceIds) : undefined }
        : undefined;
      return watchFleetInventory(view, req.cursor, filter, context.signal, snapshots);
    },
  };
}

function toPolicyRule(r: { name: string; severity: PolicySeverity; description: string; failsWhen: string; source: PolicySource }) {
  return create(PolicyRuleSchema, { name: r.name, severity: r.severity, description: r.description, failsWhen: r.failsWhen, source: r.source });
}

/** A rule refused (INVALID_ARGUMENT naming the field), a file-owned name (FAILED_PRECONDITION), an unknown one (NOT_FOUND). */
function policyError(e: unknown): ConnectError {
  if (e instanceof RuleError) return invalidArgument(e.field, e.message);
  if (e instanceof RuleSetConflict) return new ConnectError(e.message, e.kind === "not-found" ? Code.NotFound : Code.FailedPrecondition);
  return ConnectError.from(e);
}

/** The filters of List/WatchInstances, checked: each bad value names its field. */
function instanceFilter(
  req: { hosts: string[]; labels: Record<string, string>; states: InstanceState[]; kinds: InstanceKind[]; failingRules: string[]; concernSeverities: PolicySeverity[] },
  selectHosts: (names: string[]) => HostConnection[],
): InstanceFilter {
  const hosts = req.hosts.length > 0 ? new Set(selectHosts(req.hosts).map((h) => h.config.name)) : undefined;
  for (const [k, v] of Object.entries(req.labels)) {
    if (k === "" || k.length > 253) throw invalidArgument(`labels[${JSON.stringify(k.slice(0, 40))}]`, "key must be 1 to 253 characters");
    if (v.length > 256) throw invalidArgument(`labels[${JSON.stringify(k)}]`, "value must be at most 256 characters");
  }
  req.states.forEach((st, i) => {
    if (st === InstanceState.UNSPECIFIED || !(st in InstanceState)) throw invalidArgument(`states[${i}]`, `must be one of CREATED, RUNNING, STANDBY, STOPPED, ERROR, got ${st}`);
  });
  req.kinds.forEach((k, i) => {
    if (k === InstanceKind.UNSPECIFIED || !(k in InstanceKind)) throw invalidArgument(`kinds[${i}]`, `must be one of VM, CONTAINER, PROCESS, got ${k}`);
  });
  req.failingRules.forEach((r, i) => {
    if (!RULE_NAME.test(r)) throw invalidArgument(`failing_rules[${i}]`, `a rule name must match ${RULE_NAME.source}, got ${JSON.stringify(r.slice(0, 80))}`);
  });
  req.concernSeverities.forEach((sev, i) => {
    if (sev === PolicySeverity.UNSPECIFIED || !(sev in PolicySeverity)) throw invalidArgument(`concern_severities[${i}]`, `must be one of INFO, WARNING, CRITICAL, got ${sev}`);
  });
  return {
    hosts,
    labels: Object.keys(req.labels).length > 0 ? req.labels : undefined,
    states: new Set(req.states),
    kinds: new Set(req.kinds),
    failingRules: new Set(req.failingRules),
    concernSeverities: new Set(req.concernSeverities),
  };
}

/** The filters a page_token is bound to, in a canonical form. */
function filterFingerprint(f: InstanceFilter): string {
  const canonical = JSON.stringify([
    f.hosts ? [...f.hosts].sort() : null,
    f.labels ? Object.entries(f.labels).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)) : null,
    [...(f.states ?? [])].sort((a, b) => a - b),
    [...(f.kinds ?? [])].sort((a, b) => a - b),
    [...(f.failingRules ?? [])].sort(),
    [...(f.concernSeverities ?? [])].sort((a, b) => a - b),
  ]);
  return createHash("sha256").update(canonical).digest("base64url").slice(0, 16);
}

function checkedTimeout(d: Duration, field: string): number {
  const ms = durationMs(d);
  const problem = hostTimeoutProblem(ms);
  if (problem) throw invalidArgument(field, problem);
  return ms;
}

function sortedByHost<T>(outcomes: HostOutcome<T>[]): HostOutcome<T>[] {
  return [...outcomes].sort((a, b) => (a.host < b.host ? -1 : a.host > b.host ? 1 : 0));
}

function toHostResults<T>(outcomes: HostOutcome<T>[]): HostResult[] {
  return sortedByHost(outcomes).map((o) => ({
    $typeName: "fleetlet.aggregator.v1.HostResult",
    host: o.host,
    code: o.code,
    message: o.message,
    latencyMs: Math.round(o.latencyMs * 1000) / 1000,
  }));
}

function toHost(conn: HostConnection): Host {
  const c = conn.config;
  return {
    $typeName: "fleetlet.aggregator.v1.Host",
    name: c.name,
    address: c.address,
    connectionState: conn.state,
    lastSeen: conn.lastSeenMs ? timestampFromMs(conn.lastSeenMs) : undefined,
    agentIncarnation: conn.incarnation,
    syncState: HostSyncState.UNSPECIFIED,
    lastError: conn.lastError,
    perHostTimeout: c.perHostTimeoutMs !== undefined ? msToDuration(c.perHostTimeoutMs) : undefined,
    origin: c.origin,
  };
}

function msToDuration(ms: number): Duration {
  return {
    $typeName: "google.protobuf.Duration",
    seconds: BigInt(Math.floor(ms / 1000)),
    nanos: (ms % 1000) * 1_000_000,
  };
}

function toFleetEntry(e: StoredEntry): FleetMeteringEntry {
  return create(FleetMeteringEntrySchema, {
    fleetSeq: BigInt(e.fleetSeq),
    host: e.host,
    ledgerId: e.ledgerId,
    seq: BigInt(e.seq),
    line: e.line,
    kind: e.kind,
    vmId: e.vmId,
    snapshotId: e.snapshotId,
  });
}

/** from_fleet_seq as a store position: 0 and 1 both mean the start; huge values clamp. */
function fleetCursor(v: bigint): number {
  return Math.max(1, Number(v > BigInt(Number.MAX_SAFE_INTEGER) ? BigInt(Number.MAX_SAFE_INTEGER) : v));
}
