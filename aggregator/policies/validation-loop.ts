import { FleetEventType, type Concern, type FleetInstance, type PolicyHost, type PolicySeverity } from "../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { errorMessage } from "../../lib/error-message.js";
import { monotonicMs } from "../../lib/monotonic-clock.js";
import type { Logger } from "../../lib/rpc/logger.js";
import type { MergedView } from "../inventory/merged-view.js";
import { evaluateInstance, isEvaluationError, sameConcerns } from "./policy-evaluator.js";
import { policyHostOf, policyHostRevision } from "./policy-host.js";
import type { CompiledRule } from "./policy-rule.js";
import { NO_TIME_RULES, type PolicyStore, type ValidationResult } from "./policy-store.js";
import type { RuleSet } from "./rule-set.js";

/** Evaluates one instance; replaceable in tests to fail at random (the loop must not care). */
export type InstanceEvaluator = (
  rules: readonly CompiledRule[],
  instance: FleetInstance,
  host: PolicyHost,
  params: ReadonlyMap<string, number>,
  previous: readonly Concern[],
  nowMs: number,
  readNow?: Set<string>,
) => Concern[];

export interface ValidationLoopOptions {
  logger: Logger;
  /** The scheduled search (--policy-sweep-interval). */
  sweepIntervalMs: number;
  store?: PolicyStore;
  /** Instances waiting for real-time validation at most; past it a change is left to the search. */
  queueLimit?: number;
  /**
   * How long one slice of work may hold the event loop before yielding (default 1 ms: with 5 ms
   * the search made timers up to 5 ms late, the fleet watch's p99 3.6x that of no policies; with
   * 1 ms 1.5x, at the same CPU per search: bench/policies).
   */
  sliceMs?: number;
  /**
   * After a restart every stored host is STALE until its follower hears from it: its instances
   * keep their stored results for this long (--stale-after) rather than all failing
   * host-stale-running for the few seconds a reconnect takes.
   */
  startGraceMs?: number;
  evaluate?: InstanceEvaluator;
}

export interface RuleSummary {
  rule: string;
  severity: PolicySeverity;
  passing: number;
  failing: number;
  unevaluated: number;
  errors: number;
}

export interface LoopStatus {
  summaries: RuleSummary[];
  unvalidated: number;
  /** Age of the oldest change not validated yet (ms); 0 when everything is current. */
  lagMs: number;
}

/** Counters for metrics and tests. */
export interface LoopCounters {
  validated: number;
  /** Evaluations that threw (logged; the instance stays behind for the search). */
  failed: number;
  /** Changes not queued because the queue was full (the search takes them). */
  skipped: number;
  sweeps: number;
}

const key = (host: string, id: string) => `${host}\0${id}`;

/**
 * A result in memory: `timeRules` names the rules whose outcome read `now` (undefined: not
 * known, as for a row read back from the store); `incarnation` the host's when it was validated.
 */
class LoopResult implements ValidationResult {
  /** The instance object in the view this result is on (set by ValidationLoop.remember). */
  object: FleetInstance | undefined = undefined;
  // One class, every field set in the constructor: 100,000 of these are made by a search, and
  // object literals spread from the revisions (then given more fields) cost twice as much.
  constructor(
    readonly instanceRevision: string,
    readonly hostRevision: string,
    readonly ruleHash: string,
    readonly concerns: Concern[],
    readonly timeRules: ReadonlySet<string> | undefined,
    readonly incarnation: string,
  ) {}
}
const NONE = NO_TIME_RULES;

/** How long real-time results wait to be written with others. */
const FLUSH_DELAY_MS = 200;

/** Result rows written per turn of the event loop. */
const FLUSH_BATCH = 256;

