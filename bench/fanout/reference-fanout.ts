/**
 * The P3 CPU reference: the bare minimum of a fan-out, in its own process so its CPU is its own.
 * One grpc-js channel per host, MetricsService.ListInstanceStats on raw bytes to every host at
 * once, each answer decoded; no merge, no re-encoding, no per-host bookkeeping.
 * `reference-fanout.js ADDRESSES_FILE CALLS WARMUP DEADLINE_MS` prints one JSON line.
 */
import { readFileSync } from "node:fs";
import { fromBinary } from "@bufbuild/protobuf";
import { ListInstanceStatsResponseSchema, MetricsService } from "../../gen/fleetlet/agent/v1/metrics_pb.js";
import { rawClient, rawUnary, waitReady } from "./raw-grpc.js";
import { errorMessage } from "../../lib/error-message.js";

const [file, calls, warmup, deadlineMs] = [process.argv[2] ?? "", Number(process.argv[3]), Number(process.argv[4]), Number(process.argv[5])];
const path = `/${MetricsService.typeName}/${MetricsService.method.listInstanceStats.name}`;
const addresses = readFileSync(file, "utf8").split("\n").filter((l) => l !== "");
const clients = addresses.map((a) => rawClient(a));
try {
  await Promise.all(clients.map((c) => waitReady(c, 60_000)));
  const empty = Buffer.alloc(0);
  const fanOut = async () => {
    const started = performance.now();
    let slowest = 0;
    let stats = 0;
    await Promise.all(
      clients.map(async (c) => {
        const t0 = performance.now();
        const res = fromBinary(ListInstanceStatsResponseSchema, await rawUnary(c, path, empty, deadlineMs));
        slowest = Math.max(slowest, performance.now() - t0);
        stats += res.stats.length;
      }),
    );
    return { wallMs: performance.now() - started, slowestMs: slowest, stats };
  };
  for (let i = 0; i < warmup; i++) await fanOut();
  const cpu0 = process.cpuUsage();
  const results = [];
  for (let i = 0; i < calls; i++) results.push(await fanOut());
  const cpu = process.cpuUsage(cpu0);
  process.stdout.write(
    `${JSON.stringify({ msg: "reference done", hosts: addresses.length, calls, cpuMs: (cpu.user + cpu.system) / 1000, results })}\n`,
  );
  process.exit(0);
} catch (e) {
  process.stderr.write(`reference fan-out: ${errorMessage(e)}\n`);
  process.exit(1);
}
