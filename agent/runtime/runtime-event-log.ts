import type { RuntimeEvent } from "../../gen/fleetlet/agent/v1/runtime_pb.js";
import { EventRing, splitCursor } from "../../lib/event-ring.js";

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
 * `capacity` events in memory (lib/event-ring.ts); a cursor is "<incarnation>.<seq>", so a cursor from before an
 * agent restart (another incarnation) or older than what is kept is answered with a resync
 * instead of a silent gap.
 */
export class RuntimeEventLog {
  private readonly ring: EventRing<RuntimeEvent>;
  private readonly listeners = new Set<(e: LoggedEvent) => void>();

  constructor(
    readonly incarnation: string,
    private readonly capacity = 4096,
  ) {
    this.ring = new EventRing(capacity);
  }

  get lastSeq(): number {
    return this.ring.last;
  }

  append(event: RuntimeEvent): LoggedEvent {
    const logged = { seq: this.ring.last + 1, event };
    this.ring.push(logged.seq, event);
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
    const parsed = splitCursor(cursor);
    if (!parsed) throw new CursorFormatError(`${JSON.stringify(cursor.slice(0, 80))} is not a cursor from this API`);
    const { incarnation, seq } = parsed;
    if (incarnation !== this.incarnation) return { kind: "resync", reason: "cursor is from another agent incarnation (the agent restarted)" };
    if (seq > this.ring.last) return { kind: "resync", reason: `cursor ${seq} is ahead of the newest event ${this.ring.last}` };
    // Resumable when the first event after the cursor is still kept.
    const kept = this.ring.after(seq);
    if (!kept) return { kind: "resync", reason: `cursor ${seq} is older than the ${this.capacity} events kept (oldest ${this.ring.floor + 1})` };
    return { kind: "events", events: kept.map(({ seq: s, item }) => ({ seq: s, event: item })) };
  }

  subscribe(listener: (e: LoggedEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
}

export class CursorFormatError extends Error {
  override name = "CursorFormatError";
}
