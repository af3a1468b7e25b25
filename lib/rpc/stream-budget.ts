import { constants as http2Constants, type ServerHttp2Stream } from "node:http2";
import { performance } from "node:perf_hooks";
import type * as grpc from "@grpc/grpc-js";
import { Code, ConnectError } from "@connectrpc/connect";

/** How much one server stream may hold for a client that does not read (security.md "Limits"). */
export interface StreamLimits {
  /**
   * Encoded bytes written to a stream and not yet taken by HTTP/2 (the client's flow-control
   * window is full): past this the producer waits instead of encoding more. grpc-js itself
   * counts messages (16), not bytes, so without this a stream of 1 MiB pages held 16 MiB.
   */
  maxPendingBytes: number;
  /**
   * A stream whose client took none of its pending bytes for this long is cut: RST_STREAM
   * ENHANCE_YOUR_CALM, which gRPC clients report as RESOURCE_EXHAUSTED. Frees the stream's
   * buffers at once, even though the client never reads the status.
   */
  stallTimeoutMs: number;
}

export const DEFAULT_STREAM_LIMITS: StreamLimits = { maxPendingBytes: 64 * 1024, stallTimeoutMs: 30_000 };

type WritableCall = grpc.ServerWritableStream<Buffer, Buffer> | grpc.ServerDuplexStream<Buffer, Buffer>;

/**
 * Writes one stream's messages within its byte budget. `write()` resolves when the producer may
 * make the next message: at once while the pending bytes are under the budget, else once the
 * client has taken enough; it rejects with RESOURCE_EXHAUSTED (after resetting the stream) when
 * the client took nothing for `stallTimeoutMs`, and with the call's abort reason when the call
 * ends while waiting.
 */
export class BudgetedStreamWriter {
  private pending = 0;
  private lastProgress = performance.now();
  private wake: (() => void) | undefined;

  constructor(
    private readonly call: WritableCall,
    private readonly limits: StreamLimits,
    private readonly signal: AbortSignal,
  ) {}

  /** Bytes written and not yet handed to HTTP/2. */
  get pendingBytes(): number {
    return this.pending;
  }

  async write(bytes: Buffer): Promise<void> {
    this.pending += bytes.length;
    this.call.write(bytes, () => {
      this.pending -= bytes.length;
      this.lastProgress = performance.now();
      this.wake?.();
    });
    // grpc-js also queues at most writableHighWaterMark messages (tiny messages, e.g. bookmarks).
    while (this.pending >= this.limits.maxPendingBytes || this.call.writableLength >= this.call.writableHighWaterMark) {
      await this.progressOrStall();
    }
  }

  private progressOrStall(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const left = this.lastProgress + this.limits.stallTimeoutMs - performance.now();
      const done = (error?: unknown) => {
        clearTimeout(timer);
        this.signal.removeEventListener("abort", onAbort);
        this.wake = undefined;
        if (error === undefined) resolve();
        else reject(error);
      };
      const onAbort = () => done(this.signal.reason);
      const timer = setTimeout(() => {
        // Progress may have been made by a callback that ran just before this timer.
        if (performance.now() - this.lastProgress < this.limits.stallTimeoutMs) return done();
        const pending = this.pending;
        resetStream(this.call, http2Constants.NGHTTP2_ENHANCE_YOUR_CALM);
        done(
          new ConnectError(
            `the client read nothing for ${Math.round(this.limits.stallTimeoutMs / 1000)} s with ${pending} bytes waiting: stream cut (resume from the last version received)`,
            Code.ResourceExhausted,
          ),
        );
      }, Math.max(0, left));
      this.wake = () => done();
      if (this.signal.aborted) onAbort();
      else this.signal.addEventListener("abort", onAbort, { once: true });
    });
  }
}

/**
 * The HTTP/2 stream under a grpc-js server call. grpc-js gives no public way to reset a stream
 * with a code of our choosing, and a status cannot be sent while the stream's data is stuck
 * behind a closed window, so this walks its (pinned, 1.14) call chain: the call's `call`, then
 * `nextCall` links down to the base call that owns `stream`. Undefined when the shape changed;
 * test/lib/rpc/stream-budget.test.ts fails then.
 */
export function http2StreamOf(call: WritableCall): ServerHttp2Stream | undefined {
  let link: unknown = (call as unknown as { call?: unknown }).call;
  for (let depth = 0; depth < 8 && link !== null && typeof link === "object"; depth++) {
    const stream = (link as { stream?: unknown }).stream;
    if (stream && typeof (stream as ServerHttp2Stream).close === "function") return stream as ServerHttp2Stream;
    link = (link as { nextCall?: unknown }).nextCall;
  }
  return undefined;
}

function resetStream(call: WritableCall, code: number): void {
  const stream = http2StreamOf(call);
  if (stream && !stream.closed && !stream.destroyed) stream.close(code);
}