/**
 * Seed 003's validation loop over the merged view (policies.md "The validation loop"):
 *
 * - real time, best effort: a change of an instance queues it; a slice of the queue is
 *   validated per turn of the event loop, after the change was applied and announced (the view
 *   never waits for this). A full queue, or an evaluation that throws, is counted and logged,
 *   and the instance stays behind;
 * - the scheduled search every sweepIntervalMs validates every instance that is behind — its
 *   instance revision, its host's revision or the rule set's hash is not the one it was
 *   validated at — and not queued (the real-time path "reports" what it has in hand);
 * - a host change (sync state, facts, its instances' sums) puts its instances behind; a rule
 *   change puts everything behind: both by revision, nothing is walked at the change itself;
 * - results go to the view (concerns, a MODIFIED event when they change) and to the store in
 *   batches, keyed by the revisions: after a restart only what is behind is evaluated again.
 */
export class ValidationLoop {
  /**
   * By "host\0id". A result names the instance object in the view it was validated for (`object`;
   * view objects are immutable: any change of the instance is a new object), so a search finds
   * the current ones by identity, without building revision strings for 100,000 instances every
   * interval.
   */
  private readonly results = new Map<string, LoopResult>();
  private readonly queued = new Set<string>();
  private readonly changedAt = new Map<string, number>();
  private readonly hosts = new Map<string, { facts: PolicyHost; revision: string }>();
  private readonly dirtyHosts = new Map<string, number>();
  private readonly unsaved = new Map<string, ValidationResult | undefined>();
  private ruleChangedAt: number;
  private cursor: number;
  private draining = false;
  private sweeping = false;
  private readScheduled = false;
  /**
   * Whether the next search must walk the whole view: set at start, by a rule change, a queue
   * overflow, a change the view's ring dropped, a validation that failed or was deferred, an
   * incomplete search. Otherwise the search walks only the hosts whose facts moved and the
   * instances whose outcome depends on the time: nothing else can be behind, and a fleet of
   * 100,000 at rest costs it next to nothing (the fleet watch's timers are not held up).
   */
  private fullWalk = true;
  /** Hosts whose PolicyHost revision changed since the last search began. */
  private readonly hostsBehind = new Set<string>();
  /** Instances whose last result read `now` (or is not known not to). */
  private readonly timeDependent = new Set<string>();
  private readonly startedAt = monotonicMs();
  private readonly timer: NodeJS.Timeout;
  private readonly unsubscribe: (() => void)[] = [];
  private readonly queueLimit: number;
  private readonly sliceMs: number;
  private readonly evaluate: InstanceEvaluator;
  private closed = false;
  readonly counters: LoopCounters = { validated: 0, failed: 0, skipped: 0, sweeps: 0 };

  constructor(
    private readonly view: MergedView,
    private readonly rules: RuleSet,
    private readonly options: ValidationLoopOptions,
  ) {
    this.queueLimit = options.queueLimit ?? 10_000;
    this.sliceMs = options.sliceMs ?? 1;
    this.evaluate = options.evaluate ?? evaluateInstance;
    this.ruleChangedAt = this.startedAt;
    // Stored results first: an instance still at the revision it was validated at gets its
    // concerns back now, without an evaluation.
    // Rows left at an older rule hash by a rule change that did not change their concerns are
    // valid under the hash the last complete search vouched for (PolicyStore.validatedHash).
    const vouched = options.store?.validatedHash() ?? "";
    for (const [k, stored] of options.store?.results() ?? []) {
      const r = vouched !== "" && vouched === rules.hash && stored.ruleHash !== rules.hash ? { ...stored, ruleHash: rules.hash } : stored;
      const [host, id] = k.split("\0") as [string, string];
      const instance = view.host(host)?.instances.get(id);
      if (!instance) {
        this.unsaved.set(k, undefined);
        continue;
      }
      if (r.instanceRevision !== this.instanceRevision(host, instance)) continue;
      const loaded = new LoopResult(r.instanceRevision, r.hostRevision, r.ruleHash, r.concerns, r.timeRules, view.host(host)!.incarnation);
      this.results.set(k, loaded);
      if (loaded.timeRules !== NONE) this.timeDependent.add(k);
      this.remember(host, id, instance, loaded);
    }
    this.cursor = view.lastSeq;
    this.unsubscribe.push(
      // Read after the turn that made the change: the view's readers (fleet watches, woken in
      // the same turn) send it first; validation is never on their path.
      view.subscribe(() => {
        if (this.readScheduled) return;
        this.readScheduled = true;
        setImmediate(() => {
          this.readScheduled = false;
          if (!this.closed) this.onViewChange();
        });
      }),
      view.onHostChange((host) => {
        if (!this.dirtyHosts.has(host)) this.dirtyHosts.set(host, monotonicMs());
      }),
      rules.onChange(() => {
        this.ruleChangedAt = monotonicMs();
        this.fullWalk = true;
        // A rule change is worth a search now rather than at the next interval.
        setImmediate(() => this.sweep());
      }),
    );
    this.timer = setInterval(() => this.sweep(), options.sweepIntervalMs);
    this.timer.unref();
    setImmediate(() => this.sweep());
  }

