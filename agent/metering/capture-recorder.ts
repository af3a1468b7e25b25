import type { LifecycleLedger } from "../inventory/instance-registry.js";
import type { LifecycleEntry } from "./lifecycle-entries.js";

/**
 * Seed 000's CaptureRecorder: a ledger that keeps the entries in memory, for tests that assert
 * what a sequence of lifecycle changes emits. It is a LifecycleLedger like the file ledger, so
 * the registry runs its real commit path against it (group commit, pending entries, the start-up
 * cross-check). It can also be made to fail appends (a full disk) or lose its tail (a ledger
 * behind its registry): the faults the registry must survive.
 */
export class CaptureRecorder implements LifecycleLedger {
  private readonly captured: LifecycleEntry[] = [];
  /** Appends that succeeded (group commit makes this fewer than changes). */
  appends = 0;
  /** Appends that failed (failNext / failAll). */
  failures = 0;
  /** The next append fails once. */
  failNext = false;
  /** Every append fails while set. */
  failAll = false;

  constructor(
    /** Its identity, as the file ledger's ledger_id; undefined: the cross-check ignores it. */
    readonly ledgerId?: string,
    /** The error a failing append throws. */
    private readonly failure = "ENOSPC: no space left on device, write",
  ) {}

  get lastSeq(): number {
    return this.captured.length;
  }

  /** A snapshot copy, in seq order (seq = index + 1): callers may change it freely. */
  entries(): LifecycleEntry[] {
    return this.captured.map((e) => ({ ...e, shape: { ...e.shape } }));
  }

  read(fromSeq: number, limit: number): LifecycleEntry[] {
    return this.captured.slice(fromSeq - 1, fromSeq - 1 + limit).map((e) => ({ ...e, shape: { ...e.shape } }));
  }

  /** Durable "later", like a real append (a turn of the event loop), or a failure. */
  async append(entries: LifecycleEntry[]): Promise<unknown> {
    await new Promise((r) => setImmediate(r));
    if (this.failNext || this.failAll) {
      this.failNext = false;
      this.failures++;
      throw new Error(this.failure);
    }
    this.appends++;
    this.captured.push(...entries.map((e) => ({ ...e, shape: { ...e.shape } })));
    return entries;
  }

  /** Keeps the first `lastSeq` entries only: a ledger that lost its newest ones. */
  truncate(lastSeq: number): void {
    this.captured.splice(lastSeq);
  }
}
