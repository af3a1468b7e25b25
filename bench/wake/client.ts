/**
 * The client of bench/wake, run in the host namespace: one TCP connection to IP:PORT, one byte
 * sent as soon as it is connected, timed from just before connect() to the first byte back
 * (and to the connect, which the kernel completes even while the server is stopped or frozen).
 * Prints {"ms", "connectMs"} or {"error"}; bounded by TIMEOUT_MS.
 */
import { connect } from "node:net";

const [ip, portText, timeoutText] = process.argv.slice(2);
const port = Number(portText);
const timeoutMs = Number(timeoutText ?? 10_000);
if (!ip || !(port > 0 && port < 65536) || !(timeoutMs > 0)) {
  process.stderr.write("usage: client.js IP PORT [TIMEOUT_MS]\n");
  process.exit(2);
}
const done = (o: Record<string, unknown>, code: number) => {
  process.stdout.write(`${JSON.stringify(o)}\n`);
  process.exit(code);
};
const timer = setTimeout(() => done({ error: `no echo within ${timeoutMs} ms` }, 1), timeoutMs);
let connectMs: number | undefined;
const t0 = performance.now();
const socket = connect({ port, host: ip, noDelay: true });
socket.on("connect", () => {
  connectMs = performance.now() - t0;
  socket.write("x");
});
socket.once("data", (d: Buffer) => {
  const ms = performance.now() - t0;
  clearTimeout(timer);
  socket.destroy();
  if (d.toString() !== "x") done({ error: `echo was ${JSON.stringify(d.toString())}` }, 1);
  else done({ ms, connectMs }, 0);
});
socket.on("error", (e: NodeJS.ErrnoException) => done({ error: e.code ?? e.message }, 1));
