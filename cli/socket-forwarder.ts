import net from "node:net";

export interface Forwarder {
  /** Where it listens (the bound port when asked for port 0). */
  address: net.AddressInfo | string;
  /** Stops accepting and drops the connections still open (closing alone would wait for them). */
  close(): Promise<void>;
}

/**
 * A byte-for-byte stream forwarder: each connection accepted on `listen` is piped both ways to a
 * new connection to `target`. `fleetlet up --demo-network` chains two of them to reach the agent
 * it runs inside its host namespace without any interface in the root namespace: a TCP port on
 * the root namespace's loopback → a unix socket (file system, so shared across namespaces) → a
 * process in the host namespace → the agent's port on that namespace's loopback.
 */
export function startForwarder(listen: net.ListenOptions, target: net.NetConnectOpts): Promise<Forwarder> {
  const open = new Set<net.Socket>();
  // Half-open on both sides: a peer's FIN is passed on (pipe ends the other side) while the
  // answer still flows back; each side is torn down only when it is closed both ways or fails.
  const server = net.createServer({ allowHalfOpen: true }, (client) => {
    const upstream = net.connect({ ...target, allowHalfOpen: true });
    open.add(client).add(upstream);
    const close = () => {
      client.destroy();
      upstream.destroy();
      open.delete(client);
      open.delete(upstream);
    };
    client.on("error", close).on("close", close);
    upstream.on("error", close).on("close", close);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(listen, () => {
      server.off("error", reject);
      resolve({
        address: server.address()!,
        close: () =>
          new Promise<void>((done) => {
            server.close(() => done());
            for (const s of open) s.destroy();
          }),
      });
    });
  });
}
