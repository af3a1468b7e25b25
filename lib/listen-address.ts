/**
 * A host:port to listen on or dial. IPv6 hosts are written in brackets ([::1]:7701).
 * `grpcTarget` is what grpc-js binds; `hostForClients` is the host to tell clients, with the
 * wildcard replaced by loopback.
 */
export interface ListenAddress {
  host: string;
  port: number;
  grpcTarget: string;
  hostForClients: string;
}

/** Parses "host:port"; throws an Error whose message says what is wrong (callers add the flag). */
export function parseHostPort(value: string): ListenAddress {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/.exec(value);
  if (!m) throw new Error(`${JSON.stringify(value)} is not host:port`);
  const host = m[1] ?? m[2] ?? "";
  const port = Number(m[3]);
  if (port > 65535) throw new Error(`port ${port} is out of range 0-65535`);
  const bracketed = host.includes(":") ? `[${host}]` : host;
  const forClients = host === "0.0.0.0" ? "127.0.0.1" : host === "::" ? "[::1]" : bracketed;
  return { host, port, grpcTarget: `${bracketed}:${port}`, hostForClients: forClients };
}
