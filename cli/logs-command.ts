import { Command, Option } from "commander";
import { createClient } from "@connectrpc/connect";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { LogEndReason, LogStream, RuntimeService, type LogLine } from "../gen/fleetlet/agent/v1/runtime_pb.js";
import { FleetService } from "../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { createGrpcJsTransport } from "../lib/rpc/grpc-transport.js";
import { clientTransportOptions } from "./client-token.js";
import { parse } from "./options.js";
import { describeCallError, notReached } from "./call-errors.js";
import { errorMessage } from "../lib/error-message.js";

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
        command.error(`error: ${opts.agent ? "--agent" : "--aggregator"}: ${errorMessage(e)}`, { exitCode: 2 });
      }
      const transport = createGrpcJsTransport(address, clientTransportOptions());
      const abort = new AbortController();
      const onSignal = () => abort.abort();
      process.once("SIGINT", onSignal);
      const request = { runtime: opts.runtime, externalId, tail: opts.tail, timestamps: opts.timestamps, container: opts.container, follow: opts.follow };
      // `fleetlet logs -f x | head`: the reader went away; stop quietly, like docker logs.
      process.stdout.on("error", (e: NodeJS.ErrnoException) => {
        if (e.code === "EPIPE") abort.abort();
      });
      try {
        const stream = opts.agent
          ? createClient(RuntimeService, transport).streamContainerLogs(request, { signal: abort.signal })
          : createClient(FleetService, transport).streamContainerLogs({ host, ...request }, { signal: abort.signal });
        for await (const m of stream) {
          for (const line of m.lines) await write(line, opts.timestamps);
          for (const e of m.errors) process.stderr.write(`fleetlet logs: runtime: ${e}\n`);
          if (m.endReason !== LogEndReason.UNSPECIFIED && m.endReason !== LogEndReason.END_OF_LOG) {
            const why = (LogEndReason[m.endReason] ?? "").toLowerCase().replace(/_/g, " ");
            process.stderr.write(`fleetlet logs: stream ended: ${why}${m.endDetail ? `: ${m.endDetail}` : ""}\n`);
            if (m.endReason === LogEndReason.RUNTIME_ERROR) process.exitCode = 1;
          }
        }
      } catch (e) {
        if (!abort.signal.aborted) {
          // Through the aggregator, an answer that came back is about the host and container
          // (named by the target); only a connection that failed is about the aggregator.
          const why = opts.agent ? describeCallError(e, "agent", address) : notReached(e) ? describeCallError(e, "aggregator", address) : errorMessage(e);
          process.stderr.write(`fleetlet logs ${target}: ${why}\n`);
          process.exitCode = 1;
        }
      } finally {
        process.off("SIGINT", onSignal);
        transport.close();
      }
    });
}

/** Per stream: inside a long line whose pieces (continued) are written without newlines. */
const midLine = new Map<LogStream, boolean>();

async function write(line: LogLine, timestamps: boolean): Promise<void> {
  const out = line.stream === LogStream.STDERR ? process.stderr : process.stdout;
  const prefix = timestamps && !midLine.get(line.stream) && line.timestamp ? `${formatTimestamp(line.timestamp)} ` : "";
  const body = line.raw.length > 0 ? Buffer.from(line.raw) : line.text;
  const ok = out.write(Buffer.concat([Buffer.from(prefix), Buffer.from(body), Buffer.from(!line.continued && !line.unterminated ? "\n" : "")]));
  midLine.set(line.stream, line.continued);
  // A slow terminal or pipe: wait instead of buffering the whole stream in memory.
  if (!ok && !out.destroyed) await new Promise<void>((resolve) => {
    out.once("drain", resolve);
    out.once("error", () => resolve());
  });
}

/** RFC 3339 with the engine's nanoseconds (Date would cut them to milliseconds). */
function formatTimestamp(t: Timestamp): string {
  const iso = new Date(Number(t.seconds) * 1000).toISOString().slice(0, 19);
  return `${iso}.${String(t.nanos).padStart(9, "0")}Z`;
}
