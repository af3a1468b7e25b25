import { linkedSignal } from "../../../lib/linked-signal.js";
import type { IncomingMessage } from "node:http";
import { setTimeout as sleep } from "node:timers/promises";
import { KubeApiError, type KubeApiClient, type Query } from "./kube-api-client.js";
import type { RuntimeLogger } from "../runtime-logger.js";
import { KubeObjectError, toList, type ObjectMeta } from "./kube-objects.js";
import { parseWatchLine, WatchLineError, WatchLineReader, type WatchEvent } from "./watch-line-parser.js";
import { errorMessage } from "../../../lib/error-message.js";
import { monotonicMs } from "../../../lib/monotonic-clock.js";

/** A Kubernetes object as a list+watch keeps it: at least its checked metadata. */
export interface KubeObject {
  metadata: ObjectMeta;
}

export type ObjectChange<T extends KubeObject> =
  | { type: "added"; object: T }
  | { type: "modified"; previous: T; object: T }
  /** `object`: the last state the DELETED event carried; absent when a relist found it gone. */
  | { type: "deleted"; previous: T; object?: T };

/** "initial": the first list (a snapshot, not news); "event": a watch event; "relist": a diff. */
export type ChangeSource = "initial" | "event" | "relist";

export interface ListWatchHandler<T extends KubeObject> {
  /** Called in order; the next batch waits for the returned promise. */
  apply(changes: ObjectChange<T>[], source: ChangeSource): Promise<void>;
  connected(): void;
  /** Once per outage (also when the first attempt fails). */
  disconnected(err: Error): void;
  /** Every failed attempt, so the last error stays current while down. */
  failed(err: Error): void;
}

/** What a list+watch watches: one resource of the API and how its objects are read. */
export interface WatchedResource<T extends KubeObject> {
  /** In log lines: "pod", "node", "service", "endpointslice". */
  kind: string;
  /** The collection's path, e.g. "/api/v1/pods" or "/api/v1/namespaces/shop/services". */
  path: string;
  /** fieldSelector / labelSelector of every list and watch. */
  selector?: Query;
  /** Reads one item (throws KubeObjectError for a malformed one: it is skipped). */
  parse(item: unknown): T;
  /** The object's key ("<namespace>/<name>", or the name of a cluster-scoped object). */
  key(object: T): string;
}

export interface ListWatchOptions<T extends KubeObject> {
  client: KubeApiClient;
  handler: ListWatchHandler<T>;
  logger: RuntimeLogger;
  resource: WatchedResource<T>;
  /** Items per list page (the API server's continue tokens); default 500. */
  pageSize?: number;
  /** Asked of the server per watch; it ends the watch then and we re-watch. Default 300 s. */
  watchTimeoutSeconds?: number;
  /** Reconnect backoff: doubling from initialMs to maxMs (contract: 200 ms → 10 s). */
  backoff?: { initialMs: number; maxMs: number };
  requestTimeoutMs?: number;
}

type WatchOutcome = "ended" | "expired";

// A watch that ends sooner than this after opening did not really work: back off before the next.
const QUICK_END_MS = 1_000;

/**
 * Keeps the objects of one resource in scope in sync with the API server — the list+watch
 * protocol (pods, nodes, services and endpoint slices all use it):
 * - list (in pages) and take the list's resourceVersion as the resume point, then watch from it
 *   with allowWatchBookmarks=true, so nothing that changes after the list is missed ("bookmark
 *   before list": the list is a consistent snapshot at that version);
 * - track the resourceVersion of every event and BOOKMARK, and when a watch ends (server
 *   timeout, lost connection, a line we cannot read) watch again from it: the server replays
 *   what happened in between as real events;
 * - when that version is too old (HTTP 410, or an ERROR event with code 410 "Expired"), list
 *   again and diff the new list against the objects known: appeared → added, gone → deleted,
 *   changed → modified, all marked as coming from the relist;
 * - while the API server cannot be reached, retry with capped exponential backoff, reporting
 *   connected/disconnected transitions.
 * Changes are handed over in the order they happened, one batch at a time.
 */
export class KubeListWatch<T extends KubeObject> {
  private objects = new Map<string, T>();
  private resourceVersion = "";
  private needList = true;
  private listedOnce = false;
  private isConnected = false;
  private reportedDown = false;
  private closed = false;
  private readonly stop = new AbortController();
  private loop: Promise<void> | undefined;
  /** What the watch loop did (tests and debugging). */
  readonly counters = { lists: 0, watches: 0, expired: 0, bookmarks: 0 };

  constructor(private readonly options: ListWatchOptions<T>) {}

