import { Command, Option } from "commander";
import { createClient } from "@connectrpc/connect";
import { toJsonString } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { AddHostResponseSchema, ConnectionState, FleetService, HostSyncState, ResyncHostResponseSchema } from "../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { createGrpcJsTransport } from "../lib/rpc/grpc-transport.js";
import { clientTransportOptions } from "./client-token.js";
import { parse } from "./options.js";
import { formatTable } from "./table.js";
import { errorMessage } from "../lib/error-message.js";

interface HostsOptions {
  aggregator?: string;
  output: "table" | "json";
  timeout: number;
}

/**
 * `fleetlet hosts add|remove|resync`: the aggregator's host list changed from the command line
 * (FleetService AddHost / RemoveHost / ResyncHost). `add --dry-run` tests a host's connection
 * before adding it; `resync` relists a host's inventory now and says what that changed.
 */
export function hostsCommand(): Command {
  const hosts = new Command("hosts").description("change the aggregator's hosts: add (or test with --dry-run), remove, resync");
  const common = (c: Command, defaultTimeoutMs: number) =>
    c
      .option("--aggregator <host:port>", "aggregator to ask (default 127.0.0.1:7700)")
      .addOption(new Option("-o, --output <format>", "table or json").choices(["table", "json"]).default("table"))
      .addOption(new Option("--timeout <duration>", "deadline of the call").default(defaultTimeoutMs, `${defaultTimeoutMs / 1000}s`).argParser(parse.durationMs));

  hosts.addCommand(
    common(
      new Command("add")
        .description("add a host (persisted by the aggregator); --dry-run only dials it and reports what answered")
        .argument("<name>", "host name")
        .argument("<address>", "host:port of the agent's gRPC port")
        .option("--dry-run", "test the connection: dial, ask the agent's health and inventory, add nothing")
        .addOption(new Option("--per-host-timeout <duration>", "deadline of calls to this host (and of the dry run's dial)").argParser(parse.hostTimeoutMs)),
      30_000,
    ).action((name: string, address: string, opts: HostsOptions & { dryRun?: boolean; perHostTimeout?: number }) =>
      run("add", opts, async (fleet, call) => {
        const res = await fleet.addHost({ name, address, dryRun: opts.dryRun ?? false, perHostTimeout: opts.perHostTimeout === undefined ? undefined : durationFromMs(opts.perHostTimeout) }, call);
        if (opts.output === "json") return { text: toJsonString(AddHostResponseSchema, res, { prettySpaces: 2 }), failed: res.probe !== undefined && !res.probe.reachable };
        const h = res.host!;
        if (!res.probe) return { text: `host ${h.name} added (${h.address}, ${ConnectionState[h.connectionState]})`, failed: false };
        const p = res.probe;
        const table = formatTable(
          ["NAME", "ADDRESS", "REACHED", "HEALTH", "AGENT-VERSION", "INCARNATION", "VERSION", "INSTANCES", "LATENCY", "ERROR"],
          [[h.name, h.address, p.reachable ? "yes" : "no", p.healthStatus || "-", p.agentVersion || "-", p.agentIncarnation || "-", p.reachable ? p.resourceVersion.toString() : "-", p.reachable ? String(p.instanceCount) : "-", `${p.latencyMs.toFixed(1)}ms`, p.code === "OK" ? "-" : `${p.code}: ${p.message}`]],
        );
        return { text: `${table}\n\ndry run: nothing was added${p.reachable ? "" : " (the host did not answer)"}`, failed: !p.reachable };
      }),
    ),
  );

  hosts.addCommand(
    common(new Command("remove").description("remove a host added with hosts add").argument("<name>", "host name"), 10_000).action((name: string, opts: HostsOptions) =>
      run("remove", opts, async (fleet, call) => {
        await fleet.removeHost({ name }, call);
        return { text: opts.output === "json" ? "{}" : `host ${name} removed`, failed: false };
      }),
    ),
  );

  hosts.addCommand(
    common(new Command("resync").description("relist a host's inventory now (as after a digest mismatch) and show what it changed").argument("<host>", "host name"), 60_000).action(
      (name: string, opts: HostsOptions) =>
        run("resync", opts, async (fleet, call) => {
          const res = await fleet.resyncHost({ name }, call);
          if (opts.output === "json") return { text: toJsonString(ResyncHostResponseSchema, res, { prettySpaces: 2 }), failed: false };
          const s = res.hostSync;
          return {
            text: formatTable(
              ["HOST", "STATE", "VERSION", "INSTANCES", "SNAPSHOTS", "RELISTS", "ADDED", "MODIFIED", "DELETED"],
              [[name, s ? HostSyncState[s.state] : "-", s ? s.resourceVersion.toString() : "-", s ? String(s.instanceCount) : "-", s ? String(s.snapshotCount) : "-", s ? String(s.relists) : "-", String(res.added), String(res.modified), String(res.deleted)]],
            ),
            failed: false,
          };
        }),
    ),
  );
  return hosts;
}

/** One call to the aggregator; its error (or a failed dry run) exits 1 with the reason. */
async function run(
  what: string,
  opts: HostsOptions,
  f: (fleet: ReturnType<typeof createClient<typeof FleetService>>, call: { timeoutMs: number }) => Promise<{ text: string; failed: boolean }>,
): Promise<void> {
  const target = opts.aggregator ?? "127.0.0.1:7700";
  const transport = createGrpcJsTransport(target, clientTransportOptions());
  try {
    const out = await f(createClient(FleetService, transport), { timeoutMs: opts.timeout });
    process.stdout.write(`${out.text}\n`);
    if (out.failed) process.exitCode = 1;
  } catch (e) {
    process.stderr.write(`fleetlet hosts ${what}: ${target}: ${errorMessage(e)}\n`);
    process.exitCode = 1;
  } finally {
    transport.close();
  }
}
