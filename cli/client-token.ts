import type { GrpcJsTransportOptions } from "../lib/rpc/grpc-transport.js";
import { bearerTokenChannelOptions } from "../lib/rpc/authz/call-credentials.js";
import { clientTlsCredentials } from "./client-tls.js";

// Set once from `--token` / FLEETLET_TOKEN before a subcommand runs (cli/main.ts).
let token: string | undefined;

export function setClientToken(value: string | undefined): void {
  token = value === "" ? undefined : value;
}

/**
 * What the CLI's clients dial with: TLS when --tls-* were given (cli/client-tls.ts), and the
 * bearer token, when one was given, on every call. Daemons without --tokens-file ignore the
 * token, so passing it to a development set-up is harmless.
 */
export function clientTransportOptions(): GrpcJsTransportOptions {
  return { credentials: clientTlsCredentials(), channelOptions: bearerTokenChannelOptions(token) };
}
