import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, fchmodSync, mkdirSync, openSync, readFileSync, statSync } from "node:fs";
import { APPEND_NOFOLLOW, PRIVATE_DIR_MODE, PRIVATE_FILE_MODE } from "../lib/private-file.js";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Command, Option } from "commander";
import { createClient } from "@connectrpc/connect";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { InventoryService, InstanceKind, InstanceState } from "../gen/fleetlet/agent/v1/inventory_pb.js";
import { ConnectionState, FleetService, HostSyncState } from "../gen/fleetlet/aggregator/v1/fleet_pb.js";
import type { StandbyPolicySchema } from "../gen/fleetlet/agent/v1/standby_pb.js";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { createGrpcJsTransport } from "../lib/rpc/grpc-transport.js";
import { readAllPages } from "../lib/paging/read-all-pages.js";
import { parseHostPort, type ListenAddress } from "../lib/listen-address.js";
import { discoverHypervisors } from "../agent/discovery/hypervisor-discovery.js";
import { DEMO_TRAFFIC_BYTES, startDemoInstances, stopDemoInstances, type DemoInstance } from "./demo-instances.js";
import { DEMO_ECHO_PORT, removeStaleDemoNamespaces } from "./demo-network.js";
import { startDemoHost, type RunningDemoHost } from "./demo-host.js";
import { parse } from "./options.js";
import { formatAge, formatTable } from "./table.js";
import { hostResultLines, standbyTable, statsTable, wantsColour } from "./get-command.js";
import { errorMessage } from "../lib/error-message.js";

const BIN = resolve(dirname(fileURLToPath(import.meta.url)), "../../bin/fleetlet.js");

interface UpOptions {
  stateDir: string;
  aggregatorListen: ListenAddress;
  agentListen: ListenAddress;
  agentMetricsListen: string;
  aggregatorMetricsListen: string;
  refresh: number;
  duration?: number;
  demo: boolean;
  demoNetwork: boolean;
  demoConntrackRule: boolean;
}

/** With --demo-network every demo gets this policy, so standby and wake show for real. */
const DEMO_STANDBY_POLICY: MessageInitShape<typeof StandbyPolicySchema> = { enabled: true, idleTimeout: "10s", wakeOnTraffic: true, driver: "signal" };

export function upCommand(): Command {
  return new Command("up")
    .description("the main job on one machine: an aggregator and a local agent, showing the fleet live until Ctrl-C")
    .option("--state-dir <dir>", "state of both daemons and their logs", ".fleetlet")
    // Defaults shown as written (not as the parsed objects, which commander would print as JSON).
    .addOption(new Option("--aggregator-listen <host:port>", "aggregator gRPC address").default(parse.address("127.0.0.1:7700"), "127.0.0.1:7700").argParser(parse.address))
    .addOption(new Option("--agent-listen <host:port>", "agent gRPC address").default(parse.address("127.0.0.1:7701"), "127.0.0.1:7701").argParser(parse.address))
    .option("--agent-metrics-listen <host:port>", "agent Prometheus endpoint, or off", "127.0.0.1:9464")
    .option("--aggregator-metrics-listen <host:port>", "aggregator Prometheus endpoint, or off", "127.0.0.1:9465")
    .addOption(new Option("--refresh <duration>", "table refresh interval (e.g. 2s, 500ms)").default(1000, "1s").argParser(parse.durationMs))
    .option("--duration <duration>", "stop by itself after this long (default: run until Ctrl-C)", parse.durationMs)
    .option("--no-demo", "do not start demo instances when no hypervisor is found")
    .option(
      "--demo-network",
      "root only: run the agent in a network namespace of its own (fl-demo-host-<pid>, conntrack on there) and each demo behind a veth pair (fl-demo<N>) in another, send them traffic, and give them a 10s standby policy: NET columns show real counters, and standby and wake work for real",
    )
    .option("--no-demo-conntrack-rule", "with --demo-network: no rule using conntrack in the agent's namespace, as on a host whose kernel tracks no connections")
    .action(async (opts: UpOptions) => {
      process.exitCode = await runUp(opts);
    });
}

