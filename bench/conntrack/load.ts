/**
 * The load generator of bench/conntrack, run in the benchmark's namespace: N short TCP
 * connections to 127.0.0.1:PORT, CONCURRENCY in flight, each opened and then closed when the
 * server closes it; with RATE, connection starts are paced to RATE per second, else as fast as
 * it can. Prints one JSON line: connections made (connect succeeded), errors, wall time.
 * Bounded: exactly N attempts, and a connection that takes longer than 10 s is dropped.
 */
import { connect } from "node:net";

const [port, n, concurrency, rate] = process.argv.slice(2).map(Number);
if (!port || !n || !concurrency || (rate !== undefined && !(rate > 0))) {
  process.stderr.write("usage: load.js PORT N CONCURRENCY [RATE/s]\n");
  process.exit(2);
}
let started = 0;
let finished = 0;
let made = 0;
let errors = 0;
let firstError: string | undefined;
const t0 = performance.now();

function one(): void {
  if (started >= n!) return;
  if (rate !== undefined) {
    const due = t0 + (started * 1000) / rate;
    const now = performance.now();
    if (now < due) {
      setTimeout(one, Math.max(1, due - now));
      return;
    }
  }
  started++;
  let connected = false;
  let done = false;
  const socket = connect({ port: port!, host: "127.0.0.1" });
  const finish = () => {
    if (done) return;
    done = true;
    clearTimeout(timer);
    finished++;
    if (finished === n) report();
    else one();
  };
  const timer = setTimeout(() => {
    errors++;
    firstError ??= "timeout after 10 s";
    socket.destroy();
    finish();
  }, 10_000);
  socket.on("connect", () => {
    connected = true;
    made++;
  });
  socket.on("error", (e: NodeJS.ErrnoException) => {
    if (!connected) errors++;
    firstError ??= e.code ?? e.message;
  });
  socket.on("close", finish);
  socket.resume(); // read the server's FIN; allowHalfOpen=false then ends our side
}

function report(): void {
  const ms = performance.now() - t0;
  const startedAt = performance.timeOrigin + t0;
  process.stdout.write(`${JSON.stringify({ made, errors, firstError, ms, startedAt, endedAt: startedAt + ms })}\n`);
  process.exit(0);
}

for (let i = 0; i < concurrency!; i++) one();
