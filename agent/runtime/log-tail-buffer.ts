import type { LogLine } from "../../gen/fleetlet/agent/v1/runtime_pb.js";

/** What one FetchContainerLogs answer holds at most (the aggregator accepts 64 MiB messages). */
export const MAX_FETCH_LOG_BYTES = 16 * 1024 * 1024;

/**
 * The newest lines of a fetched log, at most `maxBytes` of them: a `tail` of 0 ("all") on a
 * json-file log of gigabytes must not hold it all in the agent. Older lines are dropped as newer
 * ones come; `dropped` says how many, for the answer's `errors`.
 */
export class LogTailBuffer {
  private readonly kept: LogLine[] = [];
  private head = 0;
  private bytes = 0;
  dropped = 0;

  constructor(private readonly maxBytes = MAX_FETCH_LOG_BYTES) {}

  push(lines: readonly LogLine[]): void {
    for (const line of lines) {
      this.kept.push(line);
      this.bytes += size(line);
    }
    while (this.bytes > this.maxBytes && this.head < this.kept.length - 1) {
      this.bytes -= size(this.kept[this.head]!);
      this.head++;
      this.dropped++;
    }
    // Compact now and then, so dropped lines are not kept alive by the array.
    if (this.head > 4096 && this.head * 2 > this.kept.length) {
      this.kept.splice(0, this.head);
      this.head = 0;
    }
  }

  lines(): LogLine[] {
    return this.kept.slice(this.head);
  }

  /** The `errors` entry when lines were dropped, else undefined. */
  note(): string | undefined {
    return this.dropped > 0 ? `log longer than ${this.maxBytes / 1048576} MiB: the ${this.dropped} oldest lines were left out (use tail, or StreamContainerLogs)` : undefined;
  }
}

function size(line: LogLine): number {
  return line.text.length + line.raw.length + 32;
}
