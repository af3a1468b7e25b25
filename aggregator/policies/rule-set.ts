import { createHash } from "node:crypto";
import { PolicySource } from "../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { BUILTIN_RULES, DEFAULT_PARAMETERS } from "./builtin-rules.js";
import { compileRule, type CompiledRule, type RuleSpec } from "./policy-rule.js";
import type { PolicyStore } from "./policy-store.js";
import type { RulesFileContent } from "./rules-file.js";

/** A put or delete the rule set refuses: the rule belongs to the --policies file, or does not exist. */
export class RuleSetConflict extends Error {
  override readonly name = "RuleSetConflict";
  constructor(
    message: string,
    readonly kind: "file-owned" | "not-found",
  ) {
    super(message);
  }
}

/**
 * The rules in force (policies.md "Rules"): the built-in ones, those put through the API (stored,
 * replacing a built-in of the same name), and the --policies file's (which owns its names), plus
 * the parameters rules see. Its `version` is bumped by every change of what is in force — also by
 * a file edited while the aggregator was down (the content's hash is stored with the version);
 * `hash` identifies the content itself, and is what validation results are keyed by.
 */
export class RuleSet {
  private rules = new Map<string, CompiledRule>();
  private sorted: CompiledRule[] | undefined;
  private params = new Map<string, number>();
  private readonly api = new Map<string, CompiledRule>();
  private readonly turnedOff = new Set<string>();
  private readonly builtins: Map<string, CompiledRule>;
  private file: RulesFileContent = { rules: [], parameters: new Map() };
  private readonly listeners = new Set<() => void>();
  version = 0;
  hash = "";

  constructor(
    private readonly store: PolicyStore | undefined,
    builtins: readonly RuleSpec[] = BUILTIN_RULES,
    file?: RulesFileContent,
  ) {
    this.builtins = new Map(builtins.map((r) => [r.name, compileRule(r)]));
    for (const stored of store?.rules() ?? []) {
      if (stored.deleted) this.turnedOff.add(stored.name);
      else this.api.set(stored.name, compileRule({ ...stored, source: PolicySource.API }));
    }
    if (file) this.file = file;
    const saved = store?.ruleSet();
    this.version = saved?.version ?? 0;
    this.hash = saved?.hash ?? "";
    this.recompute();
  }

  /** Rules in force, sorted by name (the same array until the next change: do not modify). */
  list(): readonly CompiledRule[] {
    this.sorted ??= [...this.rules.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    return this.sorted;
  }

  /** The rules in force that read `now` (their outcome can change with time alone). */
  timeRules(): readonly CompiledRule[] {
    this.readingNow ??= this.list().filter((r) => r.readsNow);
    return this.readingNow;
  }

  private readingNow: readonly CompiledRule[] | undefined;

  get(name: string): CompiledRule | undefined {
    return this.rules.get(name);
  }

  get parameters(): ReadonlyMap<string, number> {
    return this.params;
  }

  /** Called after every change of what is in force (not for a put that changes nothing). */
  onChange(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** The --policies file's new content (already checked). */
  setFile(content: RulesFileContent): void {
    this.file = content;
    this.recompute();
  }

  /** Adds or replaces a rule through the API; RuleError for a bad rule, RuleSetConflict for a file-owned name. */
  put(spec: RuleSpec): CompiledRule {
    this.refuseFileOwned(spec.name, "put");
    const rule = compileRule({ ...spec, source: PolicySource.API });
    this.api.set(rule.name, rule);
    this.turnedOff.delete(rule.name);
    this.recompute((version, hash) => this.store?.saveRule({ ...rule, deleted: false }, version, hash));
    return rule;
  }

  /** Removes a rule in force (a built-in one stays off); RuleSetConflict when it is the file's or unknown. */
  delete(name: string): void {
    this.refuseFileOwned(name, "deleted");
    if (!this.rules.has(name)) throw new RuleSetConflict(`no rule named ${JSON.stringify(name)}`, "not-found");
    this.api.delete(name);
    if (this.builtins.has(name)) {
      this.turnedOff.add(name);
      const b = this.builtins.get(name)!;
      this.recompute((version, hash) => this.store?.saveRule({ ...b, deleted: true }, version, hash));
    } else {
      this.recompute((version, hash) => this.store?.forgetRule(name, version, hash));
    }
  }

  private refuseFileOwned(name: string, what: string): void {
    if (this.file.rules.some((r) => r.name === name)) throw new RuleSetConflict(`rule ${name} comes from the --policies file: it is ${what} there, not through the API`, "file-owned");
  }

  /**
   * Works out what is in force; when its hash changed, bumps the version, saves it (with the
   * rule change, if any, in one transaction) and tells the listeners.
   */
  private recompute(save?: (version: number, hash: string) => void): void {
    const rules = new Map<string, CompiledRule>();
    for (const [name, r] of this.builtins) if (!this.turnedOff.has(name)) rules.set(name, r);
    for (const [name, r] of this.api) rules.set(name, r);
    for (const r of this.file.rules) rules.set(r.name, r);
    const params = new Map(DEFAULT_PARAMETERS);
    for (const [k, v] of this.file.parameters) params.set(k, v);
    const hash = contentHash(rules, params);
    const changed = hash !== this.hash;
    const version = changed ? this.version + 1 : this.version;
    if (save) save(version, hash);
    else if (changed) this.store?.saveRuleSet(version, hash);
    this.rules = rules;
    this.sorted = undefined;
    this.readingNow = undefined;
    this.params = params;
    if (!changed) return;
    this.version = version;
    this.hash = hash;
    for (const l of this.listeners) l();
  }
}

function contentHash(rules: ReadonlyMap<string, CompiledRule>, params: ReadonlyMap<string, number>): string {
  const h = createHash("sha256");
  for (const name of [...rules.keys()].sort()) {
    const r = rules.get(name)!;
    h.update(JSON.stringify([r.name, r.severity, r.description, r.failsWhen]));
  }
  for (const k of [...params.keys()].sort()) h.update(JSON.stringify([k, params.get(k)]));
  return h.digest("hex").slice(0, 16);
}
