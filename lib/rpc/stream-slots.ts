import { Code, ConnectError } from "@connectrpc/connect";

/**
 * Caps on open streaming calls (security.md "Limits"). Each open watch holds buffers, a
 * subscription and an HTTP/2 stream (~70 KiB measured), so without a cap 3,030 idle watches
 * took an agent from 114 MB to 328 MB. A client is its identity (token or certificate), or its
 * address when the daemon has no credentials configured (identity.ts limitKey).
 */
export interface StreamSlotLimits {
  /** Streaming calls open at once on this listener, all peers together. */
  maxStreams: number;
  /** Streaming calls one client (identity, else address) may have open at once. */
  maxStreamsPerPeer: number;
}

export const DEFAULT_STREAM_SLOT_LIMITS: StreamSlotLimits = { maxStreams: 1024, maxStreamsPerPeer: 256 };

/**
 * Counts open streams per peer and in all. `acquire` either takes a slot and returns its
 * release (idempotent), or throws RESOURCE_EXHAUSTED naming the limit and its flag.
 */
export class StreamSlots {
  private total = 0;
  private readonly perPeer = new Map<string, number>();

  constructor(private readonly limits: StreamSlotLimits = DEFAULT_STREAM_SLOT_LIMITS) {}

  /** `key`: the client's limitKey (an identity, or an address with no credentials configured). */
  acquire(key: string): () => void {
    const held = this.perPeer.get(key) ?? 0;
    // The per-peer check first: a peer over its share learns about its own limit, not the global one.
    if (held >= this.limits.maxStreamsPerPeer) {
      throw new ConnectError(
        `too many open streams for ${key}: at most ${this.limits.maxStreamsPerPeer} per client (--max-watch-streams-per-peer)`,
        Code.ResourceExhausted,
      );
    }
    if (this.total >= this.limits.maxStreams) {
      throw new ConnectError(
        `too many open streams: at most ${this.limits.maxStreams} on this server (--max-watch-streams)`,
        Code.ResourceExhausted,
      );
    }
    this.total++;
    this.perPeer.set(key, held + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.total--;
      const left = (this.perPeer.get(key) ?? 1) - 1;
      if (left <= 0) this.perPeer.delete(key);
      else this.perPeer.set(key, left);
    };
  }

  /** Streams open now (tests and metrics). */
  get open(): number {
    return this.total;
  }
}

/**
 * The client's address without its port, from grpc-js's getPeer(): "127.0.0.2:5123",
 * "[::1]:5123" or "::ffff:127.0.0.1:5123" (no brackets); anything else is kept whole.
 */
export function peerAddress(peer: string): string {
  if (peer.startsWith("[")) {
    const end = peer.indexOf("]");
    return end > 0 ? peer.slice(1, end) : peer;
  }
  const colon = peer.lastIndexOf(":");
  return colon > 0 && /^\d+$/.test(peer.slice(colon + 1)) ? peer.slice(0, colon) : peer;
}
