import { LogTailBuffer } from "../log-tail-buffer.js";
import type { IncomingMessage } from "node:http";
import { addAbortSignal } from "node:stream";
import type Dockerode from "dockerode";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { LogEndReason, LogStream, type LogLine } from "../../../gen/fleetlet/agent/v1/runtime_pb.js";
import type { LogBatch, LogOptions } from "../container-runtime.js";
import { LogLineAssembler, parseRfc3339Nano } from "../log-line-assembler.js";
import { dockerErrorCode } from "./docker-errors.js";
import { DockerFrameStream, DockerLogFrameError, DockerLogFrameParser, type DockerLogFrame } from "./docker-log-frames.js";

// Container logs from the Engine API (GET /containers/{id}/logs), runtime.md "Logs".
//
// Non-TTY logs are multiplexed frames (docker-log-frames.ts), one per log message. We always ask
// for timestamps: the engine then starts every frame with "<RFC3339Nano> " — every frame, also
// each 16 KiB piece of a long line that json-file stored as several messages — so the prefix is
// stripped per frame, and a piece without "\n" simply continues the line in that stream's
// assembler. TTY logs are the pty's raw bytes: no frames, and no timestamps (a prefix could not be
// told from the text in an unframed stream), one LOG_STREAM_TTY assembler.
//
// `tail` is passed to the engine, which counts log messages: the same as lines except for lines
// json-file split at 16 KiB, each piece of which counts (so such a line near the start of a tail
// may come without its head).
//
// A followed log loses its end on the engine: when the container exits, the follower stops
// before reading the last message json-file writes (an unterminated last line is flushed only
// at exit, so it is always lost) — moby/moby#43860, open, seen on 20.10. So after a follow ends
// with the container exited, we read the log once more from shortly before the last frame we got
// (`since`) and skip what we already had (see DockerLogDecoder.resumePoint).

/** Fetches the log (not following): every line, stdout and stderr in the order they were written. */
export async function fetchDockerLogs(
  docker: Dockerode,
  externalId: string,
  tty: boolean,
  options: LogOptions,
  signal?: AbortSignal,
): Promise<{ lines: LogLine[]; tty: boolean; errors: string[] }> {
  const res = await openLogStream(docker, externalId, { tty, tail: options.tail, follow: false }, signal).catch((e: unknown) => {
    throw dockerLogsError(e, externalId);
  });
  const decoder = new DockerLogDecoder(tty, options.timestamps);
  // Bounded: tail 0 on a log of gigabytes keeps only the newest MAX_FETCH_LOG_BYTES.
  const kept = new LogTailBuffer();
  const errors: string[] = [];
  let broken: unknown;
  try {
    for await (const chunk of res as AsyncIterable<Buffer>) {
      const out = decoder.push(chunk);
      kept.push(out.lines);
      errors.push(...out.errors);
    }
  } catch (e) {
    broken = e;
  } finally {
    res.destroy();
  }
  if (broken !== undefined) {
    if (signal?.aborted) throw dockerLogsError(broken, externalId);
    // Nothing read yet: the call failed. Otherwise answer what was read, and why it stops there.
    const error =
      broken instanceof DockerLogFrameError
        ? new ConnectError(`docker: the log of ${externalId} is not a valid log stream: ${broken.message}`, Code.Internal, undefined, undefined, broken)
        : dockerLogsError(broken, externalId);
    const partial = kept.lines();
    if (partial.length === 0) throw error;
    partial.push(...decoder.flush());
    return { lines: partial, tty, errors: [...errors, `the log could not be read to its end: ${error.rawMessage}`, ...[kept.note()].filter((n): n is string => n !== undefined)] };
  }
  const last = decoder.endResponse();
  kept.push([...last.lines, ...decoder.flush()]);
  errors.push(...last.errors);
  if (last.failure !== undefined) errors.push(last.failure);
  const note = kept.note();
  if (note) errors.push(note);
  // Daemon-error frames and a stream cut short are answered with what was read and the errors
  // (FetchContainerLogsResponse.errors says the lines may not be the last N), not a bare failure.
  return { lines: kept.lines(), tty, errors };
}

