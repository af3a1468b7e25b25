/**
 * P8 (goals.md): the merged inventory of 1,000 agent servers x 100 instances (agent-farm
 * processes: real agents, 250 per process) behind one aggregator process.
 * - merged ListInstances of all 100,000 instances: latency (raw bytes; decoded after the clock
 *   stops) next to the reference, a live fan-out of every agent's ListInstances from this client
 *   (what answering without the merged view costs);
 * - change -> watching client: SetInstanceState on an agent until the FleetService.WatchInstances
 *   event arrives, p50/p99, next to the same changes seen by a watch on the agent itself;
 * - aggregator RSS with the whole fleet synced;
 * - resume after a disconnect (the aggregator SIGSTOPped for 10 min, 3 s in --smoke) while
 *   changes go on: time until every host is SYNCED at its agent's version again, and how many
 *   relists that took (target: none).
 */
import { setMaxListeners } from "node:events";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { InstanceState, InventoryService, ListInstancesResponseSchema as AgentListSchema, InstanceEventType, type Instance } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { compareMergedView } from "../../test/helpers/inventory-checker.js";
import { FleetEventType, FleetService, HostSyncState, ListInstancesRequestSchema, ListInstancesResponseSchema } from "../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { MAX_PAGE_SIZE } from "../../lib/paging/list-pager.js";
import { readAllPages } from "../../lib/paging/read-all-pages.js";
import { createGrpcJsTransport } from "../../lib/rpc/grpc-transport.js";
import { mapBounded } from "../../lib/worker-pool.js";
import { logProblems, rssKiB, runBench, signal, sleep, startFleetletDaemon, tempDir } from "../common/processes.js";
import { startFarm } from "../common/agent-farm-process.js";
import { check, figure, fmt, median, percentile, printFigures, progress, verdict } from "../common/report.js";
import { rawClient, rawUnary, waitReady } from "../fanout/raw-grpc.js";

const PER_HOST = 100;
const TARGET_LIST_MS = 1000;
const TARGET_CHANGE_P99_MS = 500;

