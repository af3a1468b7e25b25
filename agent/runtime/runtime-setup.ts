import { existsSync } from "node:fs";
import { hostname } from "node:os";
import type { Logger } from "../../lib/rpc/logger.js";
import type { InstanceRegistry } from "../inventory/instance-registry.js";
import { ContainerInstanceSync } from "./container-instances.js";
import type { ContainerRuntime } from "./container-runtime.js";
import { RuntimeEventLog } from "./runtime-event-log.js";
import { RUNTIME_NAMES, RuntimeSet, type RuntimeName } from "./runtime-set.js";
import { errorMessage } from "../../lib/error-message.js";

export const DEFAULT_DOCKER_SOCKET = "/var/run/docker.sock";

export interface RuntimeOptions {
  /**
   * Which runtimes: "auto" (Docker when DOCKER_HOST is set or the default socket exists;
   * Kubernetes when running in a cluster), "none", or a list.
   */
  runtimes: "auto" | "none" | RuntimeName[];
  dockerHost?: string;
  kubeconfig?: string;
  /** Kubernetes: only pods of this node (in-cluster agents: the node they run on). */
  kubeNode?: string;
}

export interface RuntimeSetup {
  runtimes: RuntimeSet;
  events: RuntimeEventLog;
  sync: ContainerInstanceSync;
  docker(): ContainerRuntime | undefined;
  close(): Promise<void>;
}

/** Parses `--runtime`: "auto", "none" or a comma list of runtime names. */
export function parseRuntimeList(text: string): RuntimeOptions["runtimes"] {
  const t = text.trim();
  if (t === "auto" || t === "none") return t;
  const names = t.split(",").map((s) => s.trim()).filter(Boolean);
  if (names.length === 0) throw new Error(`--runtime: expected auto, none or a list of ${RUNTIME_NAMES.join(", ")}`);
  for (const n of names) {
    if (!(RUNTIME_NAMES as readonly string[]).includes(n)) throw new Error(`--runtime: unknown runtime ${JSON.stringify(n)} (known: ${RUNTIME_NAMES.join(", ")}, or auto, none)`);
  }
  return [...new Set(names)] as RuntimeName[];
}

/**
 * Starts the configured runtimes (each connects in the background and keeps reconnecting: a
 * runtime that is down is not an agent that cannot start), the event log behind
 * WatchRuntimeEvents, and the sync that keeps containers in the inventory as instances.
 */
export async function setUpRuntimes(registry: InstanceRegistry, options: RuntimeOptions, logger: Logger): Promise<RuntimeSetup> {
  const wanted = resolve(options);
  const runtimes: ContainerRuntime[] = [];
  // Each runtime's client library is loaded only when that runtime is configured: dockerode
  // costs ~28 MB of RSS and @kubernetes/client-node ~86 MB (docs/benchmarks.md, P2).
  if (wanted.includes("docker")) {
    const { createDockerRuntime } = await import("./docker/docker-runtime.js");
    try {
      runtimes.push(createDockerRuntime({ host: options.dockerHost, logger: logger.child({ runtime: "docker" }) }));
    } catch (e) {
      // An endpoint we cannot use (e.g. DOCKER_HOST=ssh://...): asked for explicitly, the agent
      // does not start (the CLI reports it); found by "auto", the agent runs without Docker.
      if (options.runtimes !== "auto") throw new Error(`docker runtime: ${errorMessage(e)}`);
      logger.warn({ err: errorMessage(e) }, "docker runtime left out: its endpoint is not usable");
    }
  }
  if (wanted.includes("kubernetes")) {
    const { createKubernetesRuntime } = await import("./kubernetes/kubernetes-runtime.js");
    const inCluster = !options.kubeconfig && process.env.KUBERNETES_SERVICE_HOST !== undefined;
    runtimes.push(
      createKubernetesRuntime({
        kubeconfig: options.kubeconfig,
        inCluster,
        // An agent runs per host: in a cluster it owns the pods of its node only (NODE_NAME
        // from the downward API, else the hostname), or every agent would report every pod.
        nodeName: options.kubeNode ?? (inCluster ? (process.env.NODE_NAME ?? hostname()) : undefined),
        logger: logger.child({ runtime: "kubernetes" }),
      }),
    );
  }
  // One 'connected' listener per open WatchRuntimeEvents stream: many is normal.
  for (const r of runtimes) r.setMaxListeners(0);
  const events = new RuntimeEventLog(registry.incarnation);
  for (const r of runtimes) {
    r.on("event", (e) => events.append(e));
    r.on("connected", () => logger.info({ runtime: r.name, ...infoFields(r) }, "runtime connected"));
    r.on("disconnected", (e: Error) => logger.warn({ runtime: r.name, err: e.message }, "runtime disconnected"));
  }
  const sync = new ContainerInstanceSync(registry, runtimes, logger);
  await Promise.all(runtimes.map((r) => r.start()));
  await sync.schedule();
  return {
    runtimes: new RuntimeSet(runtimes),
    events,
    sync,
    docker: () => runtimes.find((r) => r.name === "docker"),
    async close() {
      sync.close();
      await Promise.all(runtimes.map((r) => r.close()));
    },
  };
}

function resolve(options: RuntimeOptions): RuntimeName[] {
  if (options.runtimes === "none") return [];
  if (options.runtimes !== "auto") return options.runtimes;
  const out: RuntimeName[] = [];
  if (options.dockerHost || process.env.DOCKER_HOST || existsSync(DEFAULT_DOCKER_SOCKET)) out.push("docker");
  if (options.kubeconfig || process.env.KUBERNETES_SERVICE_HOST) out.push("kubernetes");
  return out;
}

function infoFields(r: ContainerRuntime): Record<string, unknown> {
  const i = r.info();
  return { endpoint: i.endpoint, version: i.version, api_version: i.apiVersion, containers: i.containers };
}
