import type { PeerCertificate } from "node:tls";
import { createContextKey } from "@connectrpc/connect";

/**
 * The verified client certificate of a call (mTLS). grpc-js hands over a certificate only after
 * the handshake checked it against --tls-ca, so these fields can be trusted by authorisation.
 * `organizationalUnits` carries the role `fleetlet certs client --role` writes (OU=<role>).
 */
export interface PeerCertificateIdentity {
  commonName: string;
  /** subjectAltName entries without their type prefix: DNS names, IPs, URIs, e-mail addresses. */
  subjectAltNames: string[];
  organizationalUnits: string[];
  serialNumber: string;
}

/** What the transport says about a call: TLS or not, and the client certificate if one was shown. */
export interface CallTransportSecurity {
  tls: boolean;
  peerCertificate: PeerCertificateIdentity | undefined;
}

export const CALLER_TRANSPORT = createContextKey<CallTransportSecurity>(
  { tls: false, peerCertificate: undefined },
  { description: "caller's TLS state and verified client certificate" },
);

/** grpc-js's AuthContext (not exported from its index). */
interface GrpcAuthContext {
  transportSecurityType?: string;
  sslPeerCertificate?: PeerCertificate;
}

/**
 * The HTTP/2 session (one client connection) a grpc-js server call arrived on: the handler's call
 * object wraps grpc-js's intercepting calls, the innermost of which holds the stream. Internal
 * to grpc-js 1.14 (pinned); undefined when the shape is not found, and then nothing is cached.
 */
function sessionOf(call: object): object | undefined {
  let c = (call as { call?: unknown }).call;
  for (let depth = 0; depth < 8 && c && typeof c === "object"; depth++) {
    const stream = (c as { stream?: { session?: unknown } }).stream;
    if (stream && typeof stream.session === "object" && stream.session !== null) return stream.session;
    c = (c as { nextCall?: unknown }).nextCall;
  }
  return undefined;
}

// Per connection: a connection's peer certificate cannot change (Node disables TLS renegotiation
// on every HTTP/2 session), and reading it costs grpc-js a getPeerCertificate() per call — 39 µs,
// two thirds of what mTLS added to a unary call (bench/tls). Dropped with the session.
const perSession = new WeakMap<object, CallTransportSecurity>();

/** Reads grpc-js's auth context (TLS: transportSecurityType "ssl" and the peer's certificate), once per connection. */
export function transportSecurityOf(call: { getAuthContext?(): GrpcAuthContext | null }): CallTransportSecurity {
  const session = sessionOf(call);
  const cached = session ? perSession.get(session) : undefined;
  if (cached) return cached;
  const security = readTransportSecurity(call);
  if (session) perSession.set(session, security);
  return security;
}

function readTransportSecurity(call: { getAuthContext?(): GrpcAuthContext | null }): CallTransportSecurity {
  const auth = call.getAuthContext?.() ?? null;
  const tls = auth?.transportSecurityType === "ssl";
  const cert = auth?.sslPeerCertificate;
  // Node gives an empty object when the client showed no certificate.
  if (!tls || !cert?.subject) return Object.freeze({ tls, peerCertificate: undefined });
  const ou = cert.subject.OU;
  return Object.freeze({
    tls,
    peerCertificate: Object.freeze({
      commonName: String(cert.subject.CN ?? ""),
      subjectAltNames: (cert.subjectaltname ?? "")
        .split(",")
        .map((s) => s.trim().replace(/^[A-Za-z ]+:/, ""))
        .filter(Boolean),
      organizationalUnits: ou === undefined ? [] : Array.isArray(ou) ? ou.map(String) : [String(ou)],
      serialNumber: cert.serialNumber ?? "",
    }),
  });
}
