import type { EventEmitter } from "node:events";
import type {
  Container,
  ContainerHealth,
  ContainerStats,
  LogEndReason,
  LogLine,
  RuntimeEvent,
  RuntimeInfo,
} from "../../gen/fleetlet/agent/v1/runtime_pb.js";

/**
 * One container runtime of this host (runtime.md; seed 004's Runtime interface): Docker or
 * Kubernetes behind the same surface, speaking the generated proto messages so the service
 * passes them through unchanged.
 *
 * Errors: every call that needs the runtime throws a ConnectError — Code.Unavailable while the
 * runtime is down (the message says why), Code.NotFound for an unknown container,
 * Code.InvalidArgument naming the field for a bad argument. Never a plain Error for those.
 *
 * Events ('event', RuntimeEvent): normalised (runtime.md "Events"), in the order they happened,
 * including the synthetic ones made by relist + diff after a reconnect. The runtime takes its
 * resume point before its initial list (bookmark before list) and resumes from the last event
 * it saw after a reconnect. 'containers' (no argument) fires whenever `containers()` changed.
 * 'connected' / 'disconnected' (Error) on connection changes.
 */
export interface ContainerRuntime extends EventEmitter<ContainerRuntimeEvents> {
  /** "docker" or "kubernetes". */
  readonly name: string;
  /**
   * Connects and keeps the connection: on loss, reconnects with capped exponential backoff
   * (200 ms doubling to 10 s). Resolves after the first attempt, connected or not (a runtime
   * that is down at start is not an agent that cannot start).
   */
  start(): Promise<void>;
  /** Stops watching and reconnecting; ends open log streams. */
  close(): Promise<void>;
  info(): RuntimeInfo;
  /**
   * The containers as the runtime's watch keeps them (initial list + events, each changed
   * container inspected again), so it answers without a round trip. Throws UNAVAILABLE while
   * disconnected (a stale list is not served as current).
   */
  containers(): Container[];
  /** One-shot stats (never a stream per container); CPU% from this runtime's previous sample. */
  stats(externalId: string, signal?: AbortSignal): Promise<ContainerStats>;
  /**
   * Last `tail` lines (0 = all), stdout/stderr interleaved in time order; `errors` holds
   * daemon-error frames or why the log could not be read to its end (lines are then partial).
   */
  fetchLogs(externalId: string, options: LogOptions, signal?: AbortSignal): Promise<{ lines: LogLine[]; tty: boolean; errors?: string[] }>;
  /**
   * Batches of lines as they come; ends (returns) with the reason. Aborting `signal` ends it
   * quietly (client cancelled). Daemon-error frames are yielded in `errors`, not as text.
   */
  streamLogs(externalId: string, options: LogOptions & { follow: boolean }, signal: AbortSignal): AsyncIterable<LogBatch>;
  health(externalId: string, signal?: AbortSignal): Promise<ContainerHealth>;
  /**
   * The CPU and memory limits the container was given (Docker HostConfig, Kubernetes
   * resources.limits), as of `containers()`; undefined for a container it does not know. The
   * inventory meters them as the instance's shape. (Optional: runtimes without limits.)
   */
  limits?(externalId: string): ContainerLimits | undefined;
  /** The docker standby driver (Kubernetes: UNIMPLEMENTED). */
  pause(externalId: string): Promise<void>;
  unpause(externalId: string): Promise<void>;
}

/**
 * Configured limits, not usage. A field is unset when there is no limit (the container may use
 * the whole host): the instance then has no shape for it, rather than a made-up one.
 */
export interface ContainerLimits {
  /** CPUs the container may use, fractional (`--cpus 1.5`, `cpu: 1500m`). */
  cpuCores?: number;
  memoryBytes?: bigint;
}

export interface LogOptions {
  tail: number;
  timestamps: boolean;
  /** Kubernetes: container of the pod. */
  container?: string;
}

export interface LogBatch {
  lines: LogLine[];
  errors: string[];
  /** Set on the last batch. */
  end?: { reason: LogEndReason; detail: string };
}

/** The events of a ContainerRuntime and their arguments: its EventEmitter's type. */
export interface ContainerRuntimeEvents {
  event: [RuntimeEvent];
  containers: [];
  connected: [];
  disconnected: [Error];
}
