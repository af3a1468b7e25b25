// Runs inside the demo's host namespace (`ip netns exec fl-demo-host-<pid> node
// demo-host-process.js '<json>'`), started by `fleetlet up --demo-network`:
// - forwards each unix socket of `forwards` to a port on this namespace's loopback (the agent's
//   gRPC and metrics ports), the inner half of the path from the root namespace to the agent;
// - sends each demo of `traffic` its bytes every `intervalMs` from this namespace, so the traffic
//   crosses the demo's veth and the conntrack of the namespace the agent watches.
// Prints "ready" once listening; exits when its stdin closes (its `up` stopped or died).
import { pokeDemo } from "./demo-network.js";
import { startForwarder } from "./socket-forwarder.js";

export interface DemoHostProcessConfig {
  forwards: { path: string; port: number }[];
  traffic: { ip: string; bytes: number }[];
  intervalMs: number;
}

const config = JSON.parse(process.argv[2] ?? "") as DemoHostProcessConfig;
process.stdin.on("end", () => process.exit(0));
process.stdin.resume();
Promise.all(config.forwards.map((f) => startForwarder({ path: f.path }, { host: "127.0.0.1", port: f.port }))).then(
  () => {
    process.stdout.write("ready\n");
    const send = () => {
      for (const t of config.traffic) void pokeDemo(t.ip, t.bytes);
    };
    send();
    setInterval(send, config.intervalMs);
  },
  (e: Error) => {
    process.stderr.write(`demo host process: ${e.message}\n`);
    process.exit(1);
  },
);
