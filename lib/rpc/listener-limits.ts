import { DEFAULT_STREAM_SLOT_LIMITS, type StreamSlotLimits } from "./stream-slots.js";

/**
 * What one listener lets a client hold (security.md "Limits"; docs/operations.md "Limits").
 * Every field is a flag of both daemons.
 */
export interface ListenerLimits extends StreamSlotLimits {
  /** Largest request accepted; larger ones get RESOURCE_EXHAUSTED from grpc-js. */
  maxReceiveMessageBytes: number;
  /** Largest response sent (FetchContainerLogs answers up to 16 MiB). */
  maxSendMessageBytes: number;
  /** HTTP/2 streams one connection may have open; announced in the SETTINGS frame. */
  maxConcurrentStreams: number;
  /** A connection with no call for this long is closed (GOAWAY). */
  maxConnectionIdleMs: number;
  /** A connection is asked to reconnect (GOAWAY) after this long, so load re-spreads... */
  maxConnectionAgeMs: number;
  /** ...and its calls still open this long afterwards are cut (UNAVAILABLE; watches resume). */
  maxConnectionAgeGraceMs: number;
  /** HTTP/2 memory per connection (MiB) past which new streams are refused (ENHANCE_YOUR_CALM). */
  maxSessionMemoryMiB: number;
  /**
   * State-changing calls (operator/admin/aggregator methods) one authenticated identity may make
   * per second, with bursts of twice that; RESOURCE_EXHAUSTED past it. 0: no limit.
   */
  maxMutatingCallsPerSecond: number;
}

export const DEFAULT_LISTENER_LIMITS: ListenerLimits = {
  maxReceiveMessageBytes: 4 * 1024 * 1024,
  maxSendMessageBytes: 16 * 1024 * 1024,
  maxConcurrentStreams: 1000,
  maxConnectionIdleMs: 30 * 60_000,
  // A day, with an hour's grace: a healthy watch is cut at most once a day per connection (the
  // aggregator's followers resume from their cursor), and a client cannot hold one connection
  // (and what it pinned) forever. Shorter ages would make every long watch relist often.
  maxConnectionAgeMs: 24 * 3_600_000,
  maxConnectionAgeGraceMs: 3_600_000,
  maxSessionMemoryMiB: 64,
  // The agent answers a few thousand registrations a second (bench/agent-rpc): one identity may
  // use a tenth of that, so a runaway script or a stolen token leaves room for everyone else,
  // while a control plane registering 10,000 instances at boot takes 20 s.
  maxMutatingCallsPerSecond: 500,
  ...DEFAULT_STREAM_SLOT_LIMITS,
};