  /** Whether a scheduled search is under way (benches wait for the first one before measuring). */
  get searching(): boolean {
    return this.sweeping;
  }

  close(): void {
    this.closed = true;
    clearInterval(this.timer);
    clearTimeout(this.flushTimer);
    for (const u of this.unsubscribe) u();
    this.flush(true);
  }

  /** Everything behind is validated now, in one go (tests; `fleetlet` never waits on this). */
  validateAllNow(): void {
    const startHash = this.rules.hash;
    let complete = true;
    for (const [host, id, instance] of this.allInstances()) if (!this.validate(host, id, instance)) complete = false;
    this.flush(true);
    if (complete && startHash === this.rules.hash) this.options.store?.saveValidatedHash(startHash);
  }

  private onViewChange(): void {
    const changes = this.view.changesAfter(this.cursor);
    if (!changes) {
      // The ring passed us (a burst bigger than the watch buffer): the search finds what changed.
      this.cursor = this.view.lastSeq;
      this.fullWalk = true;
      return;
    }
    const now = monotonicMs();
    for (const { seq, item } of changes) {
      this.cursor = seq;
      if (!item.instance || item.concernsOnly) continue;
      const k = key(item.instance.host, item.instance.id);
      if (item.type === FleetEventType.DELETED) {
        this.results.delete(k);
        this.timeDependent.delete(k);
        this.queued.delete(k);
        this.changedAt.delete(k);
        this.unsaved.set(k, undefined);
        continue;
      }
      if (!this.changedAt.has(k)) this.changedAt.set(k, now);
      if (this.queued.has(k)) continue;
      if (this.queued.size >= this.queueLimit) {
        this.counters.skipped++;
        this.fullWalk = true;
        continue;
      }
      this.queued.add(k);
    }
    if (this.queued.size > 0 && !this.draining) {
      this.draining = true;
      setImmediate(() => this.drain());
    }
  }

  /** Real-time validation: the queue in slices of sliceMs. */
  private drain(): void {
    if (this.closed) return;
    const until = monotonicMs() + this.sliceMs;
    for (const k of this.queued) {
      this.queued.delete(k);
      const [host, id] = k.split("\0") as [string, string];
      const instance = this.view.host(host)?.instances.get(id);
      if (instance && !this.validate(host, id, instance)) this.fullWalk = true;
      if (monotonicMs() >= until) break;
    }
    this.flushSoon();
    if (this.queued.size > 0) setImmediate(() => this.drain());
    else this.draining = false;
  }

