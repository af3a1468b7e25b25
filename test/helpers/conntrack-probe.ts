// Runs inside a network namespace (`ip netns exec NS node conntrack-probe.js [--raw]`): opens
// the agent's conntrack source there (the reader process and our decoder), prints one JSON line
// per dump and event, and exits when its stdin closes. With --raw it prints every datagram as
// hex instead (how the fixtures in test/fixtures/conntrack were captured); --rcvbuf N sets the
// event socket's receive buffer.
import { ConntrackProcessSource } from "../../agent/kernel/conntrack-process-source.js";

const raw = process.argv.includes("--raw");
const rcvbufArg = process.argv.indexOf("--rcvbuf");
const source = new ConntrackProcessSource({ receiveBufferBytes: rcvbufArg > 0 ? Number(process.argv[rcvbufArg + 1]) : 8 << 20 });
const print = (o: unknown) => process.stdout.write(`${JSON.stringify(o)}\n`);
if (raw) source.on("datagram", (d: Buffer) => print({ datagram: d.toString("hex") }));
else source.on("flow", (flow) => print({ event: flow }));
source.on("overflow", () => print({ overflow: source.counters.overflows }));
source.on("error", (e: Error) => print({ error: e.message }));
process.stdin.on("data", (d: Buffer) => {
  if (d.toString().includes("dump")) {
    source.dump().then(
      (flows) => print({ dump: flows }),
      (e: Error) => print({ dumpError: e.message }),
    );
  }
});
process.stdin.on("end", () => {
  source.close();
  process.exit(0);
});
source.start().then(
  () => print({ ready: true, receiveBufferBytes: source.receiveBufferBytes, readerPid: source.readerPid }),
  (e: Error) => {
    print({ startError: e.message });
    process.exit(1);
  },
);
