/**
 * Docker's multiplexed log stream (the non-TTY body of GET /containers/{id}/logs and attach):
 * frames of an 8-byte header — byte 0 the stream id, bytes 1-3 zero, bytes 4-7 the payload
 * length big-endian — then the payload. Frames are not aligned with reads (nor with lines), so
 * the parser keeps a partial header or payload across chunks. The format is moby's
 * pkg/stdcopy (StdWriter); the daemon writes one frame per log message.
 */

/** The stream ids of moby's stdcopy: Stdin, Stdout, Stderr, Systemerr (a daemon error). */
export const DockerFrameStream = {
  stdin: 0,
  stdout: 1,
  stderr: 2,
  daemonError: 3,
} as const;
export type DockerFrameStream = (typeof DockerFrameStream)[keyof typeof DockerFrameStream];

export interface DockerLogFrame {
  stream: DockerFrameStream;
  /** May be a view of a chunk given to push(): the parser does not copy. */
  payload: Uint8Array;
}

const HEADER_BYTES = 8;

/**
 * A byte sequence that is not a Docker frame stream (a TTY stream taken for a framed one, a
 * misaligned read) or that ended inside a frame. The only error the parser throws.
 */
export class DockerLogFrameError extends Error {
  override readonly name = "DockerLogFrameError";
  /** Where the bad header starts (or the stream ended), counted from the first byte pushed. */
  readonly offset: number;
  /** end(): the frame the stream ended in, with the payload bytes that did arrive. */
  readonly partial: DockerLogFrame | undefined;

  constructor(message: string, offset: number, partial?: DockerLogFrame) {
    super(message);
    this.offset = offset;
    this.partial = partial;
  }
}

export interface DockerLogFrameParserOptions {
  /**
   * The largest payload believed (default 64 MiB). Docker's frames are one log message each,
   * and the engine's log copier cuts messages at its buffer size (16 KiB with json-file), so a
   * far bigger length means the bytes are not frames; without a bound such a header would make
   * us buffer up to 4 GiB before noticing.
   */
  maxPayloadBytes?: number;
}

/** Incremental parser: push() chunks as they are read, end() when the stream ends. */
export class DockerLogFrameParser {
  private readonly maxPayloadBytes: number;
  private readonly header = new Uint8Array(HEADER_BYTES);
  private headerFill = 0;
  /** The frame whose payload is being read. */
  private current: { stream: DockerFrameStream; length: number; parts: Uint8Array[]; filled: number } | undefined;
  /** Bytes pushed so far, for error offsets. */
  private consumed = 0;
  private failed: DockerLogFrameError | undefined;

  constructor(options?: DockerLogFrameParserOptions) {
    this.maxPayloadBytes = options?.maxPayloadBytes ?? 64 * 1024 * 1024;
  }

  /**
   * The frames completed by `chunk`, in order. Throws DockerLogFrameError on a header that is
   * not one (unknown stream id, nonzero padding, absurd length); the parser is then unusable
   * (every later call throws the same error), since nothing after a bad header can be trusted.
   */
  push(chunk: Uint8Array): DockerLogFrame[] {
    if (this.failed) throw this.failed;
    const frames: DockerLogFrame[] = [];
    let at = 0;
    while (at < chunk.length) {
      const cur = this.current;
      if (!cur) {
        const n = Math.min(HEADER_BYTES - this.headerFill, chunk.length - at);
        this.header.set(chunk.subarray(at, at + n), this.headerFill);
        this.headerFill += n;
        at += n;
        if (this.headerFill < HEADER_BYTES) break;
        this.headerFill = 0;
        const headerOffset = this.consumed + at - HEADER_BYTES;
        const frame = this.readHeader(headerOffset);
        if (frame.length === 0) frames.push({ stream: frame.stream, payload: new Uint8Array(0) });
        else this.current = { stream: frame.stream, length: frame.length, parts: [], filled: 0 };
        continue;
      }
      const n = Math.min(cur.length - cur.filled, chunk.length - at);
      cur.parts.push(chunk.subarray(at, at + n));
      cur.filled += n;
      at += n;
      if (cur.filled === cur.length) {
        frames.push({ stream: cur.stream, payload: concat(cur.parts, cur.length) });
        this.current = undefined;
      }
    }
    this.consumed += chunk.length;
    return frames;
  }

  /**
   * The stream ended. Throws DockerLogFrameError if it ended inside a frame (the error's
   * `partial` holds what arrived of it), so a truncated frame is reported, never dropped.
   */
  end(): void {
    if (this.failed) throw this.failed;
    if (this.headerFill > 0) {
      this.failed = new DockerLogFrameError(
        `Docker log stream ended inside a frame header (${this.headerFill} of ${HEADER_BYTES} bytes) at byte ${this.consumed}`,
        this.consumed - this.headerFill,
      );
      throw this.failed;
    }
    const cur = this.current;
    if (cur) {
      this.failed = new DockerLogFrameError(
        `Docker log stream ended inside a frame: ${cur.filled} of ${cur.length} payload bytes at byte ${this.consumed}`,
        this.consumed - cur.filled - HEADER_BYTES,
        { stream: cur.stream, payload: concat(cur.parts, cur.filled) },
      );
      throw this.failed;
    }
  }

  private readHeader(offset: number): { stream: DockerFrameStream; length: number } {
    const h = this.header;
    const stream = h[0]!;
    const length = ((h[4]! << 24) >>> 0) + (h[5]! << 16) + (h[6]! << 8) + h[7]!;
    let problem: string | undefined;
    if (stream > DockerFrameStream.daemonError) problem = `unknown stream id ${stream}`;
    else if (h[1] !== 0 || h[2] !== 0 || h[3] !== 0) problem = "nonzero padding in bytes 1-3";
    else if (length > this.maxPayloadBytes) problem = `payload length ${length} over the ${this.maxPayloadBytes}-byte limit`;
    if (problem !== undefined) {
      this.failed = new DockerLogFrameError(
        `not a Docker log frame header at byte ${offset}: ${problem} (header ${Buffer.from(h).toString("hex")})`,
        offset,
      );
      throw this.failed;
    }
    return { stream: stream as DockerFrameStream, length };
  }
}

function concat(parts: Uint8Array[], length: number): Uint8Array {
  if (parts.length === 1 && parts[0]!.length === length) return parts[0]!;
  const out = new Uint8Array(length);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
