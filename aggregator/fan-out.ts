import { setMaxListeners } from "node:events";
import { performance } from "node:perf_hooks";
import { Code, ConnectError } from "@connectrpc/connect";
import type { HostConnection } from "./hosts/host-connection.js";
import { codeName } from "../lib/rpc/status-codes.js";
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
}

/**
 * Calls every host in parallel (bounded) and reports each one: OK with its value, or the gRPC
 * code and message of its failure, with its latency. Never throws for a host's failure: partial
 * results are normal results. A host's deadline starts when its call starts, and a local timer
 * backs up the gRPC deadline so a wedged call can never hold the answer past deadline + a
 * little.
 */
export async function fanOut<T>(
  hosts: HostConnection[],
  call: (host: HostConnection, signal: AbortSignal, timeoutMs: number) => Promise<T>,
  options: FanOutOptions,
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
    return await mapBounded(hosts, options.concurrency, (host) => callOne(host, call, perHost));
  } finally {
    options.signal?.removeEventListener("abort", onAbort);
  }
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
