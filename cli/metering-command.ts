import { Command, InvalidArgumentError, Option } from "commander";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { FleetService, ReadMeteringEntriesResponseSchema as FleetReadSchema, type FleetMeteringEntry } from "../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { MeteringService, ReadMeteringEntriesResponseSchema as AgentReadSchema } from "../gen/fleetlet/agent/v1/metering_pb.js";
import { formatDurationMs } from "../lib/duration.js";
import { createGrpcJsTransport } from "../lib/rpc/grpc-transport.js";
import { clientTransportOptions } from "./client-token.js";
import { IntervalPairer, formatShape, intervalJson, intervalsSummary, intervalsTable, parseMeteringLine } from "./metering-intervals.js";
import { parse } from "./options.js";
import { formatTable } from "./table.js";
import { formatMessage, type OutputFormat } from "./output.js";
import { errorMessage } from "../lib/error-message.js";

/**
 * The metering read side of the CLI (metering.md "The fleet feed"): `fleetlet get metering`,
 * `fleetlet metering export` (the merged feed as JSONL for downstream) and `fleetlet metering
 * intervals` (starts paired with stops, as billing does).
 */

/** Largest page the services serve. */
const PAGE = 10_000;

const parseSeq = (value: string): bigint => {
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(Number(value))) throw new InvalidArgumentError(`${JSON.stringify(value)} is not a whole number >= 0`);
  return BigInt(value);
};

const parseLimit = (value: string): number => {
  const n = parse.positiveInt(value);
  if (n > PAGE) throw new InvalidArgumentError(`${n} is more than ${PAGE}`);
  return n;
};

export const meteringFromOption = () => new Option("--from <seq>", "metering: first seq to show (fleet_seq with the aggregator, the ledger's seq with --agent)").argParser(parseSeq);
export const meteringLimitOption = () => new Option("--limit <n>", `metering: at most this many entries (default 1000, at most ${PAGE})`).argParser(parseLimit);

interface GetMeteringOptions {
  aggregator?: string;
  agent?: string;
  output: OutputFormat;
  timeout: number;
  from?: bigint;
  limit?: number;
}

/**
 * `fleetlet get metering`, called from the get command for every resource: false (after refusing
 * --from/--limit) when the resource is not metering, else true once it has run.
 */
