import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";
import type { ListenAddress } from "../lib/listen-address.js";
import { errorMessage } from "../lib/error-message.js";
import { createDemoHost, removeDemoHost, type DemoHost } from "./demo-network.js";
import type { DemoHostProcessConfig } from "./demo-host-process.js";
import { startForwarder, type Forwarder } from "./socket-forwarder.js";

const HOST_PROCESS = fileURLToPath(new URL("./demo-host-process.js", import.meta.url));

/** The agent's ports inside the host namespace: a namespace of this run only, so nothing clashes. */
const INNER_AGENT_PORT = 7701;
const INNER_METRICS_PORT = 9464;

/**
 * The running network of `up --demo-network`: namespaces, the process forwarding and sending
 * traffic inside the host namespace, and the loopback ports in the root namespace that lead to
 * the agent running in it.
 */
export interface RunningDemoHost {
  host: DemoHost;
  /** host:port clients in the root namespace dial for the agent (the forwarder's bound port). */
  agentAddress: string;
  /** host:port of the agent's metrics in the root namespace, or undefined when off. */
  metricsAddress?: string;
  /** Prefix of the agent's command line: runs it in the host namespace. */
  agentCommandPrefix: string[];
  /** The agent's flags for where to listen, inside the host namespace. */
  agentListenArgs: string[];
  /** Stops the forwarders and the process, removes the namespaces and the sockets' directory. */
  stop(): Promise<void>;
}

/**
 * Binds the root-namespace ports first (a port in use fails here, before anything is created),
 * then creates the namespaces and starts the host namespace's process; on failure, undoes it all.
 */
export async function startDemoHost(
  agentListen: ListenAddress,
  metricsListen: ListenAddress | undefined,
  trafficBytes: number[],
  conntrackRule: boolean,
): Promise<RunningDemoHost> {
  // Unix sockets in a directory only root can enter: the only way into the host namespace.
  const socketDir = mkdtempSync(join(tmpdir(), "fleetlet-demo-"));
  const forwarders: Forwarder[] = [];
  let host: DemoHost | undefined;
  let child: ChildProcess | undefined;
  // Set when it is spawned: a Ctrl-C reaches it too, and it may be gone before stop() looks.
  let childExited: Promise<unknown> = Promise.resolve();
  const stop = async () => {
    await Promise.all(forwarders.map((f) => f.close()));
    if (child && child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
    await childExited;
    if (host) removeDemoHost(host);
    rmSync(socketDir, { recursive: true, force: true });
  };
  try {
    const forwards: DemoHostProcessConfig["forwards"] = [];
    const listenOn = async (what: string, at: ListenAddress, port: number) => {
      const path = join(socketDir, `${what}.sock`);
      const f = await startForwarder({ host: at.host, port: at.port }, { path }).catch((e: unknown) => {
        const inUse = (e as NodeJS.ErrnoException).code === "EADDRINUSE" ? " (is another fleetlet up running?)" : "";
        throw new Error(`${what} address ${at.grpcTarget}: ${errorMessage(e)}${inUse}`);
      });
      forwarders.push(f);
      forwards.push({ path, port });
      return `${at.hostForClients}:${typeof f.address === "string" ? at.port : f.address.port}`;
    };
    const agentAddress = await listenOn("agent", agentListen, INNER_AGENT_PORT);
    const metricsAddress = metricsListen ? await listenOn("agent-metrics", metricsListen, INNER_METRICS_PORT) : undefined;
    host = createDemoHost(trafficBytes.length, { conntrackRule });
    const config: DemoHostProcessConfig = {
      forwards,
      traffic: host.nets.flatMap((n, i) => ((trafficBytes[i] ?? 0) > 0 ? [{ ip: n.guestIp, bytes: trafficBytes[i]! }] : [])),
      intervalMs: 1000,
    };
    child = spawn("ip", ["netns", "exec", host.namespace, process.execPath, HOST_PROCESS, JSON.stringify(config)], { stdio: ["pipe", "pipe", "inherit"] });
    const started = child;
    childExited = new Promise((r) => started.once("exit", r));
    await new Promise<void>((resolve, reject) => {
      createInterface({ input: started.stdout! }).once("line", (l) => (l === "ready" ? resolve() : reject(new Error(`demo host process: ${l}`))));
      started.once("exit", (code) => reject(new Error(`demo host process exited with code ${code}`)));
    });
    return {
      host,
      agentAddress,
      metricsAddress,
      agentCommandPrefix: ["ip", "netns", "exec", host.namespace],
      agentListenArgs: ["--listen", `127.0.0.1:${INNER_AGENT_PORT}`, "--metrics-listen", metricsListen ? `127.0.0.1:${INNER_METRICS_PORT}` : "off"],
      stop,
    };
  } catch (e) {
    await stop();
    throw e;
  }
}
