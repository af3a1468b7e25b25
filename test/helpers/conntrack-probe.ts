// Runs inside a network namespace (`ip netns exec NS node conntrack-probe.js [--raw]`): opens
// the agent's ConntrackSocket there, prints one JSON line per dump and event, and exits when its
// stdin closes. With --raw it prints every datagram as hex instead (how the fixtures in
// test/fixtures/conntrack were captured).
import { ConntrackSocket } from "../../agent/kernel/conntrack-socket.js";

const raw = process.argv.includes("--raw");
const socket = new ConntrackSocket({ receiveBufferBytes: 8 << 20 });
const print = (o: unknown) => process.stdout.write(`${JSON.stringify(o)}\n`);
if (raw) socket.on("datagram", (d: Buffer) => print({ datagram: d.toString("hex") }));
else socket.on("flow", (flow) => print({ event: flow }));
socket.on("overflow", () => print({ overflow: socket.counters.overflows }));
socket.on("error", (e: Error) => print({ error: e.message }));
process.stdin.on("data", (d: Buffer) => {
  if (d.toString().includes("dump")) {
    socket.dump().then(
      (flows) => print({ dump: flows }),
      (e: Error) => print({ dumpError: e.message }),
    );
  }
});
process.stdin.on("end", () => {
  socket.close();
  process.exit(0);
});
print({ ready: true, receiveBufferBytes: socket.receiveBufferBytes });
