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
  ...DEFAULT_STREAM_SLOT_LIMITS,
};
