import { setMaxListeners } from "node:events";
import { performance } from "node:perf_hooks";
import { Code, ConnectError } from "@connectrpc/connect";
import { type Context, context, type Span, SpanKind, SpanStatusCode, trace, type Tracer } from "@opentelemetry/api";
import type { HostConnection } from "./hosts/host-connection.js";
import { codeName } from "../lib/rpc/status-codes.js";
import { daemonTracer } from "../lib/otel-tracing.js";
import { mapBounded } from "../lib/worker-pool.js";

export interface HostOutcome<T> {
  host: string;
  /** gRPC code name. */
  code: string;
  message: string;
  latencyMs: number;
  value?: T;
}

export interface FanOutOptions {
  /** Deadline for one host's call. */
  timeoutMsFor: (host: HostConnection) => number;
  /** Calls in flight at once; further hosts wait for a free slot. */
  concurrency: number;
  /** Cancels every outstanding call (the client went away). */
  signal?: AbortSignal;
  /** Names the fan-out's trace span when tracing is on, e.g. "FleetService.ListInstanceStats". */
  operation?: string;
}

/**
 * Calls every host in parallel (bounded) and reports each one: OK with its value, or the gRPC
 * code and message of its failure, with its latency. Never throws for a host's failure: partial
 * results are normal results. A host's deadline starts when its call starts, and a local timer
 * backs up the gRPC deadline so a wedged call can never hold the answer past deadline + a
 * little.
 *
 * With OTLP tracing on (lib/otel-tracing.ts), the fan-out is a span and each host call a child
 * span lasting as long as that host kept the answer waiting, with its code, so a slow host shows
 * in the trace. Without it, no span work at all.
 */
export async function fanOut<T>(
  hosts: HostConnection[],
  call: (host: HostConnection, signal: AbortSignal, timeoutMs: number) => Promise<T>,
  options: FanOutOptions,
): Promise<HostOutcome<T>[]> {
  const tracer = daemonTracer();
  if (!tracer) return fanOutCalls(hosts, call, options, undefined);
  const operation = options.operation ?? "fan-out";
  const parent = tracer.startSpan(operation, { kind: SpanKind.INTERNAL, attributes: { "fleetlet.fan_out.hosts": hosts.length } });
  try {
    const outcomes = await fanOutCalls(hosts, call, options, { tracer, parent: trace.setSpan(context.active(), parent), name: `${operation} host` });
    // Partial results are normal results: the fan-out itself succeeded; the count says how many hosts did not.
    parent.setAttribute("fleetlet.fan_out.failed_hosts", outcomes.filter((o) => o.code !== "OK").length);
    return outcomes;
  } finally {
    parent.end();
  }
}

interface HostSpans {
  tracer: Tracer;
  parent: Context;
  name: string;
}

async function fanOutCalls<T>(
  hosts: HostConnection[],
  call: (host: HostConnection, signal: AbortSignal, timeoutMs: number) => Promise<T>,
  options: FanOutOptions,
  spans: HostSpans | undefined,
): Promise<HostOutcome<T>[]> {
  // One listener on the caller's signal for the whole fan-out; hosts listen on ours (many).
  const all = new AbortController();
  setMaxListeners(0, all.signal);
  const onAbort = () => all.abort(new ConnectError("fan-out cancelled", Code.Canceled));
  if (options.signal?.aborted) onAbort();
  options.signal?.addEventListener("abort", onAbort, { once: true });
  const perHost = { ...options, signal: all.signal };
  try {
    // callOne never throws: every host gets its outcome, in the order of `hosts`.
    return await mapBounded(hosts, options.concurrency, (host) => (spans ? tracedCallOne(host, call, perHost, spans) : callOne(host, call, perHost)));
  } finally {
    options.signal?.removeEventListener("abort", onAbort);
  }
}

/** callOne in a child span of the fan-out's, ended with the host's outcome. */
async function tracedCallOne<T>(
  host: HostConnection,
  call: (host: HostConnection, signal: AbortSignal, timeoutMs: number) => Promise<T>,
  options: FanOutOptions,
  spans: HostSpans,
): Promise<HostOutcome<T>> {
  const span: Span = spans.tracer.startSpan(
    spans.name,
    { kind: SpanKind.CLIENT, attributes: { "fleetlet.host": host.config.name, "server.address": host.config.address } },
    spans.parent,
  );
  const outcome = await callOne(host, call, options);
  span.setAttributes({ "fleetlet.code": outcome.code, "fleetlet.timeout_ms": options.timeoutMsFor(host) });
  if (outcome.code !== "OK") span.setStatus({ code: SpanStatusCode.ERROR, message: `${outcome.code}: ${outcome.message}` });
  span.end();
  return outcome;
}

async function callOne<T>(
  host: HostConnection,
  call: (host: HostConnection, signal: AbortSignal, timeoutMs: number) => Promise<T>,
  options: FanOutOptions,
): Promise<HostOutcome<T>> {
  const timeoutMs = options.timeoutMsFor(host);
  const started = performance.now();
  if (options.signal?.aborted) {
    // Cancelled before this host's turn: not called at all, and not the host's failure.
    return { host: host.config.name, code: "CANCELLED", message: "fan-out cancelled before this host was called", latencyMs: 0 };
  }
  const abort = new AbortController();
  const onParentAbort = () => abort.abort(new ConnectError("fan-out cancelled", Code.Canceled));
  options.signal?.addEventListener("abort", onParentAbort, { once: true });
  let timer: NodeJS.Timeout | undefined;
  const backstop = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      const error = new ConnectError(`no answer within ${timeoutMs} ms`, Code.DeadlineExceeded);
      abort.abort(error);
      reject(error);
    }, timeoutMs + 20);
  });
  const name = host.config.name;
  try {
    const value = await Promise.race([call(host, abort.signal, timeoutMs), backstop]);
    const latencyMs = performance.now() - started;
    host.recordSuccess(Date.now());
    return { host: name, code: "OK", message: "", latencyMs, value };
  } catch (e) {
    const latencyMs = performance.now() - started;
    const error = ConnectError.from(e);
    const code = codeName(error.code);
    let message = error.rawMessage;
    if (error.code === Code.DeadlineExceeded) message = `no answer within ${timeoutMs} ms (${message})`;
    // UNAVAILABLE and DEADLINE_EXCEEDED come from the transport; any other code is the agent's answer.
    const agentAnswered = error.code !== Code.Unavailable && error.code !== Code.DeadlineExceeded && error.code !== Code.Canceled;
    // Our own cancellation says nothing about the host.
    if (error.code !== Code.Canceled) host.recordFailure(code, message, agentAnswered, Date.now());
    return { host: name, code, message, latencyMs };
  } finally {
    clearTimeout(timer);
    options.signal?.removeEventListener("abort", onParentAbort);
  }
}
