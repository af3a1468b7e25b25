import { linkedSignal } from "../../../lib/linked-signal.js";
import Dockerode from "dockerode";
import { Code, ConnectError } from "@connectrpc/connect";
import type {
  DockerEventMessage,
  DockerInfo,
  DockerInspect,
  DockerListedContainer,
  DockerStatsJson,
  DockerVersion,
} from "./docker-api-types.js";
import type { DockerEndpoint } from "./docker-endpoint.js";
import { negotiateApiVersion } from "./docker-endpoint.js";
import { toConnectError } from "./docker-errors.js";
import { parseDockerEventLine } from "./docker-events.js";
import { dockerSince } from "./docker-time.js";
import { errorMessage } from "../../../lib/error-message.js";

/**
 * The Engine API calls this runtime makes, typed: dockerode's typings miss `abortSignal` and
 * type events' `since` as a number (the Engine takes "seconds.nanoseconds"), and answer `any`
 * in places, so the casts live here and nowhere else. Every method throws ConnectError
 * (docker-errors.ts). One client per connection: the API version is pinned at connect.
 */

/** A call that does not stream gets this long before the engine counts as not answering. */
export const DOCKER_CALL_TIMEOUT_MS = 15_000;

/** Container events the runtime follows (see eventFilters). */
export const FOLLOWED_ACTIONS = [
  "create",
  "start",
  "restart",
  "die",
  "oom",
  "kill",
  "stop",
  "pause",
  "unpause",
  "rename",
  "update",
  "destroy",
  "health_status",
] as const;

interface EventsOptions {
  since?: bigint;
  until?: bigint;
}

type WithSignal<T> = T & { abortSignal?: AbortSignal };

// The subset of dockerode we call, with the option shapes the Engine really takes.
interface DockerodeCalls {
  version(opts: WithSignal<object>): Promise<unknown>;
  info(opts: WithSignal<object>): Promise<unknown>;
  ping(opts: WithSignal<object>): Promise<unknown>;
  listContainers(opts: WithSignal<{ all: boolean }>): Promise<unknown>;
  getEvents(opts: WithSignal<{ since?: string; until?: string; filters: string }>): Promise<NodeJS.ReadableStream>;
}
interface ContainerCalls {
  inspect(opts: WithSignal<object>): Promise<unknown>;
  stats(opts: WithSignal<{ stream: false; "one-shot": boolean }>): Promise<unknown>;
  pause(opts: WithSignal<object>): Promise<unknown>;
  unpause(opts: WithSignal<object>): Promise<unknown>;
}

export class DockerEngineClient {
  /** The dockerode instance, for docker-logs.ts. */
  readonly docker: Dockerode;
  readonly version: string;
  readonly apiVersion: string;

  private constructor(docker: Dockerode, version: string, apiVersion: string) {
    this.docker = docker;
    this.version = version;
    this.apiVersion = apiVersion;
  }

  /** Asks the engine its version (unversioned /version) and pins the negotiated API version. */
  static async connect(endpoint: DockerEndpoint, signal?: AbortSignal): Promise<DockerEngineClient> {
    const probe = new Dockerode(endpoint.options) as unknown as DockerodeCalls;
    const v = (await call("docker engine", signal, (s) => probe.version({ abortSignal: s }))) as DockerVersion;
    let apiVersion: string;
    try {
      apiVersion = negotiateApiVersion(v);
    } catch (e) {
      throw new ConnectError(errorMessage(e), Code.Unavailable);
    }
    const docker = new Dockerode({ ...endpoint.options, version: `v${apiVersion}` });
    return new DockerEngineClient(docker, v.Version ?? "", apiVersion);
  }

  private get calls(): DockerodeCalls {
    return this.docker as unknown as DockerodeCalls;
  }

  private container(id: string): ContainerCalls {
    return this.docker.getContainer(id) as unknown as ContainerCalls;
  }

  async info(signal?: AbortSignal): Promise<DockerInfo> {
    return (await call("docker engine", signal, (s) => this.calls.info({ abortSignal: s }))) as DockerInfo;
  }

  /** GET /_ping: the engine answers at all (a stopped dockerd keeps its socket accepting). */
  async ping(signal?: AbortSignal): Promise<void> {
    await call("docker engine", signal, (s) => this.calls.ping({ abortSignal: s }));
  }

  async listContainerIds(signal?: AbortSignal): Promise<string[]> {
    const list = await call("docker container list", signal, (s) => this.calls.listContainers({ all: true, abortSignal: s }));
    if (!Array.isArray(list)) throw new ConnectError("docker container list: engine answered something else than a list", Code.Internal);
    return (list as DockerListedContainer[]).map((c) => c.Id).filter((id): id is string => typeof id === "string");
  }

