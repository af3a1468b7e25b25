/**
 * The newest `capacity` items of a numbered stream (numbers strictly increasing, not
 * necessarily contiguous), for watches that resume from a number: `after(n)` gives every kept
 * item numbered above n, or undefined when items after n were already dropped — the caller
 * must then tell its client to resync instead of skipping silently. A circular buffer: push is
 * O(1), after() is a binary search plus the copy.
 */
export class EventRing<T> {
  private readonly seqs: number[];
  private readonly items: (T | undefined)[];
  private start = 0;
  private count = 0;
  /** Everything numbered <= floor that was ever pushed has been dropped (or came before the ring). */
  private floorSeq: number;
  private lastSeq: number;

  constructor(
    readonly capacity: number,
    /** The number the stream starts after (e.g. the version the state was loaded at). */
    startAfter = 0,
  ) {
    if (!(capacity >= 1)) throw new Error(`EventRing capacity must be >= 1, got ${capacity}`);
    this.seqs = new Array<number>(capacity);
    this.items = new Array<T | undefined>(capacity);
    this.floorSeq = this.lastSeq = startAfter;
  }

  /** The number of the newest item (or startAfter). */
  get last(): number {
    return this.lastSeq;
  }

  /** after(n) is defined for floor <= n <= last. */
  get floor(): number {
    return this.floorSeq;
  }

  get size(): number {
    return this.count;
  }

  push(seq: number, item: T): void {
    if (!(seq > this.lastSeq)) throw new Error(`EventRing: ${seq} does not follow ${this.lastSeq}`);
    if (this.count === this.capacity) {
      // Drop the oldest: a resume from before it is no longer possible.
      this.floorSeq = this.seqs[this.start]!;
      this.items[this.start] = undefined;
      this.start = (this.start + 1) % this.capacity;
      this.count--;
    }
    const at = (this.start + this.count) % this.capacity;
    this.seqs[at] = seq;
    this.items[at] = item;
    this.count++;
    this.lastSeq = seq;
  }

  /** Items numbered above `seq`, oldest first, at most `limit`; undefined when seq < floor. */
  after(seq: number, limit = Infinity): { seq: number; item: T }[] | undefined {
    if (seq < this.floorSeq) return undefined;
    // First kept index whose number is > seq.
    let lo = 0;
    let hi = this.count;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.seqs[(this.start + mid) % this.capacity]! > seq) hi = mid;
      else lo = mid + 1;
    }
    const out: { seq: number; item: T }[] = [];
    for (let k = lo; k < this.count && out.length < limit; k++) {
      const at = (this.start + k) % this.capacity;
      out.push({ seq: this.seqs[at]!, item: this.items[at] as T });
    }
    return out;
  }
}

/**
 * A watch cursor "<incarnation>.<seq>" (runtime events, the fleet inventory), split; undefined
 * when the text is not one at all (the caller answers INVALID_ARGUMENT).
 */
export function splitCursor(cursor: string): { incarnation: string; seq: number } | undefined {
  const dot = cursor.lastIndexOf(".");
  const seqText = dot > 0 ? cursor.slice(dot + 1) : "";
  if (dot <= 0 || !/^\d{1,15}$/.test(seqText)) return undefined;
  return { incarnation: cursor.slice(0, dot), seq: Number(seqText) };
}
