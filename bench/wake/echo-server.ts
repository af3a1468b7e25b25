/**
 * The instance of bench/wake, run in the instance namespace: a TCP echo server on IP:PORT.
 * Prints {"listening":true} once it accepts connections; runs until stopped.
 */
import { createServer } from "node:net";

const [ip, portText] = process.argv.slice(2);
const port = Number(portText);
if (!ip || !(port > 0 && port < 65536)) {
  process.stderr.write("usage: echo-server.js IP PORT\n");
  process.exit(2);
}
const server = createServer((socket) => {
  socket.on("error", () => {});
  socket.pipe(socket);
});
server.listen({ port, host: ip }, () => process.stdout.write(`${JSON.stringify({ listening: true })}\n`));