/**
 * Streams the log as batches (the lines of one read together), then a final batch whose `end`
 * says why it ended. Aborting `signal` destroys the HTTP stream and returns quietly, without a
 * final batch. Throws (before any batch) NOT_FOUND for a missing container, UNAVAILABLE when
 * the engine cannot be reached.
 */
export async function* streamDockerLogs(
  docker: Dockerode,
  externalId: string,
  tty: boolean,
  options: LogOptions & { follow: boolean },
  signal: AbortSignal,
): AsyncGenerator<LogBatch, void, undefined> {
  if (signal.aborted) return;
  const openedAtNs = BigInt(Date.now()) * 1_000_000n;
  let res: IncomingMessage;
  try {
    res = await openLogStream(docker, externalId, { tty, tail: options.tail, follow: options.follow }, signal);
  } catch (e) {
    if (signal.aborted) return;
    throw dockerLogsError(e, externalId);
  }
  const decoder = new DockerLogDecoder(tty, options.timestamps);
  let failure: string | undefined;
  try {
    for await (const chunk of res as AsyncIterable<Buffer>) {
      let out: DecodedLogs;
      try {
        out = decoder.push(chunk);
      } catch (e) {
        if (!(e instanceof DockerLogFrameError)) throw e;
        failure = `the engine's log stream is not valid: ${e.message}`;
        break;
      }
      if (out.lines.length > 0 || out.errors.length > 0) yield { lines: out.lines, errors: out.errors };
    }
  } catch (e) {
    if (signal.aborted) return;
    failure = `the log stream from the engine broke: ${messageWithErrno(e)}`;
  } finally {
    // Also when the consumer stops early (return() on this generator): end the HTTP request.
    res.destroy();
  }
  if (signal.aborted) return;
  const last = decoder.endResponse();
  failure ??= last.failure;
  let end: { reason: LogEndReason; detail: string };
  if (failure !== undefined) end = { reason: LogEndReason.RUNTIME_ERROR, detail: failure };
  else if (!options.follow) end = { reason: LogEndReason.END_OF_LOG, detail: "" };
  else end = await whyFollowEnded(docker, externalId, openedAtNs, signal);
  if (signal.aborted) return;
  if (end.reason === LogEndReason.CONTAINER_EXITED && !tty) {
    const missed = await readMissedEnd(docker, externalId, decoder, options.tail, signal);
    if (signal.aborted) return;
    last.lines.push(...missed.lines);
    last.errors.push(...missed.errors);
  }
  yield { lines: [...last.lines, ...decoder.flush()], errors: last.errors, end };
}

/**
 * After a followed log ended with the container exited: the messages the engine's follower did
 * not send (moby/moby#43860), read without follow. Failing to read them is reported in `errors`.
 */
async function readMissedEnd(docker: Dockerode, externalId: string, decoder: DockerLogDecoder, tail: number, signal: AbortSignal): Promise<DecodedLogs> {
  const from = decoder.resumePoint();
  const out: DecodedLogs = { lines: [], errors: [] };
  let res: IncomingMessage | undefined;
  try {
    // Nothing seen yet: the same request again (the follower may have missed everything).
    res = await openLogStream(docker, externalId, { tty: false, tail: from.sinceNs === undefined ? tail : 0, follow: false, sinceNs: from.sinceNs }, signal);
    decoder.nextResponse(from.skip);
    for await (const chunk of res as AsyncIterable<Buffer>) {
      const got = decoder.push(chunk);
      out.lines.push(...got.lines);
      out.errors.push(...got.errors);
    }
    const last = decoder.endResponse();
    out.lines.push(...last.lines);
    out.errors.push(...last.errors);
    if (last.failure !== undefined) out.errors.push(last.failure);
  } catch (e) {
    if (!signal.aborted) out.errors.push(`could not read the end of the log after the container exited: ${messageWithErrno(e)}`);
  } finally {
    res?.destroy();
  }
  return out;
}

interface DecodedLogs {
  lines: LogLine[];
  errors: string[];
}

/**
 * A log's bytes → LogLines and daemon errors: frames (or raw TTY bytes), timestamp prefixes
 * stripped, one assembler per stream so a line is emitted once complete. A log may be read in
 * two responses (a follow, then what it missed): the assemblers carry on across them.
 */
