/**
 * P6: the runtime side against a real Docker engine (a private dockerd, as the tests start it).
 * N containers (50; smoke 5) run `sleep`, two of them burn CPU. The real agent
 * (`fleetlet agent --runtime docker`) answers RuntimeService.ListContainerStats for all of them
 * in one call; the reference, in the same run, is `docker stats --no-stream` for the same
 * containers (the CLI's own one-shot table). Both are timed wall-clock, alternating, ROUNDS
 * times each, after one warm-up call (so the agent has a previous sample for CPU%).
 * Event delivery: a WatchRuntimeEvents stream is open while the benchmark pauses and unpauses
 * containers; the latency of each event is its arrival at the client minus the engine's own
 * timestamp of it (timeNano; same host clock).
 */
import { execFile, execFileSync } from "node:child_process";
import { promisify } from "node:util";
import { join } from "node:path";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { createClient } from "@connectrpc/connect";
import { ContainerState, RuntimeService, WatchRuntimeEventsResponseType } from "../../gen/fleetlet/agent/v1/runtime_pb.js";
import { createGrpcJsTransport } from "../../lib/rpc/grpc-transport.js";
import { TEST_IMAGE, TestDockerd, dockerdSkipReason } from "../../test/helpers/dockerd.js";
import { onCleanup, runBench, sleep, startFleetletDaemon, tempDir } from "../common/processes.js";
import { check, figure, fmt, median, percentile, printFigures, progress, verdict } from "../common/report.js";
import { skipBench } from "../conntrack/netns.js";

const TITLE = "runtime (P6)";
const TARGET_RATIO = 0.5;
const TARGET_EVENT_P99_MS = 1000;