  /** The scheduled search: everything behind and not queued, in slices. */
  private sweep(): void {
    if (this.sweeping || this.closed) return;
    this.sweeping = true;
    this.counters.sweeps++;
    const walkAll = this.fullWalk;
    this.fullWalk = false;
    let it: Iterator<[string, string, FleetInstance]>;
    if (walkAll) {
      this.hostsBehind.clear();
      it = this.allInstances();
    } else {
      // Facts of hosts that changed (their revision may not have: a label edit of an instance
      // leaves the host's sums alone).
      for (const host of [...this.dirtyHosts.keys()]) this.hostFacts(host);
      const hosts = [...this.hostsBehind];
      this.hostsBehind.clear();
      it = this.someInstances(hosts, [...this.timeDependent]);
    }
    // Complete: every instance validated under one rule hash (none queued, failed or in grace):
    // then every row on disk is valid under that hash, rewritten or not.
    const startHash = this.rules.hash;
    let complete = true;
    const step = () => {
      if (this.closed) return;
      const until = monotonicMs() + this.sliceMs;
      for (;;) {
        const next = it.next();
        if (next.done) {
          if (!complete) this.fullWalk = true;
          if (walkAll && complete && startHash === this.rules.hash && this.options.store) {
            this.flush(true);
            try {
              this.options.store.saveValidatedHash(startHash);
            } catch (e) {
              this.options.logger.warn({ err: errorMessage(e) }, "policy results: the validated rule hash not saved");
            }
          } else this.flush();
          this.sweeping = false;
          return;
        }
        const [host, id, instance] = next.value;
        if (this.queued.size > 0 && this.queued.has(key(host, id))) complete = false;
        else if (!this.validate(host, id, instance, true)) complete = false;
        if (monotonicMs() >= until) break;
      }
      this.flush();
      setImmediate(step);
    };
    step();
  }

  /**
   * Every instance of the view, read live: a Map iterator survives the map's changes between
   * slices (validating replaces values; deleted ones are skipped, new ones come at the end); a
   * host whose view was replaced meanwhile is left for the next search.
   */
  private *allInstances(): Generator<[string, string, FleetInstance]> {
    for (const host of this.view.hostNames()) yield* this.hostInstances(host);
  }

  /** One host's instances, read live (allInstances). */
  private *hostInstances(host: string): Generator<[string, string, FleetInstance]> {
    const view = this.view.host(host);
    if (!view) return;
    for (const [id, instance] of view.instances) {
      if (this.view.host(host) !== view) return;
      yield [host, id, instance];
    }
  }

  /** The instances of `hosts`, then those named by `keys` (host\0id) still in the view. */
  private *someInstances(hosts: readonly string[], keys: readonly string[]): Generator<[string, string, FleetInstance]> {
    const walked = new Set(hosts);
    for (const host of hosts) yield* this.hostInstances(host);
    for (const k of keys) {
      const [host, id] = k.split("\0") as [string, string];
      if (walked.has(host)) continue;
      const instance = this.view.host(host)?.instances.get(id);
      if (instance) yield [host, id, instance];
    }
  }

  private instanceRevision(host: string, instance: FleetInstance): string {
    return `${this.view.host(host)?.incarnation ?? ""}:${instance.resourceVersion}`;
  }

  private hostFacts(host: string): { facts: PolicyHost; revision: string } | undefined {
    const view = this.view.host(host);
    if (!view) return undefined;
    let h = this.hosts.get(host);
    if (!h || this.dirtyHosts.has(host)) {
      const facts = policyHostOf(view);
      const revision = policyHostRevision(facts);
      if (h && h.revision !== revision) this.hostsBehind.add(host);
      h = { facts, revision };
      this.hosts.set(host, h);
      this.dirtyHosts.delete(host);
    }
    return h;
  }

  /** Whether the host's instances are still in the start grace (stored STALE, not heard from yet). */
  private inStartGrace(host: string): boolean {
    const grace = this.options.startGraceMs ?? 0;
    if (grace <= 0 || monotonicMs() - this.startedAt >= grace) return false;
    return this.view.host(host)?.lastError === "not heard from since the aggregator started";
  }