class DockerLogDecoder {
  private frames: DockerLogFrameParser | undefined;
  private readonly assemblers: Map<LogStream, LogLineAssembler>;
  /** The frame times seen (ns), for resumePoint(); only the last RESUME_WINDOW_NS are kept. */
  private seen: bigint[] = [];
  private firstSeenNs: bigint | undefined;
  private maxSeenNs: bigint | undefined;
  /** Timestamped frames still to skip at the start of a second response (already seen). */
  private skip = 0;

  constructor(
    tty: boolean,
    private readonly keepTimestamps: boolean,
  ) {
    this.frames = tty ? undefined : new DockerLogFrameParser();
    this.assemblers = new Map(
      (tty ? [LogStream.TTY] : [LogStream.STDOUT, LogStream.STDERR]).map((s) => [s, new LogLineAssembler(s)]),
    );
  }

  /** Throws DockerLogFrameError when the bytes are not frames. */
  push(chunk: Uint8Array): DecodedLogs {
    if (!this.frames) return { lines: this.finish(this.assemblers.get(LogStream.TTY)!.push(chunk)), errors: [] };
    const out: DecodedLogs = { lines: [], errors: [] };
    for (const frame of this.frames.push(chunk)) this.frame(frame, out);
    return out;
  }

  /**
   * One response ended. It must end between frames: otherwise `failure` says so, and what did
   * arrive of the cut frame is kept as log text.
   */
  endResponse(): DecodedLogs & { failure?: string } {
    const out: DecodedLogs & { failure?: string } = { lines: [], errors: [] };
    try {
      this.frames?.end();
    } catch (e) {
      if (!(e instanceof DockerLogFrameError)) throw e;
      // What did arrive of the cut frame is log text too, once past its timestamp prefix
      // (always requested without TTY); before that, none of the container's bytes came.
      const p = e.partial;
      const isText = p?.stream === DockerFrameStream.stdout || p?.stream === DockerFrameStream.stderr;
      if (p && (!isText || splitTimestamp(p.payload).timestamp)) this.frame(p, out);
      out.failure = `the engine's log stream was cut: ${e.message}`;
    }
    return out;
  }

  /**
   * Where to read the log again to get what a follower missed: `since` a little before the
   * last frame seen (frames are stamped by one copier per stream and written in the order they
   * reach the log file, so times may be slightly out of order), but not before the first frame
   * seen (a tail started there). The engine answers every message stamped at or after `since`
   * in file order, and what we saw is a prefix of the file, so its first `skip` frames are the
   * ones we already have. Undefined `sinceNs`: nothing seen, read it all again.
   */
  resumePoint(): { sinceNs: bigint | undefined; skip: number } {
    if (this.maxSeenNs === undefined || this.firstSeenNs === undefined) return { sinceNs: undefined, skip: 0 };
    const window = this.maxSeenNs - RESUME_WINDOW_NS;
    const sinceNs = window > this.firstSeenNs ? window : this.firstSeenNs;
    return { sinceNs, skip: this.seen.filter((t) => t >= sinceNs).length };
  }

  /** A second response follows (non-TTY): its first `skip` timestamped frames are repeats. */
  nextResponse(skip: number): void {
    this.frames = new DockerLogFrameParser();
    this.skip = skip;
  }

  /** The log ended: the unterminated rests of the lines. */
  flush(): LogLine[] {
    const rests = [...this.assemblers.values()].flatMap((a) => a.end());
    // Both streams may end inside a line; the one that started first comes first (the sort is
    // stable, so stdout first when the times are equal or unknown).
    rests.sort((a, b) => compareTimestamps(a.timestamp, b.timestamp));
    return this.finish(rests);
  }

