import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { removeStaleTempFiles, writeFileAtomic } from "../../lib/atomic-file.js";
import { errorMessage } from "../../lib/error-message.js";

/** What survives an agent restart per instance (standby.md "Persisted runtime"), epoch ms. */
export interface StandbyRuntime {
  idleSince?: number;
  lastInboundAt?: number;
  holdUntil?: number;
}

/**
 * `<state-dir>/standby-runtime.json`, rewritten atomically. Writes are coalesced (the newest
 * state wins; one write in flight) because the controller persists on transitions only and a
 * lost transition is re-derived at the next seed; a write failure is reported, not fatal.
 */
export class StandbyRuntimeStore {
  private readonly runtimes = new Map<string, StandbyRuntime>();
  private writing = false;
  private dirty = false;
  onWriteError: ((e: unknown) => void) | undefined;

  constructor(private readonly path: string) {}

  static open(stateDir: string): StandbyRuntimeStore {
    const store = new StandbyRuntimeStore(join(stateDir, "standby-runtime.json"));
    // Temp files of a write cut short by a crash (random names: never reused, so never overwritten).
    removeStaleTempFiles(store.path);
    if (existsSync(store.path)) {
      let doc: { runtimes?: Record<string, StandbyRuntime> };
      try {
        doc = JSON.parse(readFileSync(store.path, "utf8")) as typeof doc;
      } catch (e) {
        throw new Error(`${store.path}: not valid JSON (${errorMessage(e)}); refusing to start over it`);
      }
      for (const [id, r] of Object.entries(doc.runtimes ?? {})) store.runtimes.set(id, r);
    }
    return store;
  }

  get(id: string): StandbyRuntime | undefined {
    return this.runtimes.get(id);
  }

  set(id: string, runtime: StandbyRuntime | undefined): void {
    const before = JSON.stringify(this.runtimes.get(id) ?? null);
    if (runtime && Object.values(runtime).some((v) => v !== undefined)) this.runtimes.set(id, runtime);
    else this.runtimes.delete(id);
    if (JSON.stringify(this.runtimes.get(id) ?? null) === before) return;
    this.dirty = true;
    void this.flush();
  }

  /**
   * Resolves once everything set so far is on disk: also waits for a write already in flight
   * (another caller's), which may hold the latest state (found as a flaky test: a flush that
   * returned while that write still ran).
   */
  async flush(): Promise<void> {
    for (;;) {
      if (this.writing) {
        await new Promise((r) => setTimeout(r, 5));
        continue;
      }
      if (!this.dirty) return;
      this.writing = true;
      this.dirty = false;
      const doc = { runtimes: Object.fromEntries(this.runtimes) };
      try {
        await writeFileAtomic(this.path, `${JSON.stringify(doc)}\n`);
      } catch (e) {
        this.dirty = true;
        this.onWriteError?.(e);
        this.writing = false;
        return;
      } finally {
        this.writing = false;
      }
    }
  }
}