export async function getMetering(what: string, opts: GetMeteringOptions, command: Command): Promise<boolean> {
  if (what !== "metering") {
    if (opts.from !== undefined || opts.limit !== undefined) command.error("error: --from and --limit apply to get metering only", { exitCode: 2 });
    return false;
  }
  const target = opts.agent ?? opts.aggregator ?? "127.0.0.1:7700";
  const transport = createGrpcJsTransport(target, clientTransportOptions());
  const call = { timeoutMs: opts.timeout };
  const from = opts.from ?? 0n;
  const limit = opts.limit ?? 0;
  let out: string;
  try {
    if (opts.agent) {
      const res = await createClient(MeteringService, transport).readMeteringEntries({ fromSeq: from, limit }, call);
      if (opts.output !== "table") {
        out = formatMessage(AgentReadSchema, res, opts.output).trimEnd();
      } else {
        const rows = res.entries.map((e) => entryCells(e.line));
        const first = res.entries[0]?.seq;
        const range = first === undefined ? `no entries from seq ${from} (last ${res.lastSeq})` : `seq ${first}..${res.entries.at(-1)!.seq} of ${res.lastSeq}`;
        out = [
          formatTable(["SEQ", "KIND", "VM/SNAPSHOT", "REASON", "SHAPE", "EMITTED-AT"], rows),
          "",
          `ledger ${res.ledgerId}: ${range}${more(res.nextSeq, res.lastSeq)}`,
        ].join("\n");
      }
    } else {
      const fleet = createClient(FleetService, transport);
      const res = await fleet.readMeteringEntries({ fromFleetSeq: from, limit }, call);
      if (opts.output !== "table") {
        out = formatMessage(FleetReadSchema, res, opts.output).trimEnd();
      } else {
        const hosts = (await fleet.listHosts({}, call)).hosts;
        const first = res.entries[0]?.fleetSeq;
        const range = first === undefined ? `no entries from fleet_seq ${from} (last ${res.lastFleetSeq})` : `fleet_seq ${first}..${res.entries.at(-1)!.fleetSeq} of ${res.lastFleetSeq}`;
        out = [
          formatTable(
            ["FLEET-SEQ", "HOST", "SEQ", ...ENTRY_HEADERS.slice(1)],
            res.entries.map((e) => [e.fleetSeq.toString(), e.host, ...entryCells(e.line, e)]),
          ),
          "",
          formatTable(
            ["HOST", "LEDGER", "MERGED-SEQ", "AGENT-LAST-SEQ", "LAG", "LAG-AGE", "AGENT-REPORTED", "LEDGER-CHANGES", "GAPS", "LAST-ERROR"],
            hosts.map((h) => {
              const m = h.metering;
              // Never a LAG 0 that is not known: an agent not heard from since the aggregator
              // started has no last seq ("?"), and an old report says how old it is.
              const reported = m?.agentReportedAt ? Date.now() - Number(timestampMs(m.agentReportedAt)) : undefined;
              // An agent with --metering off has no ledger: nothing to lag behind, and not an error.
              if (m?.meteringOff) return [h.name, "metering off", m.mergedSeq.toString(), "-", "-", "-", reported === undefined ? "never" : `${formatDurationMs(Math.max(0, Math.round(reported / 1000)) * 1000)} ago`, String(m.ledgerChanges), String(m.acceptedGaps), "-"];
              return [
                h.name,
                m?.ledgerId || "-",
                m ? m.mergedSeq.toString() : "-",
                m ? (reported === undefined ? "?" : m.agentLastSeq.toString()) : "-",
                m ? (reported === undefined ? "?" : `${reported > STALE_REPORT_MS ? ">=" : ""}${m.lagEntries}`) : "-",
                m ? formatDurationMs(Math.round(m.lagSeconds) * 1000) : "-",
                reported === undefined ? "never" : `${formatDurationMs(Math.max(0, Math.round(reported / 1000)) * 1000)} ago`,
                m ? String(m.ledgerChanges) : "-",
                m ? String(m.acceptedGaps) : "-",
                // When the agent no longer has what we need, say where it now starts.
                (m?.lastError ?? "") + (m && m.agentFirstRetainedSeq > 0n ? ` (agent's first retained seq: ${m.agentFirstRetainedSeq}; see fleetlet metering accept-gap)` : "") || "-",
              ];
            }),
          ),
          "",
          `${range}${more(res.nextFleetSeq, res.lastFleetSeq)}`,
        ].join("\n");
      }
    }
  } catch (e) {
    process.stderr.write(`fleetlet get metering: ${target}: ${errorMessage(e)}\n`);
    process.exitCode = 1;
    return true;
  } finally {
    transport.close();
  }
  process.stdout.write(`${out}\n`);
  return true;
}

/** An agent's report older than this (three of its 5 s heartbeats): its LAG is a lower bound (">=N"). */
const STALE_REPORT_MS = 15_000;

const ENTRY_HEADERS = ["SEQ", "KIND", "VM/SNAPSHOT", "REASON", "SHAPE", "EMITTED-AT"];

const more = (next: bigint, last: bigint) => (next <= last ? `; more: --from ${next}` : "");

