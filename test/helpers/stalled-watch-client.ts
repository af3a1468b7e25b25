/**
 * A client that opens many server streams and never reads them, in a process of its own so a
 * test can kill it for real. Run as `node dist/test/helpers/stalled-watch-client.js ADDRESS
 * PATH STREAMS SESSIONS`: opens STREAMS calls of PATH (an empty request message) spread over
 * SESSIONS HTTP/2 connections, pauses every one, prints {"opened": N, "withHeaders": M} once
 * each call got its response headers (or after 60 s), then stays until killed.
 */
import http2 from "node:http2";
import { reportSync } from "./sync-report.js";

const [address, path, streamsText, sessionsText] = process.argv.slice(2);
const streams = Number(streamsText);
const sessions = Number(sessionsText);
if (!address || !path || !(streams > 0) || !(sessions > 0)) {
  process.stderr.write("usage: stalled-watch-client ADDRESS PATH STREAMS SESSIONS\n");
  process.exit(2);
}

const emptyMessage = Buffer.alloc(5);
let withHeaders = 0;
let opened = 0;
const all: Promise<void>[] = [];
for (let s = 0; s < sessions; s++) {
  const session = http2.connect(`http://${address}`);
  session.on("error", () => undefined);
  const share = Math.floor(streams / sessions) + (s < streams % sessions ? 1 : 0);
  for (let k = 0; k < share; k++) {
    const stream = session.request({ ":method": "POST", ":path": path, "content-type": "application/grpc", te: "trailers" });
    stream.on("error", () => undefined);
    stream.end(emptyMessage);
    // Never read: the stream stays paused, so its flow-control window is never given back.
    stream.pause();
    opened++;
    all.push(
      new Promise<void>((resolve) => {
        stream.once("response", () => {
          withHeaders++;
          resolve();
        });
        stream.once("close", () => resolve());
      }),
    );
  }
}
const timeout = new Promise<void>((resolve) => setTimeout(resolve, 60_000).unref());
await Promise.race([Promise.all(all), timeout]);
reportSync(JSON.stringify({ opened, withHeaders }));
// Stay, holding every stream, until killed.
setInterval(() => undefined, 1 << 30);
