import { Code, ConnectError } from "@connectrpc/connect";
import { errorMessage } from "../lib/error-message.js";

/**
 * A failed call as an operator wants to read it: which daemon, at which address, and what to do
 * — "aggregator 127.0.0.1:7700: connection refused — is the aggregator running?" — rather than
 * grpc-js's "No connection established. Last error: Error: connect ECONNREFUSED ... Resolution
 * note:". Anything else keeps its message.
 */
export function describeCallError(e: unknown, role: "agent" | "aggregator", address: string): string {
  const err = ConnectError.from(e);
  const raw = err.rawMessage;
  if (err.code === Code.Unavailable && /ECONNREFUSED/.test(raw)) return `${role} ${address}: connection refused — is the ${role} running (and listening there)?`;
  if (err.code === Code.Unavailable && /ENOTFOUND|EAI_AGAIN|Name resolution failed/i.test(raw)) return `${role} ${address}: no such host`;
  if (err.code === Code.Unavailable && /ETIMEDOUT|EHOSTUNREACH|ENETUNREACH/.test(raw)) return `${role} ${address}: unreachable (${/E[A-Z]+/.exec(raw)?.[0]})`;
  if (err.code === Code.DeadlineExceeded) return `${role} ${address}: no answer within the deadline (--timeout)`;
  return `${role} ${address}: ${errorMessage(e)}`;
}

/** Whether the call failed before reaching the daemon at all (its connection, not its answer). */
export function notReached(e: unknown): boolean {
  const err = ConnectError.from(e);
  return err.code === Code.Unavailable && /No connection established|ECONNREFUSED|ENOTFOUND|EAI_AGAIN|ETIMEDOUT|EHOSTUNREACH|ENETUNREACH/.test(err.rawMessage);
}