  /**
   * Validates one instance if it is behind; true when it is current afterwards. `timeTick` (the
   * scheduled search): a current instance is evaluated again against the rules that read `now`,
   * whose outcome can change with time alone.
   */
  private validate(host: string, id: string, instance: FleetInstance, timeTick = false): boolean {
    const h = this.hostFacts(host);
    if (!h) return false;
    const k = key(host, id);
    const known = this.results.get(k);
    if (known?.object === instance && this.isCurrent(known, host, h.revision) && (!timeTick || known.timeRules === NONE)) return true;
    const instanceRevision = this.instanceRevision(host, instance);
    const ruleHash = this.rules.hash;
    const r = this.results.get(k);
    const rules = this.rules.list();
    if (r && r.instanceRevision === instanceRevision && r.hostRevision === h.revision && r.ruleHash === ruleHash) {
      // Only the rules whose last outcome here read `now` (a healthy container's
      // container-unhealthy did not: it stops at the health check): a search with nothing behind
      // walks the fleet and evaluates almost nothing.
      if (!timeTick || r.timeRules === NONE) return true;
      const timeRules = rules.filter((rule) => rule.readsNow && (r.timeRules === undefined || r.timeRules.has(rule.name)));
      if (timeRules.length === 0) {
        this.timeDependent.delete(k);
        return true;
      }
      return this.apply(host, id, instance, timeRules, r.concerns.filter((c) => !timeRules.some((t) => t.name === c.rule)), { instanceRevision, hostRevision: h.revision, ruleHash }, h.facts);
    }
    if (r && this.inStartGrace(host)) return false;
    this.rememberRuleSet();
    // The same instance: only the rules whose inputs moved are evaluated again (a changed or new
    // rule, those reading the host after a host change, those reading params after a parameter
    // change); the other rules' concerns stand. A changed instance: every rule.
    let evaluated = rules;
    let kept: Concern[] = [];
    if (r && r.instanceRevision === instanceRevision) {
      const delta = r.ruleHash === ruleHash ? { changed: new Set<CompiledRule>(), removed: new Set<string>() } : this.ruleDelta(r.ruleHash);
      if (delta) {
        if (r.hostRevision !== h.revision) for (const rule of rules) if (rule.readsHost) delta.changed.add(rule);
        evaluated = rules.filter((rule) => delta.changed.has(rule));
        const again = new Set(evaluated.map((rule) => rule.name));
        kept = r.concerns.filter((c) => !again.has(c.rule) && !delta.removed.has(c.rule));
      }
    }
    return this.apply(host, id, instance, evaluated, kept, { instanceRevision, hostRevision: h.revision, ruleHash }, h.facts);
  }

  /** Evaluates `evaluated` on the instance, keeps `kept`, and records the result at `revisions`. */
  private apply(
    host: string,
    id: string,
    instance: FleetInstance,
    evaluated: readonly CompiledRule[],
    kept: Concern[],
    revisions: { instanceRevision: string; hostRevision: string; ruleHash: string },
    facts: PolicyHost,
  ): boolean {
    const k = key(host, id);
    let concerns: Concern[];
    const readNow = this.readNowScratch;
    if (readNow.size > 0) readNow.clear();
    try {
      const fresh = this.evaluate(evaluated, instance, facts, this.rules.parameters, instance.concerns, Date.now(), readNow);
      concerns = kept.length === 0 ? fresh : [...kept, ...fresh].sort((a, b) => (a.rule < b.rule ? -1 : a.rule > b.rule ? 1 : 0));
    } catch (e) {
      this.counters.failed++;
      this.fullWalk = true;
      this.options.logger.debug({ host, instance_id: id, err: errorMessage(e) }, "policy validation failed; left for the scheduled search");
      return false;
    }
    const before = this.results.get(k);
    // The rules not evaluated now keep what was known of them (unknown: assume they read it).
    for (const rule of this.rules.timeRules()) {
      if (evaluated.includes(rule)) continue;
      if (before?.timeRules === undefined || before.timeRules.has(rule.name)) readNow.add(rule.name);
    }
    const result = new LoopResult(revisions.instanceRevision, revisions.hostRevision, revisions.ruleHash, concerns, readNow.size === 0 ? NONE : new Set(readNow), this.view.host(host)?.incarnation ?? "");
    this.remember(host, id, instance, result);
    this.results.set(k, result);
    if (result.timeRules === NONE) this.timeDependent.delete(k);
    else this.timeDependent.add(k);
    // A row whose concerns and instance and host revisions are what is on disk already is not
    // rewritten for a new rule hash alone (~13 µs a row): the next complete search vouches for it.
    const unchanged =
      before !== undefined &&
      before.instanceRevision === revisions.instanceRevision &&
      before.hostRevision === revisions.hostRevision &&
      sameConcerns(before.concerns, concerns) &&
      sameNames(before.timeRules, result.timeRules) &&
      !this.unsaved.has(k);
    if (!unchanged) this.unsaved.set(k, result);
    this.changedAt.delete(k);
    this.counters.validated++;
    return true;
  }