/** SEQ, KIND, VM/SNAPSHOT, REASON, SHAPE, EMITTED-AT of a ledger line (what the line says). */
function entryCells(line: string, fallback?: FleetMeteringEntry): string[] {
  try {
    const e = parseMeteringLine(line);
    return [String(e.seq), e.kind, e.vm_id ?? e.snapshot_id ?? "-", e.reason ?? "-", formatShape(e.shape), e.emitted_at];
  } catch (err) {
    return [fallback?.seq.toString() ?? "?", fallback?.kind || "?", fallback?.vmId || fallback?.snapshotId || "-", "-", "-", `unreadable line: ${errorMessage(err)}`];
  }
}

interface ExportOptions {
  aggregator?: string;
  from: bigint;
  follow: boolean;
  withHost: boolean;
  timeout: number;
}

interface IntervalsOptions {
  aggregator?: string;
  from: bigint;
  vm?: string;
  output: "table" | "json";
  timeout: number;
  asOf?: number;
}

/** `fleetlet metering export|intervals|accept-gap`. */
export function meteringCommand(): Command {
  const metering = new Command("metering").description("the fleet's metering feed: export it as JSONL, or pair starts with stops");
  const sub = (name: string) =>
    new Command(name).exitOverride().configureOutput({
      outputError: (text, write) => write(`fleetlet metering ${name}: ${text.trim().replace(/\n+/g, " ")}\n`),
    });
  metering.addCommand(
    sub("export")
      .description("write the merged feed to stdout, one ledger line per line (JSONL), byte for byte")
      .option("--aggregator <host:port>", "aggregator to read (default 127.0.0.1:7700)")
      .addOption(new Option("--from <fleet_seq>", "first fleet_seq to write (resume with the cursor the last run printed)").default(1n, "1").argParser(parseSeq))
      .option("-f, --follow", "after the backlog, keep writing entries as they are merged (Ctrl-C ends)", false)
      .option("--with-host", 'wrap each line: {"fleet_seq":N,"host":"h","entry":LINE}', false)
      .addOption(new Option("--timeout <duration>", "deadline of each read").default(30_000, "30s").argParser(parse.durationMs))
      .action(async (opts: ExportOptions, command: Command) => {
        const address = aggregatorAddress(opts.aggregator, command);
        process.exitCode = await exportFeed(address, opts);
      }),
  );
  metering.addCommand(
    sub("intervals")
      .description("pair each start with its stop (per host and ledger) and print closed and open intervals")
      .option("--aggregator <host:port>", "aggregator to read (default 127.0.0.1:7700)")
      .addOption(new Option("--from <fleet_seq>", "read the feed from this fleet_seq").default(1n, "1").argParser(parseSeq))
      .option("--vm <id>", "only this VM's intervals (on every host)")
      .addOption(new Option("-o, --output <format>", "table or json").choices(["table", "json"]).default("table"))
      .addOption(new Option("--as-of <time>", "measure open intervals up to this RFC 3339 time (default now)").argParser(parseTime))
      .addOption(new Option("--timeout <duration>", "deadline of each read").default(30_000, "30s").argParser(parse.durationMs))
      .action(async (opts: IntervalsOptions, command: Command) => {
        const address = aggregatorAddress(opts.aggregator, command);
        process.exitCode = await printIntervals(address, opts);
      }),
  );
  metering.addCommand(
    sub("accept-gap")
      .description("give up a host's entries that its agent no longer has and this aggregator never merged (a lost store), or accept the new ledger its agent reports (LAST-ERROR in fleetlet get metering names it): recorded with the reason; the host is followed from --resume-seq")
      .argument("<host>", "the host (fleetlet get hosts)")
      .option("--aggregator <host:port>", "aggregator (default 127.0.0.1:7700)")
      .requiredOption("--ledger-id <id>", "the host's current ledger id, or its pending one to accept a ledger change (fleetlet get metering)")
      .addOption(new Option("--resume-seq <seq>", "first seq to merge: the agent's first retained seq (fleetlet get metering shows it)").argParser(parseSeq).makeOptionMandatory())
      .requiredOption("--reason <text>", "why the entries are given up (kept with the gap)")
      .action(async (host: string, opts: { aggregator?: string; ledgerId: string; resumeSeq: bigint; reason: string }, command: Command) => {
        const address = aggregatorAddress(opts.aggregator, command);
        const transport = createGrpcJsTransport(address, clientTransportOptions());
        try {
          const res = await createClient(FleetService, transport).acceptMeteringGap({ host, ledgerId: opts.ledgerId, resumeSeq: opts.resumeSeq, reason: opts.reason }, { timeoutMs: 10_000 });
          const g = res.gap!;
          const skipped = g.resumeSeq > g.afterSeq + 1n ? `entries ${g.afterSeq + 1n}..${g.resumeSeq - 1n} given up` : "nothing of it given up";
          process.stdout.write(`accepted: host ${g.host} ledger ${g.ledgerId}: ${skipped}; following from ${g.resumeSeq}\n`);
        } catch (e) {
          process.stderr.write(`fleetlet metering accept-gap: ${address}: ${ConnectError.from(e).message}\n`);
          process.exitCode = 1;
        } finally {
          transport.close();
        }
      }),
  );
  return metering;
}

