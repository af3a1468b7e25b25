import { EventEmitter } from "node:events";
import { setTimeout as sleep } from "node:timers/promises";
import { create } from "@bufbuild/protobuf";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  ContainerState,
  RuntimeInfoSchema,
  type Container,
  type ContainerHealth,
  type ContainerStats,
  type LogLine,
  type RuntimeEvent,
  type RuntimeInfo,
} from "../../../gen/fleetlet/agent/v1/runtime_pb.js";
import { errorMessage } from "../../../lib/error-message.js";
import { mapBounded } from "../../../lib/worker-pool.js";
import type { ContainerLimits, ContainerRuntime, ContainerRuntimeEvents, LogBatch, LogOptions } from "../container-runtime.js";
import { silentLogger, type RuntimeLogger } from "../runtime-logger.js";
import type { DockerEventMessage, DockerInfo, DockerInspect } from "./docker-api-types.js";
import { DOCKER_RUNTIME, dockerLimits, dockerState, inspectToContainer, inspectToHealth } from "./docker-container.js";
import { resolveDockerReference } from "./docker-container-lookup.js";
import { parseDockerHost, type DockerEndpoint } from "./docker-endpoint.js";
import { DockerEngineClient } from "./docker-engine-client.js";
import { dockerEventKey, dockerEventNs, normaliseDockerEvent } from "./docker-events.js";
import { fetchDockerLogs, streamDockerLogs } from "./docker-logs.js";
import { applyEventToTold, diffTold, toldFromContainers } from "./docker-state-diff.js";
import { dockerStatsToContainerStats, type DockerCpuSample } from "./docker-stats.js";
import { nowNs, parseDockerTime, timestampFromNs } from "./docker-time.js";

/**
 * The Docker runtime (runtime.md): the Engine API over its socket through dockerode.
 *
 * A session is one connection: negotiate the API version, take the resume point (the engine's
 * clock, /info SystemTime) *before* listing, list + inspect every container, collect the events
 * that happened while listing, then follow live events from there. Every followed event
 * re-inspects its container, so `containers()` is the engine's view without a round trip and
 * applying the same change twice is harmless.
 *
 * When the session breaks (stream ends, socket error, ping unanswered) the runtime says
 * 'disconnected', retries with capped backoff (200 ms doubling to 10 s) and, once back:
 * replays the events the engine still has since the last one seen (`since` is inclusive; events
 * already delivered are recognised by key and dropped), then relists and emits synthetic events
 * for what no replayed event explains (docker-state-diff.ts) — a dockerd restart loses its
 * event buffer, so then only the diff tells.
 */

export interface DockerRuntimeOptions {
  /** "unix:///path" or "tcp://host:port"; default DOCKER_HOST, else unix:///var/run/docker.sock. */
  host?: string;
  logger?: RuntimeLogger;
}

export function createDockerRuntime(options: DockerRuntimeOptions = {}): ContainerRuntime {
  return new DockerRuntime(options);
}

const BACKOFF_INITIAL_MS = 200;
const BACKOFF_MAX_MS = 10_000;
/** Longest a connection may take from connect to its first complete list (then: reconnect). */
const SYNC_DEADLINE_MS = 60_000;
/** A stopped (SIGSTOP) or wedged dockerd keeps the event stream open and silent; ping it. */
const PING_INTERVAL_MS = 15_000;
/** Inspects in flight while listing (a host with hundreds of containers). */
const INSPECT_CONCURRENCY = 8;
/** More than the engine's event buffer (256): every event a `since` replay can repeat is here. */
const REMEMBERED_EVENTS = 1024;

class DockerRuntime extends EventEmitter<ContainerRuntimeEvents> implements ContainerRuntime {
  readonly name = DOCKER_RUNTIME;
  private readonly endpoint: DockerEndpoint;
  private readonly logger: RuntimeLogger;

  private client: DockerEngineClient | undefined;
  private connected = false;
  private closed = false;
  private started = false;
  private lastError = "";
  private connectedSince: Timestamp | undefined;
  private reconnects = 0;
  private everConnected = false;
  private version = "";
  private apiVersion = "";
  private hostMemoryBytes: number | undefined;
  /** Why swarm services are not reported ("" on an active swarm manager); from /info. */
  private swarmNote = "not connected yet";

