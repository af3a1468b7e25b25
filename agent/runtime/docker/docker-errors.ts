import { Code, ConnectError } from "@connectrpc/connect";

/**
 * dockerode / socket failures → ConnectError with the code the ContainerRuntime contract
 * promises: the engine unreachable → UNAVAILABLE, no such container → NOT_FOUND, a container in
 * the wrong state for the call (409: not running, already paused) → FAILED_PRECONDITION, the
 * caller's abort → its own reason (DEADLINE_EXCEEDED / CANCELLED from the RPC layer).
 */

/** Socket-level failures: the engine is not there (or went away mid-call). */
const CONNECTION_CODES = new Set(["ECONNREFUSED", "ENOENT", "ECONNRESET", "EPIPE", "EACCES", "ETIMEDOUT", "EHOSTUNREACH", "ENOTFOUND", "ECONNABORTED"]);

interface DockerodeError {
  statusCode?: number;
  code?: string;
  message?: string;
  name?: string;
  json?: { message?: string } | null;
}

/** True when the error says the engine cannot be reached (as opposed to an answer we dislike). */
export function isConnectionError(err: unknown): boolean {
  if (err instanceof ConnectError) return err.code === Code.Unavailable;
  const e = (err ?? {}) as DockerodeError;
  if (e.code !== undefined && CONNECTION_CODES.has(e.code)) return true;
  return typeof e.message === "string" && /socket hang up/.test(e.message);
}

/** The engine's own message ("No such container: x") rather than dockerode's wrapper text. */
export function engineMessage(err: unknown): string {
  const e = (err ?? {}) as DockerodeError;
  const fromEngine = e.json && typeof e.json === "object" ? e.json.message : undefined;
  return (fromEngine || e.message || String(err)).trim();
}

/**
 * The code for an engine failure, the same for every Docker call (logs word their messages
 * differently, not their codes): 404 NOT_FOUND, 409 and 501 FAILED_PRECONDITION (the
 * container's state or setup: "configured logging driver does not support reading"), 400
 * INVALID_ARGUMENT, other answers INTERNAL; no answer: UNAVAILABLE when the engine cannot be
 * reached, CANCELLED for an abort, else UNKNOWN.
 */
export function dockerErrorCode(err: unknown): Code {
  const e = (err ?? {}) as DockerodeError;
  switch (e.statusCode) {
    case 404:
      return Code.NotFound;
    case 409:
    case 501:
      return Code.FailedPrecondition;
    case 400:
      return Code.InvalidArgument;
    case undefined:
      break;
    default:
      return Code.Internal;
  }
  if (isConnectionError(err)) return Code.Unavailable;
  if (e.name === "AbortError") return Code.Canceled;
  return Code.Unknown;
}

export function toConnectError(err: unknown, what: string, signal?: AbortSignal): ConnectError {
  if (err instanceof ConnectError) return err;
  if (signal?.aborted) {
    const reason: unknown = signal.reason;
    return reason instanceof ConnectError ? reason : new ConnectError(`${what}: cancelled`, Code.Canceled);
  }
  const code = dockerErrorCode(err);
  if (code === Code.Unavailable) return new ConnectError(`${what}: docker engine unreachable: ${engineMessage(err)}`, code);
  if (code === Code.Canceled) return new ConnectError(`${what}: cancelled`, code);
  return new ConnectError(`${what}: ${engineMessage(err)}`, code);
}