function parseTime(value: string): number {
  const ms = Date.parse(value);
  if (!/^\d{4}-\d{2}-\d{2}T/.test(value) || Number.isNaN(ms)) throw new InvalidArgumentError(`${JSON.stringify(value)} is not an RFC 3339 time`);
  return ms;
}

function aggregatorAddress(value: string | undefined, command: Command): string {
  const address = value ?? "127.0.0.1:7700";
  try {
    parse.address(address);
  } catch (e) {
    command.error(`error: --aggregator: ${errorMessage(e)}`, { exitCode: 2 });
  }
  return address;
}

/** Reads the feed from `from` to its current end, page by page; returns where to continue. */
async function readFeed(
  fleet: Client<typeof FleetService>,
  from: bigint,
  timeoutMs: number,
  signal: AbortSignal,
  onPage: (entries: FleetMeteringEntry[]) => Promise<void> | void,
): Promise<bigint> {
  let next = from < 1n ? 1n : from;
  while (!signal.aborted) {
    const res = await fleet.readMeteringEntries({ fromFleetSeq: next, limit: PAGE }, { timeoutMs, signal });
    if (res.entries.length === 0) break;
    await onPage(res.entries);
    next = res.nextFleetSeq;
    if (next > res.lastFleetSeq) break;
  }
  return next;
}