  private frame(frame: DockerLogFrame, out: DecodedLogs): void {
    switch (frame.stream) {
      case DockerFrameStream.stdout:
      case DockerFrameStream.stderr: {
        const { timestamp, text } = splitTimestamp(frame.payload);
        if (timestamp) {
          if (this.skip > 0) {
            this.skip--;
            return;
          }
          this.remember(timestamp);
        }
        const stream = frame.stream === DockerFrameStream.stdout ? LogStream.STDOUT : LogStream.STDERR;
        out.lines.push(...this.finish(this.assemblers.get(stream)!.push(text, timestamp)));
        return;
      }
      case DockerFrameStream.daemonError:
        out.errors.push(new TextDecoder().decode(frame.payload).trimEnd());
        return;
      case DockerFrameStream.stdin:
        // The engine never logs stdin; say so rather than drop or mislabel the bytes.
        out.errors.push(`unexpected stdin frame (${frame.payload.length} bytes) in the log stream`);
        return;
    }
  }

  private remember(timestamp: Timestamp): void {
    const ns = timestamp.seconds * 1_000_000_000n + BigInt(timestamp.nanos);
    this.firstSeenNs ??= ns;
    if (this.maxSeenNs === undefined || ns > this.maxSeenNs) this.maxSeenNs = ns;
    this.seen.push(ns);
    // Amortised pruning: drop the times that can no longer be at or after a resume point.
    if (this.seen.length >= 2048 && this.seen.length % 2048 === 0) {
      const oldest = this.maxSeenNs - RESUME_WINDOW_NS;
      this.seen = this.seen.filter((t) => t >= oldest);
    }
  }

  /** Timestamps are kept internally (ordering, resuming) and dropped here if not asked for. */
  private finish(lines: LogLine[]): LogLine[] {
    if (!this.keepTimestamps) for (const l of lines) l.timestamp = undefined;
    return lines;
  }
}

/** How far before the last frame seen a second read starts (see resumePoint). */
const RESUME_WINDOW_NS = 1_000_000_000n;

// "2006-01-02T15:04:05.999999999-07:00" and a space: the longest prefix Go's RFC3339Nano makes.
const MAX_TIMESTAMP_PREFIX = 36;

/**
 * Splits "<RFC3339Nano> text" as the engine writes each frame with timestamps=1. A frame without
 * a parseable prefix is kept whole as text (nothing of what the container wrote is dropped).
 */
function splitTimestamp(payload: Uint8Array): { timestamp: Timestamp | undefined; text: Uint8Array } {
  const space = payload.subarray(0, MAX_TIMESTAMP_PREFIX).indexOf(0x20);
  if (space > 0) {
    const timestamp = parseRfc3339Nano(Buffer.from(payload.buffer, payload.byteOffset, space).toString("latin1"));
    if (timestamp) return { timestamp, text: payload.subarray(space + 1) };
  }
  return { timestamp: undefined, text: payload };
}

function compareTimestamps(a: Timestamp | undefined, b: Timestamp | undefined): number {
  if (!a || !b) return 0;
  if (a.seconds !== b.seconds) return a.seconds < b.seconds ? -1 : 1;
  return a.nanos - b.nanos;
}

/** GET /containers/{id}/logs as a stream (also when not following: see below). */
function openLogStream(
  docker: Dockerode,
  externalId: string,
  req: { tty: boolean; tail: number; follow: boolean; sinceNs?: bigint | undefined },
  signal: AbortSignal | undefined,
): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    // Through modem.dial rather than container.logs(): with follow=false, dockerode buffers the
    // whole body into a string and returns JSON.parse of it when that succeeds (a TTY log that
    // reads "42" would come back as a number); as a stream we get the bytes, read incrementally.
    docker.modem.dial(
      {
        path: `/containers/${encodeURIComponent(externalId)}/logs?`,
        method: "GET",
        isStream: true,
        ...(signal ? { abortSignal: signal } : {}),
        statusCodes: { 200: true, 400: "bad parameter", 404: "no such container", 500: "server error", 501: "not implemented" },
        options: {
          follow: req.follow ? 1 : 0,
          stdout: 1,
          stderr: 1,
          timestamps: req.tty ? 0 : 1,
          tail: req.tail > 0 ? String(req.tail) : "all",
          // The engine takes "seconds.nanoseconds" and keeps messages stamped at or after it.
          ...(req.sinceNs !== undefined ? { since: `${req.sinceNs / 1_000_000_000n}.${(req.sinceNs % 1_000_000_000n).toString().padStart(9, "0")}` } : {}),
        },
      },
      (err, result) => {
        if (err) return reject(err);
        const res = result as IncomingMessage;
        // http.request's signal only covers the request; make an abort destroy the body too.
        if (signal) addAbortSignal(signal, res);
        resolve(res);
      },
    );
  });
}

