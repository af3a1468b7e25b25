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

/** Reads grpc-js's auth context (TLS: transportSecurityType "ssl" and the peer's certificate). */
export function transportSecurityOf(call: { getAuthContext?(): GrpcAuthContext | null }): CallTransportSecurity {
  const auth = call.getAuthContext?.() ?? null;
  const tls = auth?.transportSecurityType === "ssl";
  const cert = auth?.sslPeerCertificate;
  // Node gives an empty object when the client showed no certificate.
  if (!tls || !cert?.subject) return { tls, peerCertificate: undefined };
  const ou = cert.subject.OU;
  return {
    tls,
    peerCertificate: {
      commonName: String(cert.subject.CN ?? ""),
      subjectAltNames: (cert.subjectaltname ?? "")
        .split(",")
        .map((s) => s.trim().replace(/^[A-Za-z ]+:/, ""))
        .filter(Boolean),
      organizationalUnits: ou === undefined ? [] : Array.isArray(ou) ? ou.map(String) : [String(ou)],
      serialNumber: cert.serialNumber ?? "",
    },
  };
}