/** The exit code. */
async function exportFeed(address: string, opts: ExportOptions): Promise<number> {
  const transport = createGrpcJsTransport(address, clientTransportOptions());
  const fleet = createClient(FleetService, transport);
  const abort = new AbortController();
  const out = process.stdout;
  let broken = false; // the reader went away (`| head`): stop quietly
  let outError: Error | undefined;
  const onOutError = (e: NodeJS.ErrnoException) => {
    if (e.code === "EPIPE") broken = true;
    else outError = e;
    abort.abort();
  };
  out.on("error", onOutError);
  const onSignal = () => abort.abort();
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);

  let next = opts.from < 1n ? 1n : opts.from;
  let written = 0;
  const write = async (entries: FleetMeteringEntry[]) => {
    if (entries.length === 0 || broken || outError) return;
    const text = entries.map((e) => (opts.withHost ? `{"fleet_seq":${e.fleetSeq},"host":${JSON.stringify(e.host)},"entry":${e.line}}\n` : `${e.line}\n`)).join("");
    const ok = out.write(text);
    // Counted as written once handed to stdout; the cursor moves with them.
    written += entries.length;
    next = entries.at(-1)!.fleetSeq + 1n;
    // A slow consumer: wait instead of buffering the whole feed in memory.
    if (!ok && !out.destroyed) {
      await new Promise<void>((resolve) => {
        const done = () => {
          out.off("drain", done);
          out.off("error", done);
          out.off("close", done);
          abort.signal.removeEventListener("abort", done);
          resolve();
        };
        out.once("drain", done);
        out.once("error", done);
        out.once("close", done);
        abort.signal.addEventListener("abort", done);
      });
    }
  };

  let code = 0;
  try {
    next = await readFeed(fleet, next, opts.timeout, abort.signal, write);
    let backoffMs = 500;
    while (opts.follow && !abort.signal.aborted) {
      try {
        for await (const m of fleet.watchMeteringEntries({ fromFleetSeq: next }, { signal: abort.signal })) {
          await write(m.entries);
          backoffMs = 500;
          if (abort.signal.aborted) break;
        }
        if (!abort.signal.aborted) throw new ConnectError("the aggregator ended the stream", Code.Unavailable);
      } catch (e) {
        if (abort.signal.aborted) break;
        if (ConnectError.from(e).code !== Code.Unavailable) throw e;
        // The aggregator restarted or the network blinked: continue where this stopped.
        process.stderr.write(`fleetlet metering export: ${address}: ${errorMessage(e)}; retrying from --from ${next}\n`);
        await new Promise((r) => setTimeout(r, backoffMs));
        backoffMs = Math.min(backoffMs * 2, 5000);
      }
    }
  } catch (e) {
    if (!abort.signal.aborted) {
      process.stderr.write(`fleetlet metering export: ${address}: ${errorMessage(e)}\n`);
      code = 1;
    }
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    transport.close();
  }
  if (outError) {
    process.stderr.write(`fleetlet metering export: stdout: ${outError.message}\n`);
    return 1;
  }
  if (broken) return 0;
  process.stderr.write(`fleetlet metering export: ${written} ${written === 1 ? "entry" : "entries"}; resume with --from ${next}\n`);
  return code;
}

/** The exit code. */
async function printIntervals(address: string, opts: IntervalsOptions): Promise<number> {
  const transport = createGrpcJsTransport(address, clientTransportOptions());
  const fleet = createClient(FleetService, transport);
  const pairer = new IntervalPairer();
  const from = opts.from < 1n ? 1n : opts.from;
  let next: bigint;
  try {
    next = await readFeed(fleet, from, opts.timeout, new AbortController().signal, (entries) => {
      for (const e of entries) pairer.add({ fleetSeq: Number(e.fleetSeq), host: e.host, ledgerId: e.ledgerId, line: e.line });
    });
  } catch (e) {
    process.stderr.write(`fleetlet metering intervals: ${address}: ${errorMessage(e)}\n`);
    return 1;
  } finally {
    transport.close();
  }
  const asOf = opts.asOf ?? Date.now();
  const intervals = pairer.finish(asOf).filter((i) => opts.vm === undefined || (i.family !== "snap.storage" && i.id === opts.vm));
  const asOfText = new Date(asOf).toISOString();
  if (opts.output === "json") {
    const doc = {
      as_of: asOfText,
      from_fleet_seq: Number(from),
      next_fleet_seq: Number(next),
      intervals: intervals.map(intervalJson),
      problems: pairer.problems.map((p) => ({ ...(p.fleetSeq !== undefined ? { fleet_seq: p.fleetSeq } : {}), host: p.host, message: p.message })),
    };
    process.stdout.write(`${JSON.stringify(doc, null, 2)}\n`);
  } else {
    const read = next > from ? `fleet_seq ${from}..${next - 1n}` : `no entries from fleet_seq ${from}`;
    process.stdout.write(`${intervalsTable(intervals)}\n\n${intervalsSummary(intervals, Number(from))}; ${read}; open ones as of ${asOfText}\n`);
    for (const p of pairer.problems) {
      process.stderr.write(`fleetlet metering intervals: ${p.fleetSeq !== undefined ? `fleet_seq ${p.fleetSeq} ` : ""}(${p.host}): skipped: ${p.message}\n`);
    }
  }
  return 0;
}
