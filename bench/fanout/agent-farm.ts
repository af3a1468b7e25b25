/**
 * Many agents in one process, so a 2-core machine can host hundreds of agent servers:
 * `agent-farm.js COUNT INSTANCES DIR` starts COUNT agents (startAgent, port 0, own state dir,
 * no metrics endpoint, silent), each with INSTANCES synthetic RUNNING instances without a pid
 * (cheap to measure: the fan-out, not /proc, is under test), prints
 * {"msg":"farm serving","addresses":[...]} and runs until SIGTERM or stdin closes.
 */
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { InstanceSchema, InstanceState } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { startAgent, type RunningAgent } from "../../agent/agent-daemon.js";
import { validateInstance } from "../../agent/inventory/instance-validation.js";
import { parseHostPort } from "../../lib/listen-address.js";
import { createLogger } from "../../lib/rpc/logger.js";

const [count, instances, dir] = [Number(process.argv[2]), Number(process.argv[3]), process.argv[4]];
if (!(count > 0) || !(instances >= 0) || !dir) {
  process.stderr.write("usage: agent-farm.js COUNT INSTANCES DIR\n");
  process.exit(2);
}

const logger = createLogger("bench-farm", "silent");
const agents: RunningAgent[] = [];
let stopping = false;
const stop = async () => {
  if (stopping) return;
  stopping = true;
  setTimeout(() => process.exit(1), 5000).unref();
  await Promise.all(agents.map((a) => a.close()));
  process.exit(0);
};
process.on("SIGTERM", () => void stop());
process.stdin.on("end", () => void stop());
process.stdin.resume();

for (let i = 0; i < count; i++) {
  const agent = await startAgent({
    listen: parseHostPort("127.0.0.1:0"),
    stateDir: join(dir, `agent-${i}`),
    metricsListen: undefined,
    tapPrefix: "fl-",
    metricsLabelBudget: 200,
    logger,
    // Hundreds of agents in one process: no conntrack sockets each (the fan-out is measured).
    standby: false,
  });
  agents.push(agent);
  await Promise.all(
    Array.from({ length: instances }, (_, j) =>
      agent.registry.upsert(
        validateInstance(
          create(InstanceSchema, {
            id: `vm-${j}`,
            name: `farm-${i}-${j}`,
            state: InstanceState.RUNNING,
            allocatedVcpus: 2,
            allocatedMemoryBytes: 1n << 30n,
          }),
          { tapPrefix: "fl-" },
        ),
      ),
    ),
  );
}
process.stdout.write(`${JSON.stringify({ msg: "farm serving", addresses: agents.map((a) => a.address) })}\n`);
