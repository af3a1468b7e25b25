import { EventEmitter } from "node:events";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  ContainerHealthSchema,
  ContainerSchema,
  ContainerStatsSchema,
  HealthStatus,
  LogEndReason,
  LogLineSchema,
  LogStream,
  RuntimeEventSchema,
  RuntimeInfoSchema,
  type Container,
  type ContainerHealth,
  type ContainerStats,
  type LogLine,
  type RuntimeEvent,
  type RuntimeInfo,
} from "../../gen/fleetlet/agent/v1/runtime_pb.js";
import type { ContainerRuntime, ContainerRuntimeEvents, LogBatch, LogOptions } from "../../agent/runtime/container-runtime.js";

/**
 * A ContainerRuntime whose containers, connection and timings a test sets: for the service,
 * the inventory sync and the aggregator, which must behave the same over any runtime. The
 * real runtimes have their own tests against a real dockerd and a recorded Kubernetes API.
 */
export class FakeRuntime extends EventEmitter<ContainerRuntimeEvents> implements ContainerRuntime {
  connected = true;
  readonly known = new Map<string, Container>();
  /** Per external id: how long stats() takes (ms), to test per-container timeouts. */
  readonly statsDelayMs = new Map<string, number>();
  logLines: LogLine[] = [];
  paused: string[] = [];
  unpaused: string[] = [];

  constructor(readonly name: string) {
    super();
  }

  async start(): Promise<void> {}
  async close(): Promise<void> {}

  info(): RuntimeInfo {
    return create(RuntimeInfoSchema, { name: this.name, endpoint: `fake://${this.name}`, connected: this.connected, containers: this.known.size, lastError: this.connected ? "" : "fake is down" });
  }

  containers(): Container[] {
    this.requireUp();
    return [...this.known.values()];
  }

  /** Adds or replaces a container and says so ('containers'), with an event when given. */
  put(fields: MessageInitShape<typeof ContainerSchema> & { externalId: string }, action?: string): Container {
    const c = create(ContainerSchema, { runtime: this.name, id: `${this.name}-${fields.externalId}`.slice(0, 128), name: fields.externalId, ...fields });
    this.known.set(c.externalId, c);
    if (action) this.emit("event", this.event(action, c));
    this.emit("containers");
    return c;
  }

  drop(externalId: string): void {
    const c = this.known.get(externalId);
    this.known.delete(externalId);
    if (c) this.emit("event", this.event("destroy", c));
    this.emit("containers");
  }

  event(action: string, c: Container): RuntimeEvent {
    return create(RuntimeEventSchema, { action, runtime: this.name, externalId: c.externalId, name: c.name, resourceType: "container", timestamp: timestampNow(), instanceId: c.id });
  }

  goDown(): void {
    this.connected = false;
    this.emit("disconnected", new Error("fake is down"));
  }

  comeBack(): void {
    this.connected = true;
    this.emit("connected");
    this.emit("containers");
  }

  async stats(externalId: string, signal?: AbortSignal): Promise<ContainerStats> {
    const c = this.find(externalId);
    const delay = this.statsDelayMs.get(c.externalId) ?? 0;
    if (delay > 0) {
      await new Promise<void>((resolve, reject) => {
        const t = setTimeout(resolve, delay);
        signal?.addEventListener("abort", () => {
          clearTimeout(t);
          reject(new ConnectError("aborted", Code.Canceled));
        }, { once: true });
      });
    }
    return create(ContainerStatsSchema, { runtime: this.name, externalId: c.externalId, name: c.name, instanceId: c.id, timestamp: timestampNow(), memoryUsageBytes: 1024n });
  }

  async fetchLogs(externalId: string, _options: LogOptions): Promise<{ lines: LogLine[]; tty: boolean }> {
    this.find(externalId);
    return { lines: this.logLines, tty: false };
  }

  async *streamLogs(externalId: string, _options: LogOptions & { follow: boolean }, signal: AbortSignal): AsyncIterable<LogBatch> {
    this.find(externalId);
    for (const line of this.logLines) {
      if (signal.aborted) return;
      yield { lines: [line], errors: [] };
    }
    yield { lines: [], errors: [], end: { reason: LogEndReason.END_OF_LOG, detail: "" } };
  }

  async health(externalId: string): Promise<ContainerHealth> {
    this.find(externalId);
    return create(ContainerHealthSchema, { hasHealthcheck: false, status: HealthStatus.NONE });
  }

  async pause(externalId: string): Promise<void> {
    this.paused.push(this.find(externalId).externalId);
  }

  async unpause(externalId: string): Promise<void> {
    this.unpaused.push(this.find(externalId).externalId);
  }

  private requireUp(): void {
    if (!this.connected) throw new ConnectError(`${this.name} is down`, Code.Unavailable);
  }

  private find(externalId: string): Container {
    this.requireUp();
    const c = this.known.get(externalId);
    if (!c) throw new ConnectError(`container ${externalId} not found`, Code.NotFound);
    return c;
  }
}

export function logLine(text: string, stream = LogStream.STDOUT): LogLine {
  return create(LogLineSchema, { text, stream });
}
