/**
 * The TCP server of bench/conntrack, run in the benchmark's namespace: listens on 127.0.0.1 on
 * one port per argument (0 = any free port), closes every accepted connection at once (server
 * FIN first, so the client's port is free again without TIME_WAIT on its side), prints
 * {"ports":[...]} and runs until stopped.
 */
import { createServer, type Server } from "node:net";

const wanted = process.argv.slice(2).map(Number);
if (wanted.length === 0 || wanted.some((p) => !Number.isInteger(p) || p < 0 || p > 65535)) {
  process.stderr.write("usage: server.js PORT [PORT...]  (0 = any free port)\n");
  process.exit(2);
}
let accepted = 0;
const listen = (port: number) =>
  new Promise<Server>((resolve, reject) => {
    const server = createServer((socket) => {
      accepted++;
      socket.on("error", () => {});
      socket.end();
    });
    server.on("error", reject);
    server.listen({ port, host: "127.0.0.1", backlog: 4096 }, () => resolve(server));
  });
const servers = await Promise.all(wanted.map(listen));
process.stdout.write(`${JSON.stringify({ ports: servers.map((s) => (s.address() as { port: number }).port) })}\n`);
process.on("SIGTERM", () => {
  process.stderr.write(`server: accepted ${accepted}\n`);
  process.exit(0);
});