  /** Starts the loop; resolves once the first list attempt is over, successful or not. */
  start(): Promise<void> {
    if (this.loop) throw new Error(`${this.options.resource.kind} list+watch already started`);
    return new Promise<void>((firstAttempt) => {
      this.loop = this.run(firstAttempt);
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    this.stop.abort();
    await this.loop;
  }

  get connected(): boolean {
    return this.isConnected;
  }

  /** The version the next watch resumes from. */
  get lastResourceVersion(): string {
    return this.resourceVersion;
  }

  get(key: string): T | undefined {
    return this.objects.get(key);
  }

  /** Every object known, by key. */
  values(): IterableIterator<T> {
    return this.objects.values();
  }

  private get kind(): string {
    return this.options.resource.kind;
  }

  private get collectionPath(): string {
    return this.options.resource.path;
  }

  private get selector(): Query {
    return this.options.resource.selector ?? {};
  }

  private async run(firstAttempt: () => void): Promise<void> {
    const { initialMs, maxMs } = this.options.backoff ?? { initialMs: 200, maxMs: 10_000 };
    let delay = initialMs;
    let expiredInARow = 0;
    while (!this.closed) {
      try {
        if (this.needList) {
          await this.list();
          firstAttempt();
        }
        // Monotonic: a wall-clock step must not make a quick end look long (a reconnect loop).
        const opened = monotonicMs();
        const outcome = await this.watch();
        if (outcome === "expired") {
          this.counters.expired++;
          this.needList = true;
          // A server that expires even the version of a fresh list must not get a relist loop.
          if (++expiredInARow > 1) {
            await sleep(delay, undefined, { signal: this.stop.signal });
            delay = Math.min(delay * 2, maxMs);
          }
          continue;
        }
        expiredInARow = 0;
        if (monotonicMs() - opened < QUICK_END_MS) {
          await sleep(delay, undefined, { signal: this.stop.signal });
          delay = Math.min(delay * 2, maxMs);
        } else {
          delay = initialMs;
        }
      } catch (e) {
        firstAttempt();
        if (this.closed) break;
        this.setDisconnected(e instanceof Error ? e : new Error(String(e)));
        try {
          await sleep(delay, undefined, { signal: this.stop.signal });
        } catch {
          break;
        }
        delay = Math.min(delay * 2, maxMs);
      }
    }
    firstAttempt();
  }

  private setConnected(): void {
    if (this.isConnected) return;
    this.isConnected = true;
    this.reportedDown = false;
    this.options.handler.connected();
  }

  private setDisconnected(err: Error): void {
    this.options.handler.failed(err);
    // One transition per outage (also when the very first attempt fails), not one per retry.
    if (!this.isConnected && this.reportedDown) return;
    this.isConnected = false;
    this.reportedDown = true;
    this.options.handler.disconnected(err);
  }

  /** A bug in the consumer must not stop the watch: log it and go on. */
  private async deliver(changes: ObjectChange<T>[], source: ChangeSource): Promise<void> {
    try {
      await this.options.handler.apply(changes, source);
    } catch (e) {
      this.options.logger.error({ err: (e as Error).stack ?? String(e), source }, `applying ${this.kind} changes failed`);
    }
  }

  /** Lists every page; a continue token that expired mid-way (410) restarts it unpaged. */
  private async listAll(): Promise<{ items: unknown[]; resourceVersion: string }> {
    const pageSize = this.options.pageSize ?? 500;
    const items: unknown[] = [];
    let token = "";
    let resourceVersion = "";
    do {
      let page;
      try {
        page = toList(
          await this.options.client.getJson({
            path: this.collectionPath,
            query: { ...this.selector, limit: pageSize, continue: token || undefined },
            signal: this.stop.signal,
            timeoutMs: this.options.requestTimeoutMs,
          }),
          `${this.kind} list`,
        );
      } catch (e) {
        if (token && e instanceof KubeApiError && e.httpStatus === 410) {
          this.options.logger.info({}, `${this.kind} list continue token expired; listing again in one request`);
          const all = toList(await this.options.client.getJson({ path: this.collectionPath, query: this.selector, signal: this.stop.signal, timeoutMs: this.options.requestTimeoutMs }), `${this.kind} list`);
          return { items: all.items, resourceVersion: all.resourceVersion };
        }
        throw e;
      }
      // Every page is part of the first page's snapshot: its version is the list's.
      if (!token) resourceVersion = page.resourceVersion;
      items.push(...page.items);
      token = page.continueToken;
    } while (token);
    return { items, resourceVersion };
  }

  private async list(): Promise<void> {
    this.counters.lists++;
    const { items, resourceVersion } = await this.listAll();
    const next = new Map<string, T>();
    for (const item of items) {
      try {
        const object = this.options.resource.parse(item);
        next.set(this.options.resource.key(object), object);
      } catch (e) {
        if (!(e instanceof KubeObjectError)) throw e;
        this.options.logger.warn({ err: e.message }, `skipping a malformed ${this.kind} in the list`);
      }
    }
    const changes: ObjectChange<T>[] = [];
    for (const [key, previous] of this.objects) {
      const now = next.get(key);
      if (!now || now.metadata.uid !== previous.metadata.uid) changes.push({ type: "deleted", previous });
    }
    for (const [key, object] of next) {
      const previous = this.objects.get(key);
      if (!previous || previous.metadata.uid !== object.metadata.uid) changes.push({ type: "added", object });
      else if (previous.metadata.resourceVersion !== object.metadata.resourceVersion) changes.push({ type: "modified", previous, object });
    }
    const source: ChangeSource = this.listedOnce ? "relist" : "initial";
    this.objects = next;
    this.resourceVersion = resourceVersion;
    this.needList = false;
    this.listedOnce = true;
    this.options.logger.debug({ kind: this.kind, objects: next.size, resourceVersion, changes: changes.length, source }, "listed");
    await this.deliver(changes, source);
    // Only now: whoever reacts to "connected" sees the listed objects.
    this.setConnected();
  }

  private async watch(): Promise<WatchOutcome> {
    this.counters.watches++;
    const timeoutSeconds = this.options.watchTimeoutSeconds ?? 300;
    // The server ends the watch after timeoutSeconds; a connection that silently died would
    // never end, so we give up on it a little later ourselves.
    const link = linkedSignal([this.stop.signal], (timeoutSeconds + 30) * 1000);
    const signal = link.signal;
    let res: IncomingMessage;
    try {
      res = await this.options.client.open({
        path: this.collectionPath,
        query: { ...this.selector, watch: "true", resourceVersion: this.resourceVersion, allowWatchBookmarks: "true", timeoutSeconds },
        signal,
        timeoutMs: this.options.requestTimeoutMs,
      });
    } catch (e) {
      link.dispose();
      if (e instanceof KubeApiError && e.httpStatus === 410) return "expired";
      throw e;
    }
    this.setConnected();
    const reader = new WatchLineReader();
    try {
      for await (const chunk of res as AsyncIterable<Buffer>) {
        for (const line of reader.push(chunk)) {
          const outcome = await this.handle(parseWatchLine(line));
          if (outcome) return outcome;
        }
      }
      const last = reader.end();
      if (last !== undefined) {
        const outcome = await this.handle(parseWatchLine(last));
        if (outcome) return outcome;
      }
      return "ended";
    } catch (e) {
      if (this.closed) return "ended";
      if (e instanceof WatchLineError) {
        this.options.logger.warn({ kind: this.kind, err: e.message, resourceVersion: this.resourceVersion }, "unreadable watch event; watching again from the last version");
      } else {
        this.options.logger.debug({ kind: this.kind, err: errorMessage(e) }, "watch connection ended");
      }
      return "ended";
    } finally {
      res.destroy();
      link.dispose();
    }
  }

  /** Applies one watch event; returns an outcome when the watch must end. */
  private async handle(event: WatchEvent): Promise<WatchOutcome | undefined> {
    switch (event.type) {
      case "BOOKMARK":
        this.counters.bookmarks++;
        this.resourceVersion = event.resourceVersion;
        return undefined;
      case "ERROR":
        if (event.status.code === 410) {
          this.options.logger.info({ kind: this.kind, resourceVersion: this.resourceVersion, message: event.status.message }, "watch version expired; listing again");
          return "expired";
        }
        this.options.logger.warn({ kind: this.kind, code: event.status.code, reason: event.status.reason, message: event.status.message }, "watch ERROR event; watching again");
        return "ended";
      default:
        break;
    }
    let object: T;
    try {
      object = this.options.resource.parse(event.object);
    } catch (e) {
      if (!(e instanceof KubeObjectError)) throw e;
      this.options.logger.warn({ err: e.message, type: event.type }, `skipping a malformed ${this.kind} in a watch event`);
      this.resourceVersion = event.resourceVersion;
      return undefined;
    }
    const key = this.options.resource.key(object);
    const previous = this.objects.get(key);
    const changes: ObjectChange<T>[] = [];
    if (event.type === "DELETED") {
      // A delete of an incarnation we do not hold (never seen, or already replaced) is not news.
      if (previous && previous.metadata.uid === object.metadata.uid) {
        this.objects.delete(key);
        changes.push({ type: "deleted", previous, object });
      }
    } else {
      if (previous && previous.metadata.uid !== object.metadata.uid) {
        // Same name, new object (a StatefulSet replica recreated) and the delete went unseen.
        changes.push({ type: "deleted", previous }, { type: "added", object });
      } else if (previous) {
        changes.push({ type: "modified", previous, object });
      } else {
        changes.push({ type: "added", object });
      }
      this.objects.set(key, object);
    }
    if (changes.length > 0) await this.deliver(changes, "event");
    this.resourceVersion = event.resourceVersion;
    return undefined;
  }
}
