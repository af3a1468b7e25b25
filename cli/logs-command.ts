import { Command, Option } from "commander";
import { createClient } from "@connectrpc/connect";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { LogEndReason, LogStream, RuntimeService, type LogLine } from "../gen/fleetlet/agent/v1/runtime_pb.js";
import { FleetService } from "../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { createGrpcJsTransport } from "../lib/rpc/grpc-transport.js";
import { parse } from "./options.js";

interface LogsOptions {
  aggregator?: string;
  agent?: string;
  runtime: string;
  follow: boolean;
  tail: number;
  timestamps: boolean;
  container: string;
}

/**
 * `fleetlet logs HOST/CONTAINER` through the aggregator (routed to the host), or
 * `fleetlet logs --agent ADDR CONTAINER` from one agent. CONTAINER is a Docker id, id prefix or
 * name, or NAMESPACE/POD for Kubernetes. stdout lines go to stdout and stderr lines to stderr,
 * as `docker logs` does; pieces of a split long line are joined again.
 */
export function logsCommand(): Command {
  return new Command("logs")
    .description("a container's logs: HOST/CONTAINER via the aggregator, or CONTAINER with --agent")
    .argument("<target>", "HOST/CONTAINER (aggregator) or CONTAINER (--agent)")
    .option("--aggregator <host:port>", "aggregator to ask (default 127.0.0.1:7700)")
    .option("--agent <host:port>", "ask one agent directly")
    .addOption(new Option("--runtime <name>", "docker or kubernetes (needed when the host has both)").default(""))
    .option("-f, --follow", "keep streaming new lines until the container exits", false)
    .addOption(new Option("--tail <n>", "only the last N lines (0 = all)").default(0).argParser(parse.nonNegativeInt))
    .option("-t, --timestamps", "prefix each line with the time the engine recorded it", false)
    .addOption(new Option("-c, --container <name>", "Kubernetes: container of the pod").default(""))
    .action(async (target: string, opts: LogsOptions, command: Command) => {
      if (opts.agent && opts.aggregator) command.error("error: give --agent or --aggregator, not both", { exitCode: 2 });
      let host = "";
      let externalId = target;
      if (!opts.agent) {
        const slash = target.indexOf("/");
        if (slash <= 0 || slash === target.length - 1) command.error(`error: expected HOST/CONTAINER, got ${JSON.stringify(target)} (or use --agent ADDR CONTAINER)`, { exitCode: 2 });
        host = target.slice(0, slash);
        externalId = target.slice(slash + 1);
      }
      const address = opts.agent ?? opts.aggregator ?? "127.0.0.1:7700";
      try {
        parse.address(address);
      } catch (e) {
        command.error(`error: ${opts.agent ? "--agent" : "--aggregator"}: ${(e as Error).message}`, { exitCode: 2 });
      }
      const transport = createGrpcJsTransport(address);
      const abort = new AbortController();
      const onSignal = () => abort.abort();
      process.once("SIGINT", onSignal);
      const request = { runtime: opts.runtime, externalId, tail: opts.tail, timestamps: opts.timestamps, container: opts.container, follow: opts.follow };
      try {
        const stream = opts.agent
          ? createClient(RuntimeService, transport).streamContainerLogs(request, { signal: abort.signal })
          : createClient(FleetService, transport).streamContainerLogs({ host, ...request }, { signal: abort.signal });
        for await (const m of stream) {
          for (const line of m.lines) write(line, opts.timestamps);
          for (const e of m.errors) process.stderr.write(`fleetlet logs: runtime: ${e}\n`);
          if (m.endReason !== LogEndReason.UNSPECIFIED && m.endReason !== LogEndReason.END_OF_LOG) {
            const why = (LogEndReason[m.endReason] ?? "").toLowerCase().replace(/_/g, " ");
            process.stderr.write(`fleetlet logs: stream ended: ${why}${m.endDetail ? `: ${m.endDetail}` : ""}\n`);
            if (m.endReason === LogEndReason.RUNTIME_ERROR) process.exitCode = 1;
          }
        }
      } catch (e) {
        if (!abort.signal.aborted) {
          process.stderr.write(`fleetlet logs: ${address}: ${(e as Error).message}\n`);
          process.exitCode = 1;
        }
      } finally {
        process.off("SIGINT", onSignal);
        transport.close();
      }
    });
}

/** Pieces of one long line (continued) are written without a newline between them. */
let midLine = false;
function write(line: LogLine, timestamps: boolean): void {
  const out = line.stream === LogStream.STDERR ? process.stderr : process.stdout;
  const prefix = timestamps && !midLine && line.timestamp ? `${timestampDate(line.timestamp).toISOString()} ` : "";
  const body = line.raw.length > 0 ? Buffer.from(line.raw) : line.text;
  out.write(prefix);
  out.write(body);
  if (!line.continued && !line.unterminated) out.write("\n");
  midLine = line.continued;
}