  async inspect(id: string, signal?: AbortSignal): Promise<DockerInspect> {
    const inspect = (await call(`docker container ${short(id)}`, signal, (s) => this.container(id).inspect({ abortSignal: s }))) as DockerInspect;
    if (typeof inspect?.Id !== "string") throw new ConnectError(`docker container ${short(id)}: engine answered without an Id`, Code.Internal);
    return inspect;
  }

  /**
   * One answer, never a stream. `oneShot` (the default): one read by the engine, `precpu_stats`
   * empty. Without it the engine answers after its second read (one collection tick later, ~1 s)
   * with the first in `precpu_stats`: what `docker stats --no-stream` computes CPU% from.
   */
  async stats(id: string, signal?: AbortSignal, oneShot = true): Promise<DockerStatsJson> {
    return (await call(`docker container ${short(id)}`, signal, (s) => this.container(id).stats({ stream: false, "one-shot": oneShot, abortSignal: s }))) as DockerStatsJson;
  }

  async pause(id: string): Promise<void> {
    await call(`docker container ${short(id)}`, undefined, (s) => this.container(id).pause({ abortSignal: s }));
  }

  async unpause(id: string): Promise<void> {
    await call(`docker container ${short(id)}`, undefined, (s) => this.container(id).unpause({ abortSignal: s }));
  }

  /**
   * The followed container events from `since` (inclusive, the Engine's rule) to `until`
   * (then the stream ends) or on and on. Ends when `signal` aborts; throws UNAVAILABLE when the
   * connection is lost.
   */
  async *events(options: EventsOptions, signal: AbortSignal): AsyncGenerator<DockerEventMessage> {
    let stream: NodeJS.ReadableStream;
    try {
      stream = await this.calls.getEvents({
        ...(options.since !== undefined ? { since: dockerSince(options.since) } : {}),
        ...(options.until !== undefined ? { until: dockerSince(options.until) } : {}),
        filters: JSON.stringify(eventFilters()),
        abortSignal: signal,
      });
    } catch (e) {
      throw toConnectError(e, "docker events", signal);
    }
    let pending = "";
    try {
      for await (const chunk of stream) {
        pending += typeof chunk === "string" ? chunk : (chunk as Buffer).toString("utf8");
        let nl: number;
        while ((nl = pending.indexOf("\n")) >= 0) {
          const line = pending.slice(0, nl).trim();
          pending = pending.slice(nl + 1);
          if (line !== "") yield parseDockerEventLine(line);
        }
      }
    } catch (e) {
      if (signal.aborted) return;
      throw toConnectError(e, "docker events", signal);
    }
    if (signal.aborted) return;
    if (pending.trim() !== "") yield parseDockerEventLine(pending.trim());
    // A live stream (no until) only ends when the engine goes away.
    if (options.until === undefined) throw new ConnectError("docker events: the engine closed the event stream", Code.Unavailable);
  }
}

/**
 * Engine-level events worth a "node" event: the daemon's only event type is "reload" (its
 * configuration was reloaded, SIGHUP); the Engine API has no disk-space or other health events.
 * Swarm nodes and services (a manager only): create, update, remove.
 */
export const FOLLOWED_ENGINE_ACTIONS = ["reload", "remove"] as const;

/**
 * Container events, and only the actions that change what we report: exec_* (every
 * healthcheck probe is three of them), attach, resize, top, copy and the like say nothing about
 * the container's state and would be most of the traffic. Plus daemon reloads and swarm node and
 * service changes (docker-events.ts maps them to the "node" and "service" resource types). The
 * Engine ANDs the two filters: a container "remove" or a daemon "create" does not exist, so the
 * one action list serves every type.
 */
export function eventFilters(): { type: string[]; event: string[] } {
  return { type: ["container", "daemon", "node", "service"], event: [...FOLLOWED_ACTIONS, ...FOLLOWED_ENGINE_ACTIONS] };
}

function short(id: string): string {
  return /^[0-9a-f]{64}$/.test(id) ? id.slice(0, 12) : id;
}

/**
 * Runs one non-streaming call with the caller's signal and our own timeout: a caller's abort
 * keeps its reason; our timeout means the engine is not answering (UNAVAILABLE).
 */
async function call<T>(what: string, signal: AbortSignal | undefined, fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
  // Not AbortSignal.any: the caller's signal is often the session's, long-lived (linked-signal.ts).
  const linked = linkedSignal([signal], DOCKER_CALL_TIMEOUT_MS);
  try {
    return await fn(linked.signal);
  } catch (e) {
    if (signal?.aborted) throw toConnectError(e, what, signal);
    if (linked.timedOut()) throw new ConnectError(`${what}: docker engine did not answer within ${DOCKER_CALL_TIMEOUT_MS / 1000} s`, Code.Unavailable);
    throw toConnectError(e, what);
  } finally {
    linked.dispose();
  }
}