async function runUp(opts: UpOptions): Promise<number> {
  const out = process.stdout;
  let leaveScreen = () => {};
  const children: { name: string; child: ChildProcess }[] = [];
  let demos: DemoInstance[] = [];
  let demoHost: RunningDemoHost | undefined;
  const stopAll = async () => {
    await stopDemoInstances(demos);
    await Promise.all(children.map(({ child }) => stopChild(child)));
    await demoHost?.stop();
  };
  let interrupted = false;
  const wake: (() => void)[] = [];
  const onSignal = () => {
    interrupted = true;
    for (const w of wake.splice(0)) w();
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);

  try {
    const base = resolve(opts.stateDir);
    // 0700, logs 0600: the daemons' logs name instances, hosts and addresses (security.md).
    mkdirSync(base, { recursive: true, mode: PRIVATE_DIR_MODE });
    let agentAddr = `${opts.agentListen.hostForClients}:${opts.agentListen.port}`;
    let agentMetricsAddr = opts.agentMetricsListen;
    const aggAddr = `${opts.aggregatorListen.hostForClients}:${opts.aggregatorListen.port}`;
    out.write(`fleetlet up: state and logs in ${base}\n`);
    // Found before the agent starts: with --demo-network, demos mean the agent runs in their network.
    const found = discoverHypervisors();
    const withDemos = found.length === 0 && opts.demo;
    let agentArgs = ["--listen", opts.agentListen.grpcTarget, "--metrics-listen", opts.agentMetricsListen];
    let agentPrefix: string[] = [];
    if (withDemos && opts.demoNetwork) {
      if (process.getuid?.() !== 0) throw new Error("--demo-network needs root (it creates network namespaces)");
      const stale = removeStaleDemoNamespaces();
      if (stale.length > 0) out.write(`removed network namespaces left by an earlier run: ${stale.join(", ")}\n`);
      const metricsListen = opts.agentMetricsListen === "off" ? undefined : parseHostPort(opts.agentMetricsListen);
      demoHost = await startDemoHost(opts.agentListen, metricsListen, DEMO_TRAFFIC_BYTES, opts.demoConntrackRule);
      agentAddr = demoHost.agentAddress;
      agentMetricsAddr = demoHost.metricsAddress ?? "off";
      agentArgs = demoHost.agentListenArgs;
      agentPrefix = demoHost.agentCommandPrefix;
    }
    children.push({
      name: "agent",
      child: spawnDaemon(["agent", ...agentArgs, "--state-dir", join(base, "agent")], join(base, "agent.log"), agentPrefix),
    });
    children.push({
      name: "aggregator",
      child: spawnDaemon(
        ["aggregator", "--listen", opts.aggregatorListen.grpcTarget, "--state-dir", join(base, "aggregator"), "--hosts", `local=${agentAddr}`, "--metrics-listen", opts.aggregatorMetricsListen],
        join(base, "aggregator.log"),
      ),
    });
    const agentTransport = createGrpcJsTransport(agentAddr);
    const aggTransport = createGrpcJsTransport(aggAddr);
    const inventory = createClient(InventoryService, agentTransport);
    const fleet = createClient(FleetService, aggTransport);
    try {
      await waitReady("agent", () => inventory.listInstances({}, { timeoutMs: 500 }), children[0]!.child, join(base, "agent.log"));
      await waitReady("aggregator", () => fleet.listHosts({}, { timeoutMs: 500 }), children[1]!.child, join(base, "aggregator.log"));
      const metricsNote = agentMetricsAddr === "off" ? "" : ` (metrics http://${agentMetricsAddr}/metrics)`;
      out.write(`agent on ${agentAddr}${metricsNote}, aggregator on ${aggAddr}\n`);

      // Demo instances of an earlier run point at processes that are gone: drop them first.
      const existing = await readAllPages((pageToken) => inventory.listInstances({ pageToken }));
      for (const i of existing.flatMap((p) => p.instances)) {
        if (i.labels["fleetlet.dev/demo"] === "true") await inventory.deregisterInstance({ instanceId: i.id });
      }
      for (const h of found) {
        await inventory.registerInstance({
          instance: {
            id: h.id, name: h.name, kind: InstanceKind.VM, state: InstanceState.RUNNING, pid: h.pid,
            hypervisor: h.hypervisor, allocatedVcpus: h.vcpus ?? 0, allocatedMemoryBytes: h.memoryBytes ?? 0n,
            tapDevice: h.tapDevice ?? "", networkEnabled: h.tapDevice !== undefined,
            labels: { "fleetlet.dev/discovered": "true" },
          },
        });
      }
      if (found.length > 0) out.write(`registered ${found.length} hypervisor process(es) found in /proc${opts.demoNetwork ? " (no demos: --demo-network not used)" : ""}\n`);
      else if (withDemos) {
        demos = startDemoInstances(demoHost?.host);
        for (const d of demos) {
          await inventory.registerInstance({
            instance: {
              id: d.id, name: d.name, kind: InstanceKind.PROCESS, state: InstanceState.RUNNING, pid: d.child.pid,
              hypervisor: "process", allocatedVcpus: d.vcpus, allocatedMemoryBytes: d.memoryBytes,
              tapDevice: d.net?.hostInterface ?? "", networkEnabled: d.net !== undefined, ip: d.net?.guestIp ?? "",
              labels: { "fleetlet.dev/demo": "true" }, ...(d.net ? { standbyPolicy: DEMO_STANDBY_POLICY } : {}),
            },
          });
        }
        out.write(`no hypervisor processes found: started ${demos.length} demo instances (label fleetlet.dev/demo=true)\n`);
        if (demoHost) out.write(demoNetworkLines(demoHost, demos));
      }
      out.write(`try: npx buf curl --protocol grpc --http2-prior-knowledge --list-services http://${agentAddr}\n\n`);

      const endAt = opts.duration !== undefined ? Date.now() + opts.duration : Infinity;
      // The first frame once the aggregator has the local host's inventory (not a table of
      // "No connection established" while it is still dialling): up to 10 s, saying what for.
      const synced = await waitSynced(fleet, () => interrupted || Date.now() >= endAt, (what) => out.write(`waiting for the aggregator: ${what}\n`));
      if (!synced) out.write("the aggregator has not synced the local host yet: showing what it has\n");
      const tty = out.isTTY === true;
      const colour = wantsColour(out);
      // On a terminal, frames are drawn in place on the alternate screen (as top and watch do),
      // not appended: the scrollback keeps what was there before `up`.
      if (tty) out.write("\x1b[?1049h");
      // Once: a second "leave" would restore the cursor saved on entering, over the last frame.
      leaveScreen = tty
        ? () => {
            leaveScreen = () => {};
            out.write("\x1b[?1049l");
          }
        : () => {};
      while (!interrupted && Date.now() < endAt) {
        const frame = await renderFleet(fleet, demoHost !== undefined, colour);
        out.write(tty ? `\x1b[H${`${frame}\n\n(Ctrl-C to stop)`.replace(/\n/g, "\x1b[K\n")}\x1b[K\x1b[J` : `${frame}\n\n`);
        await new Promise<void>((r) => {
          const t = setTimeout(r, Math.min(opts.refresh, Math.max(0, endAt - Date.now())));
          wake.push(() => {
            clearTimeout(t);
            r();
          });
        });
      }
      leaveScreen();
      // The last frame stays on the normal screen when it ends.
      if (tty) out.write(`${await renderFleet(fleet, demoHost !== undefined, colour)}\n\n`);
      for (const d of demos) await inventory.deregisterInstance({ instanceId: d.id }).catch(() => undefined);
    } finally {
      leaveScreen();
      agentTransport.close();
      aggTransport.close();
    }
    await stopAll();
    out.write("fleetlet up: stopped\n");
    return 0;
  } catch (e) {
    process.stderr.write(`fleetlet up: ${errorMessage(e)}\n`);
    await stopAll();
    return 1;
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
}

/** Where the demo network is and how to try standby on it. */
function demoNetworkLines(d: RunningDemoHost, demos: DemoInstance[]): string {
  const ns = d.host.namespace;
  const tracking =
    d.host.conntrackRule !== "none"
      ? `conntrack on there (${d.host.conntrackRule === "nftables" ? "nftables table inet fleetlet-demo" : "an iptables INPUT rule"}, in that namespace only)`
      : d.host.conntrackRuleError
        ? `WITHOUT conntrack: no rule could be added (${d.host.conntrackRuleError}), so the agent finds standby unsupported there`
        : "WITHOUT a conntrack rule (--no-demo-conntrack-rule): the kernel tracks no connections there, as on a host with no rule using conntrack, so the agent finds standby unsupported there";
  const lines = [
    `demo network: the agent runs in network namespace ${ns}, ${tracking}`,
    ...demos.filter((x) => x.net).map((x) => `  ${x.id} at ${x.net!.guestIp}:${DEMO_ECHO_PORT} (namespace ${x.net!.namespace}, interface ${x.net!.hostInterface})`),
    `standby: each demo sleeps (SIGSTOP) after ${DEMO_STANDBY_POLICY.idleTimeout} without connections and traffic; demo-idle gets none. Wake it with a connection:`,
    `  sudo ip netns exec ${ns} bash -c 'echo hi > /dev/tcp/${demos.find((x) => x.id === "demo-idle")?.net?.guestIp ?? ""}/${DEMO_ECHO_PORT}'`,
  ];
  return `${lines.join("\n")}\n`;
}

/** Until every host is SYNCED in the aggregator's view (true), or 10 s / `stop` (false). */
async function waitSynced(fleet: ReturnType<typeof createClient<typeof FleetService>>, stop: () => boolean, say: (what: string) => void): Promise<boolean> {
  const deadline = Date.now() + 10_000;
  let said = "";
  while (!stop() && Date.now() < deadline) {
    const hosts = (await fleet.listHosts({}, { timeoutMs: 2000 }).catch(() => undefined))?.hosts ?? [];
    const behind = hosts.filter((h) => h.syncState !== HostSyncState.SYNCED);
    if (hosts.length > 0 && behind.length === 0) return true;
    const what = behind.map((h) => `host ${h.name} ${(ConnectionState[h.connectionState] ?? "").toLowerCase()}, inventory ${(HostSyncState[h.syncState] ?? "").toLowerCase()}`).join("; ") || "its hosts";
    if (what !== said) say(what);
    said = what;
    await new Promise((r) => setTimeout(r, 100));
  }
  return false;
}

async function renderFleet(fleet: ReturnType<typeof createClient<typeof FleetService>>, withStandby: boolean, colour = false): Promise<string> {
  const time = new Date().toISOString().replace("T", " ").slice(0, 19);
  try {
    const [hosts, stats, standby, view] = await Promise.all([
      fleet.listHosts({}, { timeoutMs: 2000 }),
      fleet.listInstanceStats({}, { timeoutMs: 5000 }),
      withStandby ? fleet.listStandbyStatus({}, { timeoutMs: 5000 }) : undefined,
      // Every instance of the merged view: one on standby or stopped has no stats but stays listed.
      readAllPages((pageToken) => fleet.listInstances({ pageToken }, { timeoutMs: 2000 })),
    ]);
    const statsOf = new Map(stats.stats.map((s) => [`${s.host}/${s.instanceId}`, s]));
    const rows = view.flatMap((p) => p.instances).map((i) => ({ ...(statsOf.get(`${i.host}/${i.id}`) ?? { instanceId: i.id, instanceName: i.name, allocatedVcpus: i.allocatedVcpus, allocatedMemoryBytes: i.allocatedMemoryBytes, unavailable: [] }), host: i.host, state: i.state }));
    const hostTable = formatTable(
      ["HOST", "ADDRESS", "CONNECTION", "INVENTORY", "LAST-SEEN", "INSTANCES", "LAST-ERROR"],
      hosts.hosts.map((h) => [
        h.name,
        h.address,
        ConnectionState[h.connectionState] ?? "",
        HostSyncState[h.syncState] ?? "",
        h.lastSeen ? `${formatAge(timestampMs(h.lastSeen))} ago` : "never",
        String(rows.filter((s) => s.host === h.name).length),
        h.lastError || "-",
      ]),
    );
    const standbyPart = standby ? `\n\n${standbyTable(standby.statuses.map((s) => ({ host: s.host, status: s.status! })), true)}` : "";
    return `fleetlet fleet  ${time}\n\n${hostTable}\n\n${statsTable(rows, true, colour)}${standbyPart}\n\n${hostResultLines(stats.hostResults)}`;
  } catch (e) {
    return `fleetlet fleet  ${time}\n\naggregator did not answer: ${errorMessage(e)}`;
  }
}

/** Where each daemon's log started for this run (the files are appended to across runs). */
const logStart = new WeakMap<ChildProcess, number>();

/** `prefix` (e.g. `ip netns exec NS`) execs the daemon, so the child's pid is the daemon's. */
function spawnDaemon(args: string[], logFile: string, prefix: string[] = []): ChildProcess {
  mkdirSync(dirname(logFile), { recursive: true, mode: PRIVATE_DIR_MODE });
  const start = existsSync(logFile) ? statSync(logFile).size : 0;
  const log = openSync(logFile, APPEND_NOFOLLOW, PRIVATE_FILE_MODE);
  // A log an earlier version created 0644 is narrowed: the mode given to open only applies to new files.
  fchmodSync(log, PRIVATE_FILE_MODE);
  const [command, ...rest] = [...prefix, process.execPath, BIN, ...args];
  const child = spawn(command!, rest, { stdio: ["ignore", log, log] });
  logStart.set(child, start);
  return child;
}

/** This run's lines of a daemon's log. */
function logSince(child: ChildProcess, log: string): string[] {
  try {
    return readFileSync(log, "utf8").slice(logStart.get(child) ?? 0).split("\n").filter((l) => l !== "");
  } catch {
    return [];
  }
}

/**
 * Ready = our own daemon said "<name> serving" (pino puts its pid on every line) and answers.
 * An answer alone is not enough: another `fleetlet up` already on the same ports would answer,
 * and this one would then re-register and later deregister the running fleet's instances.
 */
async function waitReady(name: string, probe: () => Promise<unknown>, child: ChildProcess, log: string): Promise<void> {
  const deadline = Date.now() + 15_000;
  const serving = (l: string) => l.includes(`"msg":"${name} serving"`) && l.includes(`"pid":${child.pid},`);
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      // The log file may be shared with a daemon already running on this state dir: only our
      // own lines (its pid, or plain stderr text) say why ours stopped.
      const last = logSince(child, log)
        .filter((l) => !l.startsWith("{") || l.includes(`"pid":${child.pid},`))
        .at(-1);
      let why = last ?? "";
      try {
        why = (JSON.parse(last ?? "") as { msg?: string; err?: { message?: string } }).err?.message ?? (JSON.parse(last ?? "") as { msg?: string }).msg ?? why;
      } catch {
        // not a JSON line: printed as it is
      }
      throw new Error(`${name} exited with code ${child.exitCode ?? child.signalCode}${why ? `: ${why}` : ""} (is another fleetlet up running on ${dirname(log)}?); see ${log}`);
    }
    try {
      if (logSince(child, log).some(serving)) {
        await probe();
        return;
      }
    } catch (e) {
      if (Date.now() > deadline) throw new Error(`${name} not ready after 15s: ${errorMessage(e)}; see ${log}`);
    }
    if (Date.now() > deadline) throw new Error(`${name} did not start serving within 15s; see ${log}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** SIGTERM, then SIGKILL if the daemon has not stopped within 10 s. By pid, never by name. */
function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolveStop) => {
    const kill = setTimeout(() => child.kill("SIGKILL"), 10_000);
    child.once("exit", () => {
      clearTimeout(kill);
      resolveStop();
    });
    child.kill("SIGTERM");
  });
}
