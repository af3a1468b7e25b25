import { createContextKey } from "@connectrpc/connect";
import { peerAddress } from "../stream-slots.js";
import type { Role } from "./role-table.js";

/**
 * Who is calling. `via` says how it was established: a bearer token from the tokens file, a
 * client certificate (its SAN/CN; the TLS listener fills this in), or "local" — the development
 * default with no tokens file and no TLS, where the daemons listen on loopback only.
 */
export interface Identity {
  name: string;
  via: "token" | "certificate" | "local";
  role: Role;
}

/** Every caller when no tokens file (nor TLS client authentication) is configured. */
export const LOCAL_ADMIN: Identity = Object.freeze({ name: "local", via: "local", role: "admin" });

/** The authorised identity of a call, set by the authorisation interceptor for handlers to read. */
export const CALLER_IDENTITY = createContextKey<Identity | undefined>(undefined, { description: "authorised caller" });

/**
 * Metadata header the aggregator sets on calls it makes for a caller (routed logs, ...): the
 * agent authorises by the aggregator's own identity and records this name next to it.
 */
export const ON_BEHALF_OF_HEADER = "x-fleetlet-on-behalf-of";

/** "alice" or "aggregator (for alice)" — how logs and stored records name a caller. */
export function describeCaller(identity: Identity, onBehalfOf?: string): string {
  return onBehalfOf ? `${identity.name} (for ${onBehalfOf})` : identity.name;
}

/**
 * Whose share a call counts against for per-client limits (open streams, mutating-call rate): an
 * authenticated caller by identity, wherever it connects from (many addresses do not buy more);
 * with no credentials configured ("local"), by the client's address, the only thing known.
 */
export function limitKey(identity: Identity | undefined, peer: string): string {
  return identity && identity.via !== "local" ? `${identity.via} ${identity.name}` : peerAddress(peer);
}