runBench(async ({ smoke }) => {
  const hosts = smoke ? 20 : 1000;
  const farmCount = smoke ? 1 : 4;
  const pauseMs = smoke ? 3000 : 600_000;
  const listCalls = smoke ? 3 : 10;
  const changeCount = smoke ? 40 : 300;
  const dir = tempDir("inventory");

  progress(`starting ${hosts} agents x ${PER_HOST} instances in ${farmCount} farm processes`);
  const perFarm = Math.ceil(hosts / farmCount);
  const farms = Array.from({ length: farmCount }, (_, f) => startFarm(Math.min(perFarm, hosts - f * perFarm), PER_HOST, join(dir, `farm-${f}`)));
  const addresses = (await Promise.all(farms.map((f) => f.addresses))).flat();
  check(addresses.length === hosts, `farms serve ${addresses.length} agents, expected ${hosts}`);
  const names = addresses.map((_, i) => `h${String(i).padStart(4, "0")}`);
  const hostsFile = join(dir, "hosts.txt");
  writeFileSync(hostsFile, addresses.map((a, i) => `${names[i]}=${a}\n`).join(""));

  progress("starting the aggregator; waiting for every host to be SYNCED");
  const syncStarted = performance.now();
  const aggregator = await startFleetletDaemon("aggregator", ["--listen", "127.0.0.1:0", "--state-dir", join(dir, "aggregator"), "--metrics-listen", "off", "--hosts-file", hostsFile], join(dir, "aggregator.log"));
  const transport = createGrpcJsTransport(aggregator.address);
  const fleet = createClient(FleetService, transport);
  const synced = async (expect: (host: string) => bigint | undefined, timeoutMs: number) => {
    const started = performance.now();
    for (;;) {
      // The whole view (paged: at most 10,000 instances and 2 MiB a page).
      const pages = await readAllPages((pageToken) => fleet.listInstances({ pageSize: MAX_PAGE_SIZE, pageToken }));
      const r = { ...pages[0]!, instances: pages.flatMap((p) => p.instances) };
      const ok = r.hosts.length === hosts && r.hosts.every((h) => h.state === HostSyncState.SYNCED && (expect(h.host) === undefined || h.resourceVersion === expect(h.host)));
      if (ok) return r;
      check(performance.now() - started < timeoutMs, `not every host SYNCED after ${timeoutMs} ms: ${r.hosts.filter((h) => h.state !== HostSyncState.SYNCED).length} not synced`);
      await sleep(200);
    }
  };
  const first = await synced(() => undefined, 300_000);
  const initialSyncMs = performance.now() - syncStarted;
  check(first.instances.length === hosts * PER_HOST, `${first.instances.length} instances in the merged view, expected ${hosts * PER_HOST}`);
  await sleep(1000);
  const rssMiB = rssKiB(aggregator.pid) / 1024;

  progress(`merged ListInstances x ${listCalls}, and the live fan-out reference`);
  const raw = rawClient(aggregator.address);
  await waitReady(raw);
  const listPath = `/${FleetService.typeName}/${FleetService.method.listInstances.name}`;
  const listMs: number[] = [];
  let listBytes = 0;
  for (let i = 0; i < listCalls; i++) {
    // Page by page; each page is decoded (for its token) off the clock: the calls are timed.
    let ms = 0;
    let count = 0;
    let pageToken = "";
    listBytes = 0;
    do {
      const request = Buffer.from(toBinary(ListInstancesRequestSchema, create(ListInstancesRequestSchema, { pageSize: MAX_PAGE_SIZE, pageToken })));
      const t = performance.now();
      const bytes = await rawUnary(raw, listPath, request, 60_000);
      ms += performance.now() - t;
      listBytes += bytes.length;
      const res = fromBinary(ListInstancesResponseSchema, bytes);
      count += res.instances.length;
      pageToken = res.nextPageToken;
    } while (pageToken !== "");
    listMs.push(ms);
    check(count === hosts * PER_HOST, `list ${i}: ${count} instances`);
  }
  // Reference: every agent asked live from here (512 at once, as the aggregator's fan-out).
  const agentClients = addresses.map((a) => rawClient(a));
  const agentListPath = `/${InventoryService.typeName}/${InventoryService.method.listInstances.name}`;
  const fanOutMs: number[] = [];
  for (let round = 0; round < Math.min(3, listCalls); round++) {
    const t = performance.now();
    const counts = await mapBounded(agentClients, 512, async (c) => fromBinary(AgentListSchema, await rawUnary(c, agentListPath, Buffer.alloc(0), 30_000)).instances.length);
    const count = counts.reduce((sum, n) => sum + n, 0);
    fanOutMs.push(performance.now() - t);
    check(count === hosts * PER_HOST, `fan-out round ${round}: ${count} instances`);
  }
  for (const c of agentClients) c.close();

  progress(`${changeCount} changes -> the fleet watch, and a watch on each changed agent`);
  const targets = addresses.slice(0, Math.min(10, hosts)).map((address, i) => ({ address, host: names[i]! }));
  const pendingFleet = new Map<string, number>();
  const pendingAgent = new Map<string, number>();
  const fleetLatency: number[] = [];
  const agentLatency: number[] = [];
  const stopWatches = new AbortController();
  setMaxListeners(0, stopWatches.signal); // one per watch
  const list = await fleet.listInstances({ hosts: targets.map((t) => t.host) });
  const fleetWatch = (async () => {
    try {
      for await (const m of fleet.watchInstances({ cursor: list.cursor, hosts: targets.map((t) => t.host) }, { signal: stopWatches.signal })) {
        const now = performance.now();
        for (const e of m.events) {
          check(e.type !== FleetEventType.RESYNC, `fleet watch RESYNC: ${e.reason}`);
          const key = e.instance ? `${e.instance.host}/${e.instance.id}/${e.instance.state}` : "";
          const t = pendingFleet.get(key);
          if (t !== undefined) {
            pendingFleet.delete(key);
            fleetLatency.push(now - t);
          }
        }
      }
    } catch (e) {
      if (!stopWatches.signal.aborted) throw e;
    }
  })();
  const agentTransports = targets.map((t) => createGrpcJsTransport(t.address));
  const agentWatches = targets.map(async (target, i) => {
    const inv = createClient(InventoryService, agentTransports[i]!);
    try {
      for await (const m of inv.watchInstances({}, { signal: stopWatches.signal })) {
        const now = performance.now();
        for (const e of m.events) {
          if (e.type !== InstanceEventType.MODIFIED) continue;
          const key = `${target.host}/${e.instance!.id}/${e.instance!.state}`;
          const t = pendingAgent.get(key);
          if (t !== undefined) {
            pendingAgent.delete(key);
            agentLatency.push(now - t);
          }
        }
      }
    } catch (e) {
      if (!stopWatches.signal.aborted) throw e;
    }
  });
  await sleep(500);
  const states = new Map<string, InstanceState>();
  for (let k = 0; k < changeCount; k++) {
    const target = targets[k % targets.length]!;
    const id = `vm-${Math.floor(k / targets.length) % PER_HOST}`;
    const key = `${target.host}/${id}`;
    const next = (states.get(key) ?? InstanceState.RUNNING) === InstanceState.RUNNING ? InstanceState.STOPPED : InstanceState.RUNNING;
    states.set(key, next);
    const t = performance.now();
    pendingFleet.set(`${key}/${next}`, t);
    pendingAgent.set(`${key}/${next}`, t);
    await createClient(InventoryService, agentTransports[k % targets.length]!).setInstanceState({ instanceId: id, state: next });
    await sleep(20);
  }
  const waitStarted = performance.now();
  while ((pendingFleet.size > 0 || pendingAgent.size > 0) && performance.now() - waitStarted < 10_000) await sleep(50);
  check(pendingFleet.size === 0, `${pendingFleet.size} changes never reached the fleet watch`);
  check(pendingAgent.size === 0, `${pendingAgent.size} changes never reached the agent watch`);
  stopWatches.abort();
  await Promise.all([fleetWatch, ...agentWatches]);
  for (const t of agentTransports) t.close();

  progress(`resume: the aggregator SIGSTOPped for ${pauseMs / 1000} s while changes go on`);
  const relists = (r: { hosts: { relists: number }[] }) => r.hosts.reduce((n, h) => n + h.relists, 0);
  // hosts (with their relists) are on every page.
  const before = await fleet.listInstances({ pageSize: 1 });
  const relistsBefore = relists(before);
  signal(aggregator.pid, "SIGSTOP");
  const pauseStarted = performance.now();
  const changedDuringPause = new Set<number>();
  let pauseChanges = 0;
  const pauseTransports = new Map<number, ReturnType<typeof createGrpcJsTransport>>();
  // About one change per host over the pause, spread out.
  const spacing = Math.max(5, Math.floor(pauseMs / hosts));
  while (performance.now() - pauseStarted < pauseMs) {
    const i = pauseChanges % hosts;
    let t = pauseTransports.get(i);
    if (!t) pauseTransports.set(i, (t = createGrpcJsTransport(addresses[i]!)));
    const id = `vm-${Math.floor(pauseChanges / hosts) % PER_HOST}`;
    await createClient(InventoryService, t).setInstanceState({ instanceId: id, state: InstanceState.STANDBY });
    changedDuringPause.add(i);
    pauseChanges++;
    await sleep(spacing);
  }
  for (const t of pauseTransports.values()) t.close();
  // What every agent is at now: the view must reach exactly that.
  const versions = new Map<string, bigint>();
  const agentLists: { host: string; instances: Instance[] }[] = [];
  for (let i = 0; i < hosts; i++) {
    const t = createGrpcJsTransport(addresses[i]!);
    const own = await createClient(InventoryService, t).listInstances({});
    versions.set(names[i]!, own.resourceVersion);
    agentLists.push({ host: names[i]!, instances: own.instances });
    t.close();
  }
  signal(aggregator.pid, "SIGCONT");
  const resumeStarted = performance.now();
  const after = await synced((h) => versions.get(h), 300_000);
  const resumeMs = performance.now() - resumeStarted;
  const relistsDuring = relists(after) - relistsBefore;
  check(after.instances.filter((i) => i.state === InstanceState.STANDBY).length === Math.min(pauseChanges, hosts * PER_HOST), "every change made during the pause is in the view");
  // The checker of the e2e test: the view equals the union of the agents' own lists exactly.
  const problems = compareMergedView(after.instances, agentLists);
  check(problems.length === 0, `the merged view differs from the agents' lists: ${problems.slice(0, 5).join("; ")} (${problems.length} in all)`);
  transport.close();
  raw.close();

  printFigures(`inventory (P8)${smoke ? " --smoke" : ""}`, [
    ["setup", `${hosts} agents x ${PER_HOST} instances in ${farmCount} farm processes, 1 aggregator, this client; all on this machine`],
    ["initial sync", `${fmt(initialSyncMs / 1000, 1)} s until all ${hosts} hosts SYNCED (${hosts * PER_HOST} instances)`],
    ["merged ListInstances", `p50 ${fmt(median(listMs), 0)} ms, max ${fmt(Math.max(...listMs), 0)} ms for ${hosts * PER_HOST} instances (${fmt(listBytes / 1024 / 1024, 1)} MiB)`],
    ["reference: live fan-out", `${fmt(median(fanOutMs), 0)} ms to ask all ${hosts} agents from here -> merged/fan-out ${fmt(median(listMs) / median(fanOutMs), 3)}x`],
    [`target P8 list <= ${TARGET_LIST_MS} ms`, verdict(median(listMs) <= TARGET_LIST_MS)],
    ["change -> fleet watch", `p50 ${fmt(median(fleetLatency), 1)} ms, p99 ${fmt(percentile(fleetLatency, 99), 1)} ms over ${fleetLatency.length} changes`],
    ["reference: agent's own watch", `p50 ${fmt(median(agentLatency), 1)} ms, p99 ${fmt(percentile(agentLatency, 99), 1)} ms (same changes)`],
    [`target P8 change p99 <= ${TARGET_CHANGE_P99_MS} ms`, verdict(percentile(fleetLatency, 99) <= TARGET_CHANGE_P99_MS)],
    ["aggregator RSS", `${fmt(rssMiB, 0)} MiB with ${hosts} hosts synced (${fmt((rssMiB * 1024) / hosts, 0)} KiB per host)`],
    ["resume after disconnect", `SIGSTOP ${fmt(pauseMs / 1000, 0)} s, ${pauseChanges} changes on ${changedDuringPause.size} hosts meanwhile; all SYNCED at the agents' versions ${fmt(resumeMs / 1000, 1)} s after SIGCONT; relists ${relistsDuring}`],
    ["target P8 resume without relist", verdict(relistsDuring === 0)],
    ["checker", `the merged view equals the union of the ${hosts} agents' own lists: ${after.instances.length} instances, 0 missing, 0 ghosts, 0 differing`],
    ["aggregator log", logProblems(aggregator.logPath)],
  ], [
    figure("initial_sync_s", initialSyncMs / 1000, "s", "lower"),
    figure("merged_list_ms_p50", median(listMs), "ms", "lower"),
    figure("reference_fanout_list_ms_p50", median(fanOutMs), "ms", "lower"),
    figure("change_to_fleet_watch_ms_p50", median(fleetLatency), "ms", "lower"),
    figure("change_to_fleet_watch_ms_p99", percentile(fleetLatency, 99), "ms", "lower"),
    figure("agent_watch_ms_p99", percentile(agentLatency, 99), "ms", "lower"),
    figure("aggregator_rss_mib", rssMiB, "MiB", "lower"),
    figure("resume_after_sigcont_s", resumeMs / 1000, "s", "lower"),
    figure("relists_after_disconnect", relistsDuring, "relists", "lower"),
  ]);
  await aggregator.stop();
  await Promise.all(farms.map((f) => f.child.stop()));
});