/**
 * Why a followed log ended: the engine ends it when the container stops (its log driver closes).
 * Inspect tells exited from removed from an engine that went away.
 */
async function whyFollowEnded(docker: Dockerode, externalId: string, openedAtNs: bigint, signal: AbortSignal): Promise<{ reason: LogEndReason; detail: string }> {
  // The engine closes the log before it records the exit, but under the container's lock, which
  // inspect also takes; the retries only cover an engine that orders this differently.
  for (let attempt = 0; ; attempt++) {
    let info: Dockerode.ContainerInspectInfo;
    try {
      info = await docker.getContainer(externalId).inspect({ abortSignal: signal });
    } catch (e) {
      if (statusCodeOf(e) === 404) return { reason: LogEndReason.CONTAINER_REMOVED, detail: `container ${externalId} was removed` };
      return { reason: LogEndReason.RUNTIME_ERROR, detail: dockerLogsError(e, externalId).rawMessage };
    }
    const state = info.State;
    if (state.Status === "removing") return { reason: LogEndReason.CONTAINER_REMOVED, detail: `container ${externalId} is being removed` };
    const started = parseRfc3339Nano(state.StartedAt);
    const restarted = started !== undefined && started.seconds * 1_000_000_000n + BigInt(started.nanos) > openedAtNs;
    if (!state.Running || state.Restarting || restarted) {
      const how = state.OOMKilled ? "was OOM-killed" : `exited with code ${state.ExitCode}`;
      return { reason: LogEndReason.CONTAINER_EXITED, detail: `container ${externalId} ${how}${state.Running ? " and was restarted" : ""}` };
    }
    if (attempt >= 4 || signal.aborted) {
      return { reason: LogEndReason.RUNTIME_ERROR, detail: `the engine ended the log stream of ${externalId} while the container is still running` };
    }
    await new Promise((r) => setTimeout(r, 100 * (attempt + 1)));
  }
}

/**
 * An engine failure as the runtime contract wants it: NOT_FOUND for a missing container,
 * UNAVAILABLE when there was no answer from the engine, the engine's own message kept.
 */
function dockerLogsError(e: unknown, externalId: string): ConnectError {
  if (e instanceof ConnectError) return e;
  // The codes are docker-errors.ts's, as for every other Docker call; the words are the logs'.
  const code = dockerErrorCode(e);
  switch (code) {
    case Code.Canceled:
      return new ConnectError("log request cancelled", code, undefined, undefined, e);
    case Code.Unavailable:
      return new ConnectError(`docker engine unreachable: ${messageWithErrno(e)}`, code, undefined, undefined, e);
    case Code.NotFound:
      return new ConnectError(`docker: no such container: ${externalId}`, code, undefined, undefined, e);
    default:
      return new ConnectError(`docker: ${statusCodeOf(e) === undefined ? messageWithErrno(e) : engineMessage(e)}`, code, undefined, undefined, e);
  }
}

function statusCodeOf(e: unknown): number | undefined {
  const status = (e as { statusCode?: unknown } | null)?.statusCode;
  return typeof status === "number" ? status : undefined;
}

/**
 * The engine's message from a docker-modem HTTP error: `json.message` for buffered answers; for
 * streamed ones docker-modem only puts it in its own text "(HTTP code N) reason - MESSAGE ".
 */
function engineMessage(e: unknown): string {
  const json = (e as { json?: { message?: unknown } | null }).json;
  if (json && typeof json.message === "string") return json.message;
  const text = messageWithErrno(e);
  const m = /^\(HTTP code \d+\) [^-]*- (.*)$/s.exec(text);
  return (m ? m[1]! : text).trim();
}

/** The message with the errno code (ECONNRESET, EPIPE) when the message does not say it. */
function messageWithErrno(e: unknown): string {
  if (e instanceof Error) {
    const code = (e as NodeJS.ErrnoException).code;
    return code && !e.message.includes(code) ? `${e.message} (${code})` : e.message;
  }
  return String(e);
}
