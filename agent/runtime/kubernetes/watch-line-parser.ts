import { toStatus, type KubeStatus } from "./kube-objects.js";
import { errorMessage } from "../../../lib/error-message.js";

/** A watch stream line that is not a watch event. */
export class WatchLineError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "WatchLineError";
  }
}

export type WatchEvent =
  | { type: "ADDED" | "MODIFIED" | "DELETED"; object: Record<string, unknown>; resourceVersion: string }
  /** Only the resourceVersion is meaningful (the object is an empty shell of the kind). */
  | { type: "BOOKMARK"; resourceVersion: string }
  | { type: "ERROR"; status: KubeStatus };

const OBJECT_TYPES = new Set(["ADDED", "MODIFIED", "DELETED"]);

/**
 * One line of a JSON watch stream (`{"type":"ADDED","object":{...}}`) as a WatchEvent.
 * Throws WatchLineError, never anything else: a stream that sends something else is broken and
 * the caller restarts the watch rather than skipping an event it could not read (the library's
 * Watch skips such lines silently, which would lose a change for good).
 */
export function parseWatchLine(line: string): WatchEvent {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch (e) {
    throw new WatchLineError(`watch line is not JSON (${errorMessage(e)}): ${preview(line)}`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) throw new WatchLineError(`watch line is not a JSON object: ${preview(line)}`);
  const { type, object } = value as { type?: unknown; object?: unknown };
  if (typeof type !== "string") throw new WatchLineError(`watch event without a type: ${preview(line)}`);
  if (typeof object !== "object" || object === null || Array.isArray(object)) throw new WatchLineError(`watch event ${type} without an object`);
  if (type === "ERROR") {
    const status = toStatus(object);
    if (!status) throw new WatchLineError("watch ERROR event whose object is not a Status");
    return { type, status };
  }
  const metadata = (object as { metadata?: unknown }).metadata;
  const rv = typeof metadata === "object" && metadata !== null ? (metadata as { resourceVersion?: unknown }).resourceVersion : undefined;
  if (typeof rv !== "string" || rv === "") throw new WatchLineError(`watch event ${type} without metadata.resourceVersion`);
  if (type === "BOOKMARK") return { type, resourceVersion: rv };
  if (!OBJECT_TYPES.has(type)) throw new WatchLineError(`unknown watch event type ${JSON.stringify(type.slice(0, 40))}`);
  return { type: type as "ADDED" | "MODIFIED" | "DELETED", object: object as Record<string, unknown>, resourceVersion: rv };
}

function preview(line: string): string {
  return JSON.stringify(line.length > 80 ? `${line.slice(0, 80)}...` : line);
}

const NEWLINE = 0x0a;
// etcd caps an object at 1.5 MiB; an event line is that plus a little.
export const MAX_WATCH_LINE_BYTES = 16 * 1024 * 1024;

/**
 * Cuts a watch response body, in chunks split anywhere (also inside a UTF-8 character), into
 * lines. Throws WatchLineError when a line grows beyond `maxLineBytes`.
 */
export class WatchLineReader {
  private pending: Buffer[] = [];
  private pendingBytes = 0;

  constructor(private readonly maxLineBytes = MAX_WATCH_LINE_BYTES) {}

  push(chunk: Uint8Array): string[] {
    const out: string[] = [];
    let start = 0;
    for (;;) {
      const nl = chunk.indexOf(NEWLINE, start);
      const end = nl < 0 ? chunk.length : nl;
      if (end > start) {
        this.pendingBytes += end - start;
        if (this.pendingBytes > this.maxLineBytes) {
          this.pending = [];
          this.pendingBytes = 0;
          throw new WatchLineError(`watch line longer than ${this.maxLineBytes} bytes`);
        }
        // A copy: the caller may reuse its chunk.
        this.pending.push(Buffer.from(chunk.subarray(start, end)));
      }
      if (nl < 0) break;
      const line = Buffer.concat(this.pending).toString("utf8");
      this.pending = [];
      this.pendingBytes = 0;
      // Blank lines (keep-alives of some proxies) are not events.
      if (line.trim() !== "") out.push(line);
      start = nl + 1;
    }
    return out;
  }

  /** The stream ended: a last line without "\n" (the server closed mid-line, or never sent one). */
  end(): string | undefined {
    const line = Buffer.concat(this.pending).toString("utf8");
    this.pending = [];
    this.pendingBytes = 0;
    return line.trim() === "" ? undefined : line;
  }
}
