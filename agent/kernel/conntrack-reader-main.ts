// The conntrack reader as a process of its own (spawned by ConntrackProcessSource): the
// `netlink` package's native code aborts the whole process on some socket overflows (an
// EPOLLERR makes its poll handler throw from C++; see docs/benchmarks.md "What P4/P5 found"),
// so the agent keeps it at arm's length and treats a dead reader as lost events: respawn,
// resync. Protocol on stdout, one line each: "F<kind>,<srcIp>,<srcPort>,<dstIp>,<dstPort>,
// <tcpState>,<id>" for a flow event, "O" for an overflow, "D<seq>,<json flows>" or
// "X<seq>,<message>" for a dump answer, "R<receive buffer bytes>" once ready, "E<message>" for
// a socket error. On stdin: "<seq>" asks for a dump.
import { createInterface } from "node:readline";
import { ConntrackSocket } from "./conntrack-socket.js";

const out: string[] = [];
let scheduled = false;
const write = (line: string) => {
  out.push(line);
  if (scheduled) return;
  scheduled = true;
  setImmediate(() => {
    scheduled = false;
    process.stdout.write(`${out.join("\n")}\n`);
    out.length = 0;
  });
};

let socket: ConntrackSocket;
try {
  socket = new ConntrackSocket({ dropNewEvents: process.env.FLEETLET_FAULT_DROP_CONNTRACK_NEW === "1" });
} catch (e) {
  process.stderr.write(`${(e as Error).message}\n`);
  process.exit(3);
}
socket.on("flow", (f) => write(`F${f.kind === "new" ? "n" : "d"},${f.srcIp},${f.srcPort},${f.dstIp},${f.dstPort},${f.tcpState},${f.id ?? ""}`));
socket.on("overflow", () => write("O"));
socket.on("error", (e: Error) => write(`E${e.message.replace(/\n/g, " ")}`));
createInterface({ input: process.stdin }).on("line", (line) => {
  const seq = line.trim();
  socket.dump().then(
    (flows) => write(`D${seq},${JSON.stringify(flows)}`),
    (e: Error) => write(`X${seq},${e.message.replace(/\n/g, " ")}`),
  );
});
process.stdin.on("end", () => {
  socket.close();
  process.exit(0);
});
write(`R${socket.receiveBufferBytes}`);