runBench(async ({ smoke }) => {
  const reason = dockerdSkipReason();
  if (reason) return skipBench(TITLE, reason);
  const n = smoke ? 5 : 50;
  const rounds = smoke ? 2 : 5;
  const eventPairs = smoke ? 5 : 25;

  progress("starting a private dockerd");
  const dockerd = await TestDockerd.start();
  onCleanup(() => dockerd.stop());
  progress(`starting ${n} containers`);
  const ids: string[] = [];
  for (let i = 0; i < n; i++) {
    const cmd = i < 2 ? ["sh", "-c", "while :; do :; done"] : ["sleep", "100000"];
    ids.push(dockerd.docker("run", "-d", "--network", "none", "--name", `bench-${i}`, TEST_IMAGE, ...cmd));
  }
  const dir = tempDir("runtime");
  const agent = await startFleetletDaemon("agent", ["--listen", "127.0.0.1:0", "--state-dir", join(dir, "agent"), "--metrics-listen", "off", "--runtime", "docker", "--docker-host", dockerd.host, "--standby", "off"], join(dir, "agent.log"));
  onCleanup(async () => {
    await agent.stop();
  });
  const transport = createGrpcJsTransport(agent.address);
  onCleanup(() => transport.close());
  const runtime = createClient(RuntimeService, transport);
  for (const end = Date.now() + 30_000; ; ) {
    const running = (await runtime.listContainers({ runtime: "docker", runningOnly: true })).containers.length;
    if (running >= n) break;
    check(Date.now() < end, `agent lists ${running} of ${n} running containers after 30 s`);
    await sleep(200);
  }

  // --- stats: one call for all vs `docker stats --no-stream` -----------------------------
  const fleetletMs: number[] = [];
  const cliMs: number[] = [];
  let last: Awaited<ReturnType<typeof runtime.listContainerStats>> | undefined;
  await runtime.listContainerStats({ runtime: "docker" }); // warm-up: previous samples for CPU%
  let cliOut = "";
  for (let r = 0; r < rounds; r++) {
    let t0 = performance.now();
    last = await runtime.listContainerStats({ runtime: "docker" });
    fleetletMs.push(performance.now() - t0);
    check(last.stats.length === n && last.errors.length === 0, `ListContainerStats: ${last.stats.length} stats, errors ${JSON.stringify(last.errors.slice(0, 2))}`);
    t0 = performance.now();
    cliOut = execFileSync("docker", ["-H", dockerd.host, "stats", "--no-stream", "--format", "{{.ID}} {{.CPUPerc}} {{.MemUsage}}", ...ids], { encoding: "utf8" });
    cliMs.push(performance.now() - t0);
    check(cliOut.trim().split("\n").length === n, "docker stats printed a line per container");
    progress(`round ${r + 1}/${rounds}: fleetlet ${fmt(fleetletMs.at(-1)!, 0)} ms, docker stats ${fmt(cliMs.at(-1)!, 0)} ms`);
  }
  const busy = last!.stats.filter((s) => s.cpuPercent !== undefined && s.cpuPercent > 50).length;
  const withCpu = last!.stats.filter((s) => s.cpuPercent !== undefined).length;
  const cliBusy = cliOut.trim().split("\n").filter((l) => Number.parseFloat(l.split(" ")[1] ?? "0") > 50).length;

  // --- event delivery latency ------------------------------------------------------------
  const ac = new AbortController();
  const latencies: number[] = [];
  const stream = runtime.watchRuntimeEvents({ runtime: "docker" }, { signal: ac.signal });
  const want = eventPairs * 2;
  let subscribed!: () => void;
  const snapshotSeen = new Promise<void>((r) => (subscribed = r));
  const reading = (async () => {
    try {
      for await (const m of stream) {
        if (m.type === WatchRuntimeEventsResponseType.SNAPSHOT) subscribed();
        if (m.type !== WatchRuntimeEventsResponseType.EVENT || !m.event?.timestamp) continue;
        if (m.event.action !== "pause" && m.event.action !== "unpause") continue;
        latencies.push(Date.now() - timestampMs(m.event.timestamp));
        if (latencies.length >= want) return;
      }
    } catch (e) {
      if (!ac.signal.aborted) throw e;
    }
  })();
  const target = ids[2]!;
  await snapshotSeen;
  // The CLI runs asynchronously so this process keeps reading the stream meanwhile.
  const docker = (...args: string[]) => promisify(execFile)("docker", ["-H", dockerd.host, ...args]);
  for (let i = 0; i < eventPairs; i++) {
    await docker("pause", target);
    await docker("unpause", target);
  }
  await Promise.race([reading, sleep(15_000)]);
  ac.abort();
  check(latencies.length === want, `received ${latencies.length} of ${want} pause/unpause events`);
  const state = (await runtime.listContainers({ runtime: "docker" })).containers.find((c) => c.externalId === target)?.state;
  check(state === ContainerState.RUNNING, "the container is running after the last unpause");

  const ratio = median(fleetletMs) / median(cliMs);
  printFigures(TITLE, [
    ["containers", `${n} running (2 burning CPU), private dockerd ${dockerd.docker("version", "--format", "{{.Server.Version}} (API {{.Server.APIVersion}})")}`],
    ["fleetlet ListContainerStats", `median ${fmt(median(fleetletMs), 0)} ms, max ${fmt(Math.max(...fleetletMs), 0)} ms (${rounds} calls; ${withCpu}/${n} with CPU%, ${busy} above 50%)`],
    ["docker stats --no-stream", `median ${fmt(median(cliMs), 0)} ms, max ${fmt(Math.max(...cliMs), 0)} ms (${rounds} runs; ${cliBusy} above 50%)`],
    ["events pause/unpause", `${latencies.length} delivered: p50 ${fmt(percentile(latencies, 50), 1)} ms, p99 ${fmt(percentile(latencies, 99), 1)} ms, max ${fmt(Math.max(...latencies), 1)} ms (engine timestamp -> client)`],
    ["target P6 stats", `<= ${TARGET_RATIO}x docker stats --no-stream: ${verdict(ratio <= TARGET_RATIO)} (${fmt(ratio, 3)}x)`],
    ["target P6 events", `p99 <= ${TARGET_EVENT_P99_MS} ms: ${verdict(percentile(latencies, 99) <= TARGET_EVENT_P99_MS)}`],
  ], [
    figure("list_container_stats_ms_median", median(fleetletMs), "ms", "lower"),
    figure("docker_stats_cli_ms_median", median(cliMs), "ms", "lower"),
    figure("ratio_fleetlet_to_cli", ratio, "x", "lower"),
    figure("event_ms_p50", percentile(latencies, 50), "ms", "lower"),
    figure("event_ms_p99", percentile(latencies, 99), "ms", "lower"),
  ]);
});
