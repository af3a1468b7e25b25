import * as https from "node:https";
import type { IncomingMessage, ServerResponse } from "node:http";
import { CheckedCertificateFiles, TLS_HANDSHAKE_TIMEOUT_MS, type TlsFiles } from "./tls-credentials.js";

/**
 * An HTTPS server (the Prometheus endpoint off loopback) with the daemon's --tls-* files: the
 * same checked, reloaded pair and CA as its gRPC port (tls-credentials.ts), so one rotation
 * covers both. With a CA, scrapers must present a certificate chaining to it (Prometheus
 * `tls_config: {cert_file, key_file}`). `stop()` ends the file watching.
 */
export function createReloadingHttpsServer(
  files: TlsFiles,
  handler: (req: IncomingMessage, res: ServerResponse) => void,
  onRejected?: (problem: string) => void,
): { server: https.Server; stop(): void } {
  if (files.certFile === undefined) throw new Error("an HTTPS endpoint needs --tls-cert and --tls-key");
  const checked = new CheckedCertificateFiles(files, onRejected);
  const context = () => {
    const identity = checked.currentIdentity!;
    const ca = checked.currentCa;
    return { cert: identity.certificate, key: identity.privateKey, ...(ca ? { ca: ca.caCertificate } : {}) };
  };
  const requireClientCertificate = files.caFile !== undefined;
  const server = https.createServer({ ...context(), minVersion: "TLSv1.2", handshakeTimeout: TLS_HANDSHAKE_TIMEOUT_MS, requestCert: requireClientCertificate, rejectUnauthorized: requireClientCertificate }, handler);
  // Whichever file changed, the whole context is rebuilt from the last good pair and CA.
  const update = () => server.setSecureContext(context());
  checked.addIdentityCertificateListener(update);
  if (requireClientCertificate) checked.addCaCertificateListener(update);
  return {
    server,
    stop() {
      checked.removeIdentityCertificateListener(update);
      checked.removeCaCertificateListener(update);
    },
  };
}
