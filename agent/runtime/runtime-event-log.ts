import type { RuntimeEvent } from "../../gen/fleetlet/agent/v1/runtime_pb.js";

export interface LoggedEvent {
  seq: number;
  event: RuntimeEvent;
}

export type CursorLookup =
  | { kind: "events"; events: LoggedEvent[] }
  /** The cursor cannot be resumed from: the client must resync (OUT_OF_RANGE semantics). */
  | { kind: "resync"; reason: string };

/**
 * The agent's recent runtime events, numbered, for WatchRuntimeEvents cursors (runtime.md
 * "Clients ... get a cursor with every event and may resume from it"). Keeps the last
 * `capacity` events in memory; a cursor is "<incarnation>.<seq>", so a cursor from before an
 * agent restart (another incarnation) or older than what is kept is answered with a resync
 * instead of a silent gap.
 */
export class RuntimeEventLog {
  private readonly ring: LoggedEvent[] = [];
  private seq = 0;
  private readonly listeners = new Set<(e: LoggedEvent) => void>();

  constructor(
    readonly incarnation: string,
    private readonly capacity = 4096,
  ) {}

  get lastSeq(): number {
    return this.seq;
  }

  append(event: RuntimeEvent): LoggedEvent {
    const logged = { seq: ++this.seq, event };
    this.ring.push(logged);
    if (this.ring.length > this.capacity) this.ring.shift();
    for (const l of this.listeners) l(logged);
    return logged;
  }

  cursor(seq: number): string {
    return `${this.incarnation}.${seq}`;
  }

  /**
   * Events after `cursor`. Throws CursorFormatError for something that is not a cursor at all
   * (the caller answers INVALID_ARGUMENT); a valid but unusable one is a "resync".
   */
  after(cursor: string): CursorLookup {
    const dot = cursor.lastIndexOf(".");
    const seqText = dot > 0 ? cursor.slice(dot + 1) : "";
    if (dot <= 0 || !/^\d{1,15}$/.test(seqText)) throw new CursorFormatError(`${JSON.stringify(cursor.slice(0, 80))} is not a cursor from this API`);
    const incarnation = cursor.slice(0, dot);
    const seq = Number(seqText);
    if (incarnation !== this.incarnation) return { kind: "resync", reason: "cursor is from another agent incarnation (the agent restarted)" };
    if (seq > this.seq) return { kind: "resync", reason: `cursor ${seq} is ahead of the newest event ${this.seq}` };
    const oldest = this.ring[0]?.seq ?? this.seq + 1;
    // Resumable when the first event after the cursor is still kept.
    if (seq + 1 < oldest) return { kind: "resync", reason: `cursor ${seq} is older than the ${this.capacity} events kept (oldest ${oldest})` };
    return { kind: "events", events: this.ring.filter((e) => e.seq > seq) };
  }

  subscribe(listener: (e: LoggedEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
}

export class CursorFormatError extends Error {
  override name = "CursorFormatError";
}
