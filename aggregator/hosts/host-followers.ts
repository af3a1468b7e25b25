import type { HostRegistry } from "./host-registry.js";

/** Hosts are looked up this often (added / removed through AddHost, RemoveHost). */
const HOSTS_POLL_MS = 1000;

/** One host's long-running follow: stopped through `stop`, finished when `done` resolves. */
export interface HostFollow {
  stop: AbortController;
  done: Promise<void>;
}

/**
 * The skeleton the aggregator's followers share (metering, inventory): one follow per host in
 * the registry, started when the host appears, stopped when it goes, all stopped by close().
 * Subclasses say how a host is followed; they call startReconciling() at the end of their
 * constructor (after their own fields exist).
 */
export abstract class HostFollowers<F extends HostFollow> {
  protected readonly follows = new Map<string, F>();
  private timer: NodeJS.Timeout | undefined;
  protected closed = false;

  constructor(protected readonly hosts: HostRegistry) {}

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    for (const f of this.follows.values()) f.stop.abort();
    await Promise.all([...this.follows.values()].map((f) => f.done));
  }

  protected startReconciling(): void {
    this.reconcile();
    this.timer = setInterval(() => this.reconcile(), HOSTS_POLL_MS);
    this.timer.unref();
  }

  /** A new host's follow state (its `done` is set here after). */
  protected abstract newFollow(name: string): F;
  /** Follows the host until `f.stop` aborts. */
  protected abstract follow(name: string, f: F): Promise<void>;
  /** A host left the registry (its follow is already stopped). */
  protected hostRemoved(_name: string): void {}
  /** After every pass, with the hosts present. */
  protected afterReconcile(_present: ReadonlySet<string>): void {}

  private reconcile(): void {
    if (this.closed) return;
    const present = new Set(this.hosts.list().map((h) => h.config.name));
    for (const [name, f] of this.follows) {
      if (present.has(name)) continue;
      f.stop.abort();
      this.follows.delete(name);
      this.hostRemoved(name);
    }
    for (const name of present) {
      if (this.follows.has(name)) continue;
      const f = this.newFollow(name);
      this.follows.set(name, f);
      f.done = this.follow(name, f);
    }
    this.afterReconcile(present);
  }
}