  /** The containers as of the last event processed (connected) or the session before (not). */
  private known = new Map<string, Container>();
  /** HostConfig.Memory per container (stats tell an unlimited container by it). */
  private configuredMemory = new Map<string, number>();
  /** CPU and memory limits per container (HostConfig), for the instance's shape. */
  private limitsById = new Map<string, ContainerLimits>();
  private cpuSamples = new Map<string, DockerCpuSample>();

  /** Where the next session's replay starts: the last event's timeNano or the last bookmark. */
  private resumeNs: bigint | undefined;
  private readonly rememberedKeys = new Set<string>();

  private readonly stop = new AbortController();
  private loop: Promise<void> | undefined;
  private readonly logStreams = new Set<AbortController>();

  constructor(options: DockerRuntimeOptions) {
    super();
    this.endpoint = parseDockerHost(options.host);
    this.logger = options.logger ?? silentLogger;
  }

  async start(): Promise<void> {
    if (this.started) return;
    this.started = true;
    await new Promise<void>((firstAttemptDone) => {
      this.loop = this.run(firstAttemptDone);
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.stop.abort(new ConnectError("docker runtime closed", Code.Unavailable));
    for (const c of this.logStreams) c.abort(new ConnectError("docker runtime closed", Code.Unavailable));
    await this.loop;
    this.connected = false;
    this.client = undefined;
  }

  info(): RuntimeInfo {
    return create(RuntimeInfoSchema, {
      name: DOCKER_RUNTIME,
      endpoint: this.endpoint.url,
      connected: this.connected,
      version: this.version,
      apiVersion: this.apiVersion,
      lastError: this.lastError,
      connectedSince: this.connected ? this.connectedSince : undefined,
      reconnects: this.reconnects,
      containers: this.connected ? this.known.size : 0,
      resourceTypes: this.connected ? ["container", "node", ...(this.swarmNote === "" ? ["service"] : [])] : [],
      resourceNotes: [
        // The Engine API's daemon events are "reload" only: no disk-space or health warnings.
        "node: the docker engine's own events (daemon reload) and swarm node changes only: the Engine API reports no disk-space events",
        ...(this.swarmNote === "" ? [] : [`service: ${this.swarmNote}`]),
      ],
    });
  }

  containers(): Container[] {
    this.requireClient();
    return [...this.known.values()];
  }

  limits(externalId: string): ContainerLimits | undefined {
    return this.limitsById.get(externalId);
  }

  async stats(externalId: string, signal?: AbortSignal): Promise<ContainerStats> {
    const client = this.requireClient();
    const id = await this.resolve(client, externalId, signal);
    let container = this.known.get(id);
    let configured = this.configuredMemory.get(id);
    if (!container || configured === undefined) {
      const inspect = await client.inspect(id, signal);
      container = inspectToContainer(inspect);
      configured = inspect.HostConfig?.Memory ?? 0;
    }
    const runId = container.startedAt ? `${container.startedAt.seconds}.${container.startedAt.nanos}` : "";
    // Without an earlier sample of this run, let the engine read twice (one tick more, ~1 s) so
    // even a one-off sample has CPU%; with one, a single read against it is enough.
    const previous = this.cpuSamples.get(id);
    const oneShot = previous !== undefined && previous.runId === runId;
    const raw = await client.stats(id, signal, oneShot);
    const { stats, sample } = dockerStatsToContainerStats({
      raw,
      externalId: id,
      name: container.name,
      instanceId: container.id,
      runId,
      previous,
      configuredMemoryBytes: configured,
      hostMemoryBytes: this.hostMemoryBytes,
    });
    if (sample) this.cpuSamples.set(id, sample);
    return stats;
  }

  async fetchLogs(externalId: string, options: LogOptions, signal?: AbortSignal): Promise<{ lines: LogLine[]; tty: boolean; errors: string[] }> {
    const client = this.requireClient();
    const id = await this.resolve(client, externalId, signal);
    const tty = await this.ttyOf(client, id, signal);
    return fetchDockerLogs(client.docker, id, tty, options, signal);
  }

  async *streamLogs(externalId: string, options: LogOptions & { follow: boolean }, signal: AbortSignal): AsyncIterable<LogBatch> {
    const client = this.requireClient();
    const id = await this.resolve(client, externalId, signal);
    const tty = await this.ttyOf(client, id, signal);
    // close() ends open streams: the stream gets its own signal, aborted by either.
    const own = new AbortController();
    const forward = () => own.abort(signal.reason);
    signal.addEventListener("abort", forward, { once: true });
    if (signal.aborted) forward();
    this.logStreams.add(own);
    try {
      yield* streamDockerLogs(client.docker, id, tty, options, own.signal);
    } finally {
      signal.removeEventListener("abort", forward);
      this.logStreams.delete(own);
    }
  }

  async health(externalId: string, signal?: AbortSignal): Promise<ContainerHealth> {
    const client = this.requireClient();
    const id = await this.resolve(client, externalId, signal);
    // Inspect now: the failing streak and last output change with every probe, without events.
    return inspectToHealth(await client.inspect(id, signal));
  }

  async pause(externalId: string): Promise<void> {
    await this.setPaused(externalId, true);
  }

  async unpause(externalId: string): Promise<void> {
    await this.setPaused(externalId, false);
  }

  /**
   * POST pause / unpause. A container in the wrong state is FAILED_PRECONDITION: engines answer
   * 409 for some of these and 500 for others (20.10: unpause of a running container), so a
   * refusal is checked against the container's state rather than the status code.
   */
  private async setPaused(externalId: string, paused: boolean): Promise<void> {
    const client = this.requireClient();
    const id = await this.resolve(client, externalId);
    try {
      if (paused) await client.pause(id);
      else await client.unpause(id);
    } catch (e) {
      if (!(e instanceof ConnectError) || (e.code !== Code.FailedPrecondition && e.code !== Code.Internal)) throw e;
      const inspect = await this.inspectOrGone(client, id, this.stop.signal);
      if (!inspect) throw new ConnectError(`docker: no container ${JSON.stringify(externalId)} (external_id)`, Code.NotFound);
      const state = dockerState(inspect.State);
      const wrongState = paused ? state !== ContainerState.RUNNING : state !== ContainerState.PAUSED;
      if (wrongState) throw new ConnectError(e.rawMessage, Code.FailedPrecondition);
      throw e;
    }
  }

  // ---- lookups ----

  private requireClient(): DockerEngineClient {
    if (!this.connected || !this.client) {
      const why = this.closed ? "runtime closed" : this.lastError || "not connected yet";
      throw new ConnectError(`docker: engine at ${this.endpoint.url} unavailable: ${why}`, Code.Unavailable);
    }
    return this.client;
  }

  /** Full id for an id, unique prefix or name; asks the engine when our view does not know it. */
  private async resolve(client: DockerEngineClient, reference: string, signal?: AbortSignal): Promise<string> {
    const known = resolveDockerReference(this.known.values(), reference);
    if (known) return known;
    try {
      // Without Docker's leading "/": "containers//x/json" is answered with a redirect to the
      // cleaned path, which docker-modem cannot follow (it threw from an event handler: the
      // agent died; found by the RPC fuzz).
      return (await client.inspect(reference.replace(/^\//, ""), signal)).Id;
    } catch (e) {
      if (e instanceof ConnectError && e.code === Code.NotFound) {
        throw new ConnectError(`docker: no container ${JSON.stringify(reference)} (external_id)`, Code.NotFound);
      }
      throw e;
    }
  }

  private async ttyOf(client: DockerEngineClient, id: string, signal?: AbortSignal): Promise<boolean> {
    const c = this.known.get(id);
    return c ? c.tty : (await client.inspect(id, signal)).Config?.Tty === true;
  }

  // ---- connection loop ----

  private async run(firstAttemptDone: () => void): Promise<void> {
    try {
      await this.reconnectLoop(firstAttemptDone);
    } finally {
      firstAttemptDone(); // also when close() came before the first attempt ended
    }
  }

  private async reconnectLoop(firstAttemptDone: () => void): Promise<void> {
    let delay = BACKOFF_INITIAL_MS;
    let failuresInARow = 0;
    while (!this.closed) {
      const session = new AbortController();
      const onStop = () => session.abort(this.stop.signal.reason);
      this.stop.signal.addEventListener("abort", onStop, { once: true });
      try {
        await this.session(session, firstAttemptDone);
      } catch (e) {
        if (this.closed) break;
        const err = e instanceof Error ? e : new Error(String(e));
        this.lastError = err.message;
        if (this.connected) {
          this.connected = false;
          this.client = undefined;
          delay = BACKOFF_INITIAL_MS;
          failuresInARow = 0;
          this.logger.warn({ endpoint: this.endpoint.url, err: err.message }, "docker engine disconnected");
          this.safeEmit("disconnected", err);
          this.safeEmit("containers");
        } else {
          // Every failed attempt at debug; the first of a series at warn (no flood while down).
          if (failuresInARow === 0) this.logger.warn({ endpoint: this.endpoint.url, err: err.message }, "docker engine unavailable");
          else this.logger.debug({ endpoint: this.endpoint.url, err: err.message, retryInMs: delay }, "docker engine still unavailable");
          failuresInARow++;
        }
      } finally {
        this.stop.signal.removeEventListener("abort", onStop);
        session.abort();
      }
      firstAttemptDone();
      if (this.closed) break;
      try {
        await sleep(delay, undefined, { signal: this.stop.signal });
      } catch {
        break; // closed
      }
      delay = Math.min(delay * 2, BACKOFF_MAX_MS);
    }
  }

  /** One connection: sync, then follow live events until it breaks (throws) or close(). */
  private async session(session: AbortController, synced: () => void): Promise<void> {
    const signal = session.signal;
    // The replays (events with `until`) have no per-call timeout: an engine that answers /info
    // and then stalls must not hold the first attempt (and the agent's start) for ever.
    const syncDeadline = setTimeout(() => session.abort(new Error(`docker engine: no complete sync within ${SYNC_DEADLINE_MS / 1000} s`)), SYNC_DEADLINE_MS);
    try {
      await this.connectAndFollow(session, signal, synced, syncDeadline);
    } finally {
      clearTimeout(syncDeadline);
    }
  }

  private async connectAndFollow(session: AbortController, signal: AbortSignal, synced: () => void, syncDeadline: NodeJS.Timeout): Promise<void> {
    const client = await DockerEngineClient.connect(this.endpoint, signal);

    // Bookmark before list: events after b1 are not lost whatever the list shows.
    const b1 = await this.engineNow(client, signal);
    const reconnecting = this.resumeNs !== undefined;
    const replayed = reconnecting ? await this.replay(client, this.resumeNs!, b1, signal) : [];
    const inspects = await this.listAndInspect(client, signal);
    const b2 = await this.engineNow(client, signal);
    const duringList = await this.replay(client, b1, b2, signal);
    // A container changed while we listed may have been inspected before its change.
    const touched = new Set(duringList.filter((m) => (m.Type ?? "container") === "container").map((m) => m.Actor?.ID).filter((id): id is string => !!id));
    for (const id of touched) {
      const fresh = await this.inspectOrGone(client, id, signal);
      if (fresh) inspects.set(id, fresh);
      else inspects.delete(id);
    }
    throwIfAborted(signal);

    // Commit: the events first (the replayed ones are real), then what only the diff tells.
    const told = toldFromContainers(this.known.values());
    const events: RuntimeEvent[] = [];
    for (const message of [...replayed, ...duringList]) {
      if (!this.remember(message)) continue;
      const event = normaliseDockerEvent(message);
      if (event.action === "die") event.errorDetail = inspects.get(event.externalId)?.State?.Error ?? "";
      this.noteStopRequest(event);
      applyEventToTold(told, event);
      events.push(event);
    }
    const containers = new Map<string, Container>();
    this.configuredMemory.clear();
    this.limitsById.clear();
    for (const [id, inspect] of inspects) {
      containers.set(id, this.containerOf(id, inspect));
      this.configuredMemory.set(id, inspect.HostConfig?.Memory ?? 0);
      this.limitsById.set(id, dockerLimits(inspect.HostConfig));
    }
    const synthetic = reconnecting ? diffTold(told, containers.values(), nowNs()) : [];
    for (const id of this.cpuSamples.keys()) if (!containers.has(id)) this.cpuSamples.delete(id);
    this.known = containers;
    this.advanceResume(b2);
    this.client = client;
    this.version = client.version;
    this.apiVersion = client.apiVersion;
    this.connected = true;
    this.connectedSince = timestampFromNs(nowNs());
    this.lastError = "";
    if (this.everConnected) this.reconnects++;
    this.everConnected = true;
    this.logger.info(
      { endpoint: this.endpoint.url, version: this.version, apiVersion: this.apiVersion, containers: containers.size, replayed: events.length, synthetic: synthetic.length },
      reconnecting ? "docker engine reconnected" : "docker engine connected",
    );
    this.safeEmit("connected");
    for (const e of events) this.safeEmit("event", e);
    for (const e of synthetic) this.safeEmit("event", e);
    this.safeEmit("containers");
    clearTimeout(syncDeadline);
    synced();

    // Live: from b2 (inclusive; what duringList delivered is remembered and dropped).
    // The ping is /info: it also notices a `docker swarm init` / `leave` (no event says so).
    const ping = setInterval(() => {
      this.engineNow(client, signal).catch((e: unknown) => session.abort(e instanceof Error ? e : new Error(String(e))));
    }, PING_INTERVAL_MS);
    try {
      for await (const message of client.events({ since: b2 }, signal)) {
        await this.onLiveEvent(client, message, signal);
      }
    } finally {
      clearInterval(ping);
    }
    // The event stream returns quietly when the session was aborted: by close() or by ping.
    if (!this.closed) throw signal.reason instanceof Error ? signal.reason : new Error("docker event stream ended");
  }

  private async onLiveEvent(client: DockerEngineClient, message: DockerEventMessage, signal: AbortSignal): Promise<void> {
    if (this.rememberedKeys.has(dockerEventKey(message))) return;
    const event = normaliseDockerEvent(message);
    if (event.resourceType !== "container") {
      // Engine and swarm events change no container: nothing to inspect.
      this.remember(message);
      this.safeEmit("event", event);
      return;
    }
    const id = event.externalId;
    if (event.resourceType === "container" && id !== "") {
      this.noteStopRequest(event);
      if (event.action === "destroy") {
        this.forget(id);
      } else {
        // An Unavailable here ends the session before the event is remembered: it is replayed.
        const inspect = await this.inspectOrGone(client, id, signal);
        if (inspect) {
          this.known.set(id, this.containerOf(id, inspect));
          this.configuredMemory.set(id, inspect.HostConfig?.Memory ?? 0);
          // `docker update --cpus/--memory` emits "update": the new limits arrive here.
          this.limitsById.set(id, dockerLimits(inspect.HostConfig));
          if (event.action === "die") event.errorDetail = inspect.State?.Error ?? "";
        } else {
          this.forget(id);
        }
      }
    }
    this.remember(message);
    this.safeEmit("event", event);
    this.safeEmit("containers");
  }

  /**
   * Containers the engine was asked to stop or kill (its "kill"/"stop" events) and that have not
   * started again since: their exit is a requested stop, not a crash, whatever its code.
   */
  private readonly stopRequests = new Set<string>();

  private noteStopRequest(event: RuntimeEvent): void {
    if (event.action === "kill" || event.action === "stop") this.stopRequests.add(event.externalId);
    else if (event.action === "start" || event.action === "restart" || event.action === "create") this.stopRequests.delete(event.externalId);
  }

  private containerOf(id: string, inspect: DockerInspect): Container {
    const c = inspectToContainer(inspect);
    c.stopRequested = c.state !== ContainerState.RUNNING && c.state !== ContainerState.PAUSED && this.stopRequests.has(id);
    return c;
  }

  private forget(id: string): void {
    this.stopRequests.delete(id);
    this.known.delete(id);
    this.configuredMemory.delete(id);
    this.limitsById.delete(id);
    this.cpuSamples.delete(id);
  }

  /** Records an event as delivered; false when it already was. Advances the resume point. */
  private remember(message: DockerEventMessage): boolean {
    const key = dockerEventKey(message);
    if (this.rememberedKeys.has(key)) return false;
    this.rememberedKeys.add(key);
    if (this.rememberedKeys.size > REMEMBERED_EVENTS) {
      const oldest = this.rememberedKeys.values().next().value;
      if (oldest !== undefined) this.rememberedKeys.delete(oldest);
    }
    const ns = dockerEventNs(message);
    if (ns !== undefined) this.advanceResume(ns);
    return true;
  }

  private advanceResume(ns: bigint): void {
    if (this.resumeNs === undefined || ns > this.resumeNs) this.resumeNs = ns;
  }

  /** The events the engine still has from `since` to `until` (both inclusive), complete. */
  private async replay(client: DockerEngineClient, since: bigint, until: bigint, signal: AbortSignal): Promise<DockerEventMessage[]> {
    // The engine refuses since > until; a clock stepped back has nothing to replay there.
    if (since > until) return [];
    const out: DockerEventMessage[] = [];
    for await (const m of client.events({ since, until }, signal)) out.push(m);
    // events() returns quietly on abort: an aborted replay is not a complete one.
    throwIfAborted(signal);
    return out;
  }

  /** The engine's clock (events are stamped by it), from /info; also refreshes MemTotal. */
  private async engineNow(client: DockerEngineClient, signal: AbortSignal): Promise<bigint> {
    const info = await client.info(signal);
    if (typeof info.MemTotal === "number" && info.MemTotal > 0) this.hostMemoryBytes = info.MemTotal;
    this.noteSwarm(info);
    // An engine without SystemTime: our clock, a moment early (same host in practice).
    return parseDockerTime(info.SystemTime) ?? nowNs() - 1_000_000_000n;
  }

  /** Services (and their events) exist only on an active swarm manager: say so otherwise. */
  private noteSwarm(info: DockerInfo): void {
    const state = info.Swarm?.LocalNodeState || "inactive";
    let note = "";
    if (state !== "active") note = `the docker engine is not in swarm mode (Swarm.LocalNodeState ${state}): it has no services to report`;
    else if (info.Swarm?.ControlAvailable !== true) note = "the docker engine is a swarm worker: service events come from swarm managers only";
    if (note === this.swarmNote) return;
    this.swarmNote = note;
    this.logger.info({ endpoint: this.endpoint.url, swarm: state }, note === "" ? "docker engine is a swarm manager: reporting swarm service events" : `no docker service events: ${note}`);
  }

  private async listAndInspect(client: DockerEngineClient, signal: AbortSignal): Promise<Map<string, DockerInspect>> {
    const ids = await client.listContainerIds(signal);
    // In the engine's list order (newest first), not completion order.
    const inspects = await mapBounded(ids, INSPECT_CONCURRENCY, (id) => this.inspectOrGone(client, id, signal));
    const ordered = new Map<string, DockerInspect>();
    for (const inspect of inspects) if (inspect) ordered.set(inspect.Id, inspect);
    return ordered;
  }

  /** Inspect, or undefined when the container is gone (removed since it was listed / its event). */
  private async inspectOrGone(client: DockerEngineClient, id: string, signal: AbortSignal): Promise<DockerInspect | undefined> {
    try {
      return await client.inspect(id, signal);
    } catch (e) {
      if (e instanceof ConnectError && e.code === Code.NotFound) return undefined;
      throw e;
    }
  }

  private safeEmit<K extends keyof ContainerRuntimeEvents>(name: K, ...args: ContainerRuntimeEvents[K]): void {
    try {
      // The emitter types its arguments with a conditional that a generic K leaves unresolved.
      (this.emit as (name: K, ...args: ContainerRuntimeEvents[K]) => boolean).call(this, name, ...args);
    } catch (e) {
      this.logger.error({ err: errorMessage(e), listener: name }, "docker runtime listener threw");
    }
  }
}

function throwIfAborted(signal: AbortSignal): void {
  if (!signal.aborted) return;
  throw signal.reason instanceof Error ? signal.reason : new ConnectError("docker session aborted", Code.Unavailable);
}
