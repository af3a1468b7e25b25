/**
 * Many agents in one process, so a 2-core machine can host hundreds of agent servers:
 * `agent-farm.js COUNT INSTANCES DIR [--tls-cert F --tls-key F --tls-ca F]` starts COUNT agents
 * (startAgent, port 0, own state dir, no metrics endpoint, silent), each with INSTANCES synthetic
 * RUNNING instances without a pid (cheap to measure: the fan-out, not /proc, is under test),
 * prints {"msg":"farm serving","addresses":[...]} and runs until SIGTERM or stdin closes.
 * With the --tls-* files every agent serves them as `fleetlet agent --tls-*` does (its own
 * listener and credentials, so each connection is a TLS handshake of its own; bench/tls).
 */
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { create } from "@bufbuild/protobuf";
import { InstanceSchema, InstanceState } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { startAgent, type RunningAgent } from "../../agent/agent-daemon.js";
import { validateInstance } from "../../agent/inventory/instance-validation.js";
import { parseHostPort } from "../../lib/listen-address.js";
import { createLogger } from "../../lib/rpc/logger.js";
import type { TlsFiles } from "../../lib/rpc/tls-credentials.js";

const [count, instances, dir] = [Number(process.argv[2]), Number(process.argv[3]), process.argv[4]];
const tlsFlags = process.argv.slice(5);
const tls: TlsFiles = {};
for (let i = 0; i < tlsFlags.length; i += 2) {
  const [flag, file] = [tlsFlags[i], tlsFlags[i + 1]];
  if (flag === "--tls-cert" && file) tls.certFile = file;
  else if (flag === "--tls-key" && file) tls.keyFile = file;
  else if (flag === "--tls-ca" && file) tls.caFile = file;
  else {
    process.stderr.write(`agent-farm: unknown argument ${JSON.stringify(flag)}\n`);
    process.exit(2);
  }
}
if (!(count > 0) || !(instances >= 0) || !dir) {
  process.stderr.write("usage: agent-farm.js COUNT INSTANCES DIR [--tls-cert F --tls-key F --tls-ca F]\n");
  process.exit(2);
}
if (tlsFlags.length > 0) {
  // An agent re-reads and re-checks its TLS files every second (TLS_REFRESH_MS in
  // lib/rpc/tls-credentials.ts): ~2.6 ms of CPU per agent per second here. On a real host that is
  // the host's own; 1,000 agents in farms would ask for more than this machine's two cores and
  // starve what is measured. So the farm's agents re-read them once an hour (the first read, at
  // start, is unchanged); bench/tls measures that idle cost on a real agent.
  const watcher = grpc.experimental.FileWatcherCertificateProvider.prototype as unknown as {
    maybeStartWatchingFiles(this: { config: { refreshIntervalMs: number } }): void;
  };
  const start = watcher.maybeStartWatchingFiles;
  watcher.maybeStartWatchingFiles = function () {
    this.config.refreshIntervalMs = 3_600_000;
    start.call(this);
  };
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
    tls: tlsFlags.length > 0 ? tls : undefined,
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
