import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, openSync, readFileSync, statSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Command } from "commander";
import { createClient } from "@connectrpc/connect";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { InventoryService, InstanceKind, InstanceState } from "../gen/fleetlet/agent/v1/inventory_pb.js";
import { ConnectionState, FleetService, HostSyncState } from "../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { createGrpcJsTransport } from "../lib/rpc/grpc-transport.js";
import { readAllPages } from "../lib/paging/read-all-pages.js";
import type { ListenAddress } from "../lib/listen-address.js";
import { discoverHypervisors } from "../agent/discovery/hypervisor-discovery.js";
import { startDemoInstances, stopDemoInstances, type DemoInstance } from "./demo-instances.js";
import { pokeDemo } from "./demo-network.js";
import { parse } from "./options.js";
import { formatAge, formatTable } from "./table.js";
import { hostResultLines, statsTable } from "./get-command.js";
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
}

export function upCommand(): Command {
  return new Command("up")
    .description("the main job on one machine: an aggregator and a local agent, showing the fleet live until Ctrl-C")
    .option("--state-dir <dir>", "state of both daemons and their logs", ".fleetlet")
    .option("--aggregator-listen <host:port>", "aggregator gRPC address", parse.address, parse.address("127.0.0.1:7700"))
    .option("--agent-listen <host:port>", "agent gRPC address", parse.address, parse.address("127.0.0.1:7701"))
    .option("--agent-metrics-listen <host:port>", "agent Prometheus endpoint, or off", "127.0.0.1:9464")
    .option("--aggregator-metrics-listen <host:port>", "aggregator Prometheus endpoint, or off", "127.0.0.1:9465")
    .option("--refresh <duration>", "table refresh interval", parse.durationMs, 1000)
    .option("--duration <duration>", "stop by itself after this long (default: run until Ctrl-C)", parse.durationMs)
    .option("--no-demo", "do not start demo instances when no hypervisor is found")
    .option("--demo-network", "root only: put each demo instance in a network namespace of its own behind a veth pair (fl-demo<N>) and send it traffic, so NET columns show real counters")
    .action(async (opts: UpOptions) => {
      process.exitCode = await runUp(opts);
    });
}

async function runUp(opts: UpOptions): Promise<number> {
  const out = process.stdout;
  const children: { name: string; child: ChildProcess }[] = [];
  let demos: DemoInstance[] = [];
  const stopAll = async () => {
    stopDemoInstances(demos);
    await Promise.all(children.map(({ child }) => stopChild(child)));
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
    mkdirSync(base, { recursive: true });
    const agentAddr = `${opts.agentListen.hostForClients}:${opts.agentListen.port}`;
    const aggAddr = `${opts.aggregatorListen.hostForClients}:${opts.aggregatorListen.port}`;
    out.write(`fleetlet up: state and logs in ${base}\n`);
    children.push({
      name: "agent",
      child: spawnDaemon(["agent", "--listen", opts.agentListen.grpcTarget, "--state-dir", join(base, "agent"), "--metrics-listen", opts.agentMetricsListen], join(base, "agent.log")),
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
      const metricsNote = opts.agentMetricsListen === "off" ? "" : ` (metrics http://${opts.agentMetricsListen}/metrics)`;
      out.write(`agent on ${agentAddr}${metricsNote}, aggregator on ${aggAddr}\n`);

      // Demo instances of an earlier run point at processes that are gone: drop them first.
      const existing = await readAllPages((pageToken) => inventory.listInstances({ pageToken }));
      for (const i of existing.flatMap((p) => p.instances)) {
        if (i.labels["fleetlet.dev/demo"] === "true") await inventory.deregisterInstance({ instanceId: i.id });
      }
      const found = discoverHypervisors();
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
      if (found.length > 0) out.write(`registered ${found.length} hypervisor process(es) found in /proc\n`);
      else if (opts.demo) {
        if (opts.demoNetwork && process.getuid?.() !== 0) throw new Error("--demo-network needs root (it creates network namespaces)");
        demos = startDemoInstances(opts.demoNetwork);
        for (const d of demos) {
          await inventory.registerInstance({
            instance: {
              id: d.id, name: d.name, kind: InstanceKind.PROCESS, state: InstanceState.RUNNING, pid: d.child.pid,
              hypervisor: "process", allocatedVcpus: d.vcpus, allocatedMemoryBytes: d.memoryBytes,
              tapDevice: d.net?.hostInterface ?? "", networkEnabled: d.net !== undefined, ip: d.net?.guestIp ?? "",
              labels: { "fleetlet.dev/demo": "true" },
            },
          });
        }
        out.write(`no hypervisor processes found: started ${demos.length} demo instances (label fleetlet.dev/demo=true)\n`);
      }
      out.write(`try: npx buf curl --protocol grpc --http2-prior-knowledge --list-services http://${agentAddr}\n\n`);

      const endAt = opts.duration !== undefined ? Date.now() + opts.duration : Infinity;
      const tty = out.isTTY === true;
      while (!interrupted && Date.now() < endAt) {
        await Promise.all(demos.filter((d) => d.net && d.trafficBytes > 0).map((d) => pokeDemo(d.net!, d.trafficBytes)));
        const frame = await renderFleet(fleet);
        out.write(tty ? `\x1b[H\x1b[2J${frame}\n\n(Ctrl-C to stop)\n` : `${frame}\n\n`);
        await new Promise<void>((r) => {
          const t = setTimeout(r, Math.min(opts.refresh, Math.max(0, endAt - Date.now())));
          wake.push(() => {
            clearTimeout(t);
            r();
          });
        });
      }
      for (const d of demos) await inventory.deregisterInstance({ instanceId: d.id }).catch(() => undefined);
    } finally {
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

async function renderFleet(fleet: ReturnType<typeof createClient<typeof FleetService>>): Promise<string> {
  const time = new Date().toISOString().replace("T", " ").slice(0, 19);
  try {
    const [hosts, stats] = await Promise.all([fleet.listHosts({}, { timeoutMs: 2000 }), fleet.listInstanceStats({}, { timeoutMs: 5000 })]);
    const hostTable = formatTable(
      ["HOST", "ADDRESS", "CONNECTION", "INVENTORY", "LAST-SEEN", "INSTANCES", "LAST-ERROR"],
      hosts.hosts.map((h) => [
        h.name,
        h.address,
        ConnectionState[h.connectionState] ?? "",
        HostSyncState[h.syncState] ?? "",
        h.lastSeen ? `${formatAge(timestampMs(h.lastSeen))} ago` : "never",
        String(stats.stats.filter((s) => s.host === h.name).length),
        h.lastError || "-",
      ]),
    );
    return `fleetlet fleet  ${time}\n\n${hostTable}\n\n${statsTable(stats.stats, true)}\n\n${hostResultLines(stats.hostResults)}`;
  } catch (e) {
    return `fleetlet fleet  ${time}\n\naggregator did not answer: ${errorMessage(e)}`;
  }
}

/** Where each daemon's log started for this run (the files are appended to across runs). */
const logStart = new WeakMap<ChildProcess, number>();

function spawnDaemon(args: string[], logFile: string): ChildProcess {
  mkdirSync(dirname(logFile), { recursive: true });
  const start = existsSync(logFile) ? statSync(logFile).size : 0;
  const log = openSync(logFile, "a");
  const child = spawn(process.execPath, [BIN, ...args], { stdio: ["ignore", log, log] });
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