  private readonly readNowScratch = new Set<string>();

  /** Puts the result's concerns on the instance (a new object when they changed) and files the result under the object now in the view. */
  private remember(host: string, id: string, instance: FleetInstance, result: LoopResult): void {
    let current: FleetInstance | undefined = instance;
    if (!sameConcerns(instance.concerns, result.concerns)) current = this.view.setConcerns(host, id, instance, result.concerns) ? this.view.host(host)?.instances.get(id) : undefined;
    result.object = current;
  }

  /** Whether a result filed under an instance object still holds: same host incarnation and facts, same rules. */
  private isCurrent(r: LoopResult, host: string, hostRevision: string): boolean {
    return r.ruleHash === this.rules.hash && r.hostRevision === hostRevision && r.incarnation === this.view.host(host)?.incarnation;
  }

  /** The rules in force under each recent rule-set hash, to tell what a rule change changed. */
  private readonly ruleSets = new Map<string, { rules: Map<string, CompiledRule>; params: ReadonlyMap<string, number> }>();

  private rememberRuleSet(): void {
    if (this.ruleSets.has(this.rules.hash)) return;
    this.ruleSets.set(this.rules.hash, { rules: new Map(this.rules.list().map((r) => [r.name, r])), params: this.rules.parameters });
    // A few are enough: results older than that are evaluated whole.
    if (this.ruleSets.size > 8) this.ruleSets.delete(this.ruleSets.keys().next().value!);
  }

  /** Rules to evaluate again since rule set `hash` (new, changed, or reading changed params) and names gone; undefined when unknown. */
  private ruleDelta(hash: string): { changed: Set<CompiledRule>; removed: ReadonlySet<string> } | undefined {
    // The same for every instance validated at `hash`: worked out once per pair of rule sets.
    const cacheKey = `${hash}>${this.rules.hash}`;
    const cached = this.deltas.get(cacheKey);
    if (cached) return { changed: new Set(cached.changed), removed: cached.removed };
    const delta = this.computeDelta(hash);
    if (delta) {
      if (this.deltas.size > 16) this.deltas.clear();
      this.deltas.set(cacheKey, delta);
      return { changed: new Set(delta.changed), removed: delta.removed };
    }
    return undefined;
  }

  private readonly deltas = new Map<string, { changed: ReadonlySet<CompiledRule>; removed: ReadonlySet<string> }>();

  private computeDelta(hash: string): { changed: Set<CompiledRule>; removed: Set<string> } | undefined {
    const old = this.ruleSets.get(hash);
    if (!old) return undefined;
    const paramsChanged = !sameParams(old.params, this.rules.parameters);
    const changed = new Set<CompiledRule>();
    const current = this.rules.list();
    for (const rule of current) {
      const before = old.rules.get(rule.name);
      // By content: a re-read rules file compiles its unchanged rules anew.
      const same = before !== undefined && (before === rule || (before.severity === rule.severity && before.description === rule.description && before.failsWhen === rule.failsWhen));
      if (!same || (paramsChanged && rule.readsParams)) changed.add(rule);
    }
    const names = new Set(current.map((r) => r.name));
    const removed = new Set([...old.rules.keys()].filter((n) => !names.has(n)));
    return { changed, removed };
  }

