import { isIP } from "node:net";
import type { ListenAddress } from "../listen-address.js";

/**
 * True only for addresses nobody off this machine can reach: 127.0.0.0/8, ::1 and "localhost".
 * Anything else (0.0.0.0, ::, a host name that might resolve anywhere) counts as off-box.
 */
export function isLoopbackHost(host: string): boolean {
  if (host === "localhost") return true;
  if (isIP(host) === 4) return host.startsWith("127.");
  if (isIP(host) === 6) return host === "::1" || /^::ffff:127\./i.test(host);
  return false;
}

/**
 * security.md "No silent plaintext off-box": a plaintext listener on a non-loopback address is
 * refused (the returned error line) unless --insecure was given, which gives a warning instead.
 */
export function plaintextBindProblem(
  listen: ListenAddress,
  flag: string,
  insecure: boolean,
): { refuse?: string; warn?: string } {
  if (isLoopbackHost(listen.host)) return {};
  if (!insecure) {
    return { refuse: `${flag} ${listen.grpcTarget} is not a loopback address: give --tls-cert and --tls-key (see \`fleetlet certs\`), or --insecure to serve plaintext anyway` };
  }
  return { warn: `${flag} ${listen.grpcTarget}: serving PLAINTEXT gRPC off loopback (--insecure): anyone who reaches this port can call it` };
}
