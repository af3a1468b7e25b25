import { Code, ConnectError } from "@connectrpc/connect";
import { invalidArgument } from "../rpc/field-error.js";
import { decodePageToken, encodePageToken } from "./page-token.js";

/** page_size 0. */
export const DEFAULT_PAGE_SIZE = 1000;
/** A larger page_size is lowered to this (AIP-158: coerced, not refused). */
export const MAX_PAGE_SIZE = 10_000;
/**
 * A page ends before its answer would pass this many bytes: half of the 4 MiB that grpc-js,
 * grpc-go and buf curl accept by default, so a page fits any default client with room to
 * spare. A single item larger than this still makes a page of its own (our items are at most
 * tens of KiB: 64 labels of 256 characters).
 */
export const PAGE_BYTES = 2 * 1024 * 1024;
/** States kept for lists being paged while they change (each pins one generation of items). */
export const KEEP_LISTS = 4;
/** A kept state not read for this long is dropped: its next page answers OUT_OF_RANGE. */
export const KEEP_IDLE_MS = 60_000;
/** Room left for next_page_token itself (a scope, a version and one key). */
const TOKEN_BYTES = 1024;

/** A list as of one version, sorted by key. */
export interface ListState<T, M> {
  /** Names this state: equal versions list the same items (e.g. "<incarnation>.<resource version>"). */
  version: string;
  items: readonly T[];
  /** The rest of the answer, the same on every page of this list (version, digest, ...). */
  meta: M;
  /** Encoded size of `meta` in the answer. */
  metaBytes: number;
}

export interface PageRequest {
  pageSize: number;
  pageToken: string;
}

export interface Page<T, M> {
  items: readonly T[];
  meta: M;
  /** Empty on the last page. */
  nextPageToken: string;
}

export interface ListPagerOptions<T> {
  /** Names the list in its tokens, so one list's token is refused by another. */
  scope: string;
  /** Items are sorted by this key in JavaScript string order, strictly increasing. */
  keyOf: (item: T) => string;
  /** Bytes the item adds to the answer, field tag and length included. */
  itemBytes: (item: T) => number;
  pageBytes?: number;
  keep?: number;
  keepIdleMs?: number;
  /** Monotonic milliseconds (tests pass their own). */
  now?: () => number;
}

interface Kept<T, M> {
  state: ListState<T, M>;
  usedMs: number;
}

/**
 * Paged reads of a list that changes (AIP-158 page_size / page_token, Kubernetes
 * limit/continue): every page of one list comes from the state its first page was taken
 * from, so across pages each item is given exactly once however the list changes meanwhile.
 * The token carries that state's version and the last key given. States are immutable
 * snapshots (sorted arrays of immutable items, shared with the live list until it changes),
 * so keeping one costs an array of references plus whatever items it alone still holds; a
 * few are kept (LRU, dropped after a minute unread). A token whose state is gone is served
 * from the live list when that is still at the same version, and otherwise answered
 * OUT_OF_RANGE (Kubernetes: 410 Expired): restart the list, as after an expired watch cursor.
 */
export class ListPager<T, M> {
  private readonly kept = new Map<string, Kept<T, M>>();
  private readonly pageBytes: number;
  private readonly keep: number;
  private readonly keepIdleMs: number;
  private readonly now: () => number;

  constructor(private readonly options: ListPagerOptions<T>) {
    this.pageBytes = options.pageBytes ?? PAGE_BYTES;
    this.keep = options.keep ?? KEEP_LISTS;
    this.keepIdleMs = options.keepIdleMs ?? KEEP_IDLE_MS;
    this.now = options.now ?? (() => performance.now());
  }

  /**
   * One page. `current` gives the live list (called for a first page, or when a token's state
   * is no longer kept); `filter` fingerprints the request's other fields, which must stay the
   * same across the pages of one list.
   */
  page(req: PageRequest, current: () => ListState<T, M>, filter = ""): Page<T, M> {
    if (req.pageSize < 0) throw invalidArgument("page_size", `must be >= 0 (0 = ${DEFAULT_PAGE_SIZE}), got ${req.pageSize}`);
    const size = Math.min(req.pageSize === 0 ? DEFAULT_PAGE_SIZE : req.pageSize, MAX_PAGE_SIZE);
    const nowMs = this.now();
    this.expire(nowMs);
    let state: ListState<T, M>;
    let start = 0;
    if (req.pageToken === "") {
      state = current();
    } else {
      const token = decodePageToken(req.pageToken, this.options.scope);
      if (token.filter !== filter) {
        throw invalidArgument("page_token", "was given for a request with other filters: keep every other field of the first page's request");
      }
      const kept = this.kept.get(keyOf(filter, token.version));
      if (kept) {
        state = kept.state;
      } else {
        state = current();
        if (state.version !== token.version) {
          throw new ConnectError(
            `page_token: the list changed since its first page (at version ${token.version}, now ${state.version}) and that state is no longer kept: list again without page_token`,
            Code.OutOfRange,
          );
        }
      }
      start = this.after(state.items, token.after);
    }
    const end = this.pageEnd(state, start, size);
    const more = end < state.items.length;
    const key = keyOf(filter, state.version);
    if (more) {
      // LRU: the most recently used is last in the map. (Kept after a last page too, until it
      // expires: another client may be reading the same state.)
      this.kept.delete(key);
      this.kept.set(key, { state, usedMs: nowMs });
      while (this.kept.size > this.keep) this.kept.delete(this.kept.keys().next().value!);
    }
    return {
      items: state.items.slice(start, end),
      meta: state.meta,
      nextPageToken: more
        ? encodePageToken({ scope: this.options.scope, version: state.version, after: this.options.keyOf(state.items[end - 1]!), filter })
        : "",
    };
  }

  /** Kept states (tests, metrics). */
  get keptCount(): number {
    return this.kept.size;
  }

  private expire(nowMs: number): void {
    for (const [key, k] of this.kept) if (nowMs - k.usedMs > this.keepIdleMs) this.kept.delete(key);
  }

  /** Index of the first item whose key is after `key` (binary search). */
  private after(items: readonly T[], key: string): number {
    let lo = 0;
    let hi = items.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.options.keyOf(items[mid]!) <= key) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** At most `size` items from `start`, stopping before the answer passes pageBytes (at least one). */
  private pageEnd(state: ListState<T, M>, start: number, size: number): number {
    const limit = Math.min(state.items.length, start + size);
    let bytes = state.metaBytes + TOKEN_BYTES;
    let end = start;
    while (end < limit) {
      const b = this.options.itemBytes(state.items[end]!);
      if (end > start && bytes + b > this.pageBytes) break;
      bytes += b;
      end++;
    }
    return end;
  }
}

/**
 * How many of `items` (from the first) fit an answer of `PAGE_BYTES` besides `reservedBytes`
 * (at least one): for reads that already continue by position (a next sequence number) and
 * only need their answers bounded in bytes as well as in count.
 */
export function countWithinBytes<T>(items: readonly T[], itemBytes: (item: T) => number, reservedBytes = TOKEN_BYTES): number {
  let bytes = reservedBytes;
  let n = 0;
  for (const item of items) {
    const b = itemBytes(item);
    if (n > 0 && bytes + b > PAGE_BYTES) break;
    bytes += b;
    n++;
  }
  return n;
}

function keyOf(filter: string, version: string): string {
  return `${filter}\n${version}`;
}

/** Bytes of a length-delimited field with a number below 16 holding `length` bytes. */
export function fieldBytes(length: number): number {
  let varint = 1;
  for (let v = length; v >= 0x80; v >>>= 7) varint++;
  return 1 + varint + length;
}