  /**
   * Writes what was validated, at most FLUSH_BATCH rows a turn of the event loop (a row costs
   * ~13 µs: a sweep that re-validated a whole fleet would otherwise hold the loop for a second);
   * the rest follows in the next turns. `all`: everything now (close, validateAllNow).
   */
  private flush(all = false): void {
    if (this.unsaved.size === 0 || !this.options.store) {
      this.unsaved.clear();
      return;
    }
    const batch = new Map<string, ValidationResult | undefined>();
    for (const [k, v] of this.unsaved) {
      if (!all && batch.size >= FLUSH_BATCH) break;
      batch.set(k, v);
    }
    for (const k of batch.keys()) this.unsaved.delete(k);
    try {
      this.options.store.saveResults(batch);
    } catch (e) {
      // Results are recomputable: a failed write costs re-evaluation after a restart, nothing else.
      this.options.logger.warn({ err: errorMessage(e) }, "policy results not saved");
    }
    if (this.unsaved.size > 0 && !this.flushing && !this.closed) {
      this.flushing = true;
      setImmediate(() => {
        this.flushing = false;
        this.flush();
      });
    }
  }

  private flushing = false;
  private flushTimer: NodeJS.Timeout | undefined;

  /**
   * Real-time results are written a little later, many to a transaction: one SQLite commit per
   * change (and the WAL checkpoints they bring) would sit between the view's changes. A crash
   * loses at most FLUSH_DELAY_MS of results, which are recomputed.
   */
  private flushSoon(): void {
    if (this.flushTimer || this.closed) return;
    this.flushTimer = setTimeout(() => {
      this.flushTimer = undefined;
      this.flush();
    }, FLUSH_DELAY_MS);
    this.flushTimer.unref();
  }

  /** Per rule: passing / failing / unevaluated / errors, what is behind and for how long. */
  status(): LoopStatus {
    const rules = this.rules.list();
    const summaries = new Map<string, RuleSummary>(rules.map((r) => [r.name, { rule: r.name, severity: r.severity, passing: 0, failing: 0, unevaluated: 0, errors: 0 }]));
    let unvalidated = 0;
    let oldest = Number.POSITIVE_INFINITY;
    const now = monotonicMs();
    for (const [host, id, instance] of this.allInstances()) {
      const h = this.hostFacts(host);
      const r = this.results.get(key(host, id));
      const current = h !== undefined && r !== undefined && (r.object === instance ? this.isCurrent(r, host, h.revision) : r.instanceRevision === this.instanceRevision(host, instance) && r.hostRevision === h.revision && r.ruleHash === this.rules.hash);
      if (!current) {
        unvalidated++;
        const since = this.changedAt.get(key(host, id)) ?? (r && r.ruleHash !== this.rules.hash ? this.ruleChangedAt : (this.dirtyHosts.get(host) ?? this.startedAt));
        oldest = Math.min(oldest, since);
        for (const s of summaries.values()) s.unevaluated++;
        continue;
      }
      for (const s of summaries.values()) {
        const c = r.concerns.find((x) => x.rule === s.rule);
        if (!c) s.passing++;
        else {
          s.failing++;
          if (isEvaluationError(c)) s.errors++;
        }
      }
    }
    return { summaries: [...summaries.values()], unvalidated, lagMs: unvalidated === 0 ? 0 : Math.max(0, now - oldest) };
  }
}

function sameNames(a: ReadonlySet<string> | undefined, b: ReadonlySet<string> | undefined): boolean {
  if (a === b) return true;
  if (a === undefined || b === undefined || a.size !== b.size) return false;
  for (const n of a) if (!b.has(n)) return false;
  return true;
}

function sameParams(a: ReadonlyMap<string, number>, b: ReadonlyMap<string, number>): boolean {
  if (a === b) return true;
  if (a.size !== b.size) return false;
  for (const [k, v] of a) if (b.get(k) !== v) return false;
  return true;
}
