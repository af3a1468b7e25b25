import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { LogStream, type LogLine } from "../../../gen/fleetlet/agent/v1/runtime_pb.js";
import { LogLineAssembler, parseRfc3339Nano } from "../log-line-assembler.js";

// "2025-11-20T09:14:03.123456789Z " — RFC 3339 with up to 9 fraction digits and an offset.
const MAX_PREFIX = 40;

/**
 * The pods/log endpoint's text as LogLines. Kubernetes merges a container's stdout and stderr
 * into one text stream, so every line is STDOUT. With timestamps=true the kubelet starts each
 * line with its RFC3339Nano time and a space; that prefix becomes LogLine.timestamp. A line cut
 * into 64 KiB pieces carries the timestamp only in front of its first piece: the other pieces
 * get the same timestamp and keep their text as is.
 */
export class PodLogReader {
  private readonly assembler = new LogLineAssembler(LogStream.STDOUT);
  /** The previous piece was `continued`: the next piece is the rest of its line. */
  private continuing: Timestamp | undefined | null = null;

  constructor(private readonly timestamps: boolean) {}

  push(chunk: Uint8Array): LogLine[] {
    return this.strip(this.assembler.push(chunk));
  }

  end(): LogLine[] {
    return this.strip(this.assembler.end());
  }

  private strip(lines: LogLine[]): LogLine[] {
    if (!this.timestamps) return lines;
    for (const line of lines) {
      if (this.continuing !== null) {
        if (this.continuing) line.timestamp = this.continuing;
      } else {
        stripTimestamp(line);
      }
      this.continuing = line.continued ? (line.timestamp ?? undefined) : null;
    }
    return lines;
  }
}

/** Moves a leading "<RFC3339Nano> " of the line into its timestamp; leaves other lines alone. */
export function stripTimestamp(line: LogLine): void {
  const space = line.text.indexOf(" ");
  if (space <= 0 || space > MAX_PREFIX) return;
  const at = parseRfc3339Nano(line.text.slice(0, space));
  if (!at) return;
  line.timestamp = at;
  line.text = line.text.slice(space + 1);
  // The prefix is ASCII: as many bytes as characters.
  if (line.raw.length > 0) line.raw = line.raw.slice(space + 1);
}
