/**
 * P11 (issue 12 point 11): what clients that never read cost an agent. An agent with 10,000
 * instances (smoke: 1,000) is measured alone, then next to 2,000 WatchInstances streams (smoke:
 * 200) opened by a separate process that never reads them: the agent's RSS, and the latency of
 * another client's RegisterInstance calls and of its full watch (the state of every instance),
 * each as a ratio to the same measurement without the stalled streams, in the same run.
 */
import { join } from "node:path";
import { createInterface } from "node:readline";
import { createClient } from "@connectrpc/connect";
import { InstanceState, InventoryService } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { createGrpcJsTransport } from "../../lib/rpc/grpc-transport.js";
import { mapBounded } from "../../lib/worker-pool.js";
import { REPO_ROOT, rssKiB, runBench, sleep, startChild, startFleetletDaemon, tempDir } from "../common/processes.js";
import { check, figure, fmt, percentile, printFigures, progress, verdict } from "../common/report.js";

/** Targets (docs/benchmarks.md P11): other clients keep their latency within 2x; RSS added bounded. */
const TARGET_LATENCY_RATIO = 2;
const TARGET_ADDED_MB = 300;

runBench(async ({ smoke }) => {
  const instances = smoke ? 1000 : 10_000;
  const streams = smoke ? 200 : 2000;
  const calls = smoke ? 100 : 300;
  const dir = tempDir("slow-consumers");
  const agent = await startFleetletDaemon(
    "agent",
    ["--listen", "127.0.0.1:0", "--state-dir", join(dir, "agent"), "--metrics-listen", "off", "--runtime", "none", "--standby", "off", "--stream-stall-timeout", "10m", "--max-watch-streams", "10000", "--max-watch-streams-per-peer", "10000"],
    join(dir, "agent.log"),
  );
  const transport = createGrpcJsTransport(agent.address);
  const inventory = createClient(InventoryService, transport);
  progress(`registering ${instances} instances`);
  const labels = Object.fromEntries(Array.from({ length: 4 }, (_, k) => [`example.com/label-${k}`, `${k}`.repeat(240)]));
  await mapBounded(
    Array.from({ length: instances }, (_, k) => `vm-${String(k).padStart(5, "0")}`),
    64,
    (id) => inventory.registerInstance({ instance: { id, state: InstanceState.RUNNING, allocatedVcpus: 2, allocatedMemoryBytes: 1n << 30n, labels } }),
  );

  let probe = 0;
  const measure = async () => {
    const latencies: number[] = [];
    for (let k = 0; k < calls; k++) {
      const started = performance.now();
      await inventory.registerInstance({ instance: { id: `probe-${probe++ % 50}`, state: InstanceState.RUNNING, labels: { round: String(probe) } } }, { timeoutMs: 10_000 });
      latencies.push(performance.now() - started);
    }
    const started = performance.now();
    const ac = new AbortController();
    let seen = 0;
    for await (const res of inventory.watchInstances({}, { signal: ac.signal, timeoutMs: 60_000 })) {
      seen += res.events.filter((e) => e.instance !== undefined).length;
      if (seen >= instances + 50) break;
    }
    ac.abort();
    const watchMs = performance.now() - started;
    check(seen >= instances, `the watch delivered ${seen} of ${instances} instances`);
    return { p50: percentile(latencies, 50), p99: percentile(latencies, 99), watchMs };
  };

  await sleep(1000);
  progress("alone");
  const alone = await measure();
  const rssAloneMb = rssKiB(agent.pid) / 1024;

  progress(`opening ${streams} never-read watches`);
  const stalled = startChild(process.execPath, [join(REPO_ROOT, "dist", "test", "helpers", "stalled-watch-client.js"), agent.address, `/${InventoryService.typeName}/WatchInstances`, String(streams), String(Math.ceil(streams / 100))], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  const report = await new Promise<{ opened: number; withHeaders: number }>((resolve, reject) => {
    createInterface({ input: stalled.child.stdout! }).once("line", (line) => resolve(JSON.parse(line) as { opened: number; withHeaders: number }));
    void stalled.exited.then((code) => reject(new Error(`stalled client exited (${code})`)));
  });
  check(report.withHeaders === streams, `${report.withHeaders} of ${streams} watches answered`);
  await sleep(3000);
  const rssStalledMb = rssKiB(agent.pid) / 1024;
  progress("next to the stalled watches");
  const next = await measure();
  await stalled.stop();
  transport.close();
  await agent.stop();

  const p99Ratio = next.p99 / alone.p99;
  const p50Ratio = next.p50 / alone.p50;
  const watchRatio = next.watchMs / alone.watchMs;
  const addedMb = rssStalledMb - rssAloneMb;
  printFigures(
    `slow-consumers (P11)${smoke ? " --smoke" : ""}`,
    [
      ["agent", `${instances} instances; ${streams} WatchInstances streams never read (separate process)`],
      ["RegisterInstance p50 alone / next to them", `${fmt(alone.p50)} ms / ${fmt(next.p50)} ms (${fmt(p50Ratio)}x)`],
      ["RegisterInstance p99 alone / next to them", `${fmt(alone.p99)} ms / ${fmt(next.p99)} ms (${fmt(p99Ratio)}x)`],
      ["a full watch of the state alone / next to them", `${fmt(alone.watchMs, 0)} ms / ${fmt(next.watchMs, 0)} ms (${fmt(watchRatio)}x)`],
      ["agent RSS alone / next to them", `${fmt(rssAloneMb, 0)} MB / ${fmt(rssStalledMb, 0)} MB (+${fmt(addedMb, 0)} MB)`],
      ["target latency", `p99 <= ${TARGET_LATENCY_RATIO}x alone: ${verdict(p99Ratio <= TARGET_LATENCY_RATIO)}`],
      ["target memory", `<= +${TARGET_ADDED_MB} MB: ${verdict(addedMb <= TARGET_ADDED_MB)}`],
    ],
    [
      figure("register_p50_ratio_stalled_to_alone", p50Ratio, "x", "lower"),
      figure("register_p99_ratio_stalled_to_alone", p99Ratio, "x", "lower"),
      figure("full_watch_ratio_stalled_to_alone", watchRatio, "x", "lower"),
      figure("agent_rss_added_by_stalled_watches_mb", addedMb, "MB", "lower"),
    ],
  );
});
