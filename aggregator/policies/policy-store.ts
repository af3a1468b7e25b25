import { join } from "node:path";
import type Database from "better-sqlite3";
import { fromJsonString, toJsonString } from "@bufbuild/protobuf";
import { ConcernSchema, type PolicySeverity, type Concern } from "../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { namedStoreError, openStoreDatabase } from "../metering/store-database.js";
import type { Migration } from "../metering/store-migrations.js";

export const POLICY_STORE_FILE = "policies.sqlite";

export const POLICY_MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    description: "policy rules put through the API, the rule set's version, and validation results",
    sql: `
      -- Rules put through FleetService.PutPolicy; deleted = 1 keeps a built-in rule off.
      CREATE TABLE policy_rules (
        name       TEXT    NOT NULL PRIMARY KEY,
        severity   INTEGER NOT NULL,
        description TEXT   NOT NULL,
        fails_when TEXT    NOT NULL,
        deleted    INTEGER NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1))
      ) STRICT, WITHOUT ROWID;
      -- The rule set's version, bumped whenever its content (hash) differs from the last one.
      CREATE TABLE policy_rule_set (
        id      INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
        version INTEGER NOT NULL,
        hash    TEXT    NOT NULL
      ) STRICT;
      -- What each instance was last validated against, and what was found (concerns as JSON).
      CREATE TABLE policy_results (
        host              TEXT NOT NULL,
        id                TEXT NOT NULL,
        instance_revision TEXT NOT NULL,
        host_revision     TEXT NOT NULL,
        rule_hash         TEXT NOT NULL,
        concerns          TEXT NOT NULL,
        PRIMARY KEY (host, id)
      ) STRICT, WITHOUT ROWID;
    `,
  },
  {
    version: 2,
    description: "the rule-set hash every stored result is valid under (after a complete search)",
    // A row keeps the hash it was last written with when a later rule change left its concerns
    // as they were (not rewriting 100,000 rows for one rule): validated_hash vouches for them.
    sql: `
      ALTER TABLE policy_rule_set ADD COLUMN validated_hash TEXT NOT NULL DEFAULT '';
    `,
  },
  {
    version: 3,
    description: "the rules whose outcome on the instance read the time (JSON list; NULL = not known)",
    // Without it a restarted aggregator evaluates every time rule on every instance at its first
    // search (a container's `now - health_since` check on 100,000 instances).
    sql: `
      ALTER TABLE policy_results ADD COLUMN time_rules TEXT;
    `,
  },
];

/** No rule's outcome read the time (one shared set: compared by identity). */
export const NO_TIME_RULES: ReadonlySet<string> = new Set();

export interface StoredRule {
  name: string;
  severity: PolicySeverity;
  description: string;
  failsWhen: string;
  deleted: boolean;
}

/** What an instance was validated against, and the concerns found. */
export interface ValidationResult {
  instanceRevision: string;
  hostRevision: string;
  ruleHash: string;
  concerns: Concern[];
  /** The rules whose outcome read `now` (their outcome can change with time alone); undefined: not known. */
  timeRules: ReadonlySet<string> | undefined;
}

/**
 * The aggregator's policy state on disk (`policies.sqlite`, synchronous=NORMAL: results can be
 * recomputed, rules put through the API are small and written at once). Results are keyed by
 * the revisions they were computed at, so a stale row is simply "behind" after a restart.
 */
export class PolicyStore {
  private readonly stmts;

  private constructor(
    private readonly db: Database.Database,
    readonly file: string,
  ) {
    this.stmts = {
      rules: db.prepare<[], { name: string; severity: number; description: string; failsWhen: string; deleted: number }>(
        "SELECT name, severity, description, fails_when AS failsWhen, deleted FROM policy_rules ORDER BY name",
      ),
      putRule: db.prepare<[string, number, string, string, number]>(
        "INSERT OR REPLACE INTO policy_rules (name, severity, description, fails_when, deleted) VALUES (?, ?, ?, ?, ?)",
      ),
      deleteRule: db.prepare<[string]>("DELETE FROM policy_rules WHERE name = ?"),
      ruleSet: db.prepare<[], { version: number; hash: string }>("SELECT version, hash FROM policy_rule_set WHERE id = 1"),
      validatedHash: db.prepare<[], { validatedHash: string }>("SELECT validated_hash AS validatedHash FROM policy_rule_set WHERE id = 1"),
      setValidatedHash: db.prepare<[string]>("UPDATE policy_rule_set SET validated_hash = ? WHERE id = 1"),
      putRuleSet: db.prepare<[number, string]>("INSERT OR REPLACE INTO policy_rule_set (id, version, hash) VALUES (1, ?, ?)"),
      results: db.prepare<[], { host: string; id: string; instanceRevision: string; hostRevision: string; ruleHash: string; concerns: string; timeRules: string | null }>(
        "SELECT host, id, instance_revision AS instanceRevision, host_revision AS hostRevision, rule_hash AS ruleHash, concerns, time_rules AS timeRules FROM policy_results",
      ),
      putResult: db.prepare<[string, string, string, string, string, string, string | null]>(
        "INSERT OR REPLACE INTO policy_results (host, id, instance_revision, host_revision, rule_hash, concerns, time_rules) VALUES (?, ?, ?, ?, ?, ?, ?)",
      ),
      deleteResult: db.prepare<[string, string]>("DELETE FROM policy_results WHERE host = ? AND id = ?"),
    };
  }

  static open(stateDir: string): PolicyStore {
    const file = join(stateDir, POLICY_STORE_FILE);
    return new PolicyStore(openStoreDatabase(file, POLICY_MIGRATIONS, "NORMAL"), file);
  }

  private named<T>(f: () => T): T {
    try {
      return f();
    } catch (e) {
      throw namedStoreError(this.file, e);
    }
  }

  rules(): StoredRule[] {
    return this.named(() => this.stmts.rules.all().map((r) => ({ ...r, severity: r.severity as PolicySeverity, deleted: r.deleted === 1 })));
  }

  /** A rule put (deleted false) or a built-in one turned off (deleted true), with the rule set's new version. */
  saveRule(rule: StoredRule, version: number, hash: string): void {
    this.named(() =>
      this.db.transaction(() => {
        this.stmts.putRule.run(rule.name, rule.severity, rule.description, rule.failsWhen, rule.deleted ? 1 : 0);
        this.stmts.putRuleSet.run(version, hash);
      })(),
    );
  }

  /** An API rule removed (nothing left behind), with the rule set's new version. */
  forgetRule(name: string, version: number, hash: string): void {
    this.named(() =>
      this.db.transaction(() => {
        this.stmts.deleteRule.run(name);
        this.stmts.putRuleSet.run(version, hash);
      })(),
    );
  }

  ruleSet(): { version: number; hash: string } | undefined {
    return this.named(() => this.stmts.ruleSet.get());
  }

  saveRuleSet(version: number, hash: string): void {
    this.named(() => this.stmts.putRuleSet.run(version, hash));
  }

  /**
   * The rule-set hash under which every stored result is valid ("" = none): set after a complete
   * search, cleared at every rule change before anything is validated under the new rules.
   */
  validatedHash(): string {
    return this.named(() => this.stmts.validatedHash.get()?.validatedHash ?? "");
  }

  saveValidatedHash(hash: string): void {
    this.named(() => this.stmts.setValidatedHash.run(hash));
  }

  /** Every stored result, by "host\0id". */
  results(): Map<string, ValidationResult> {
    return this.named(() => {
      const out = new Map<string, ValidationResult>();
      for (const r of this.stmts.results.iterate()) {
        const concerns = (JSON.parse(r.concerns) as unknown[]).map((c) => fromJsonString(ConcernSchema, JSON.stringify(c)));
        out.set(`${r.host}\0${r.id}`, { instanceRevision: r.instanceRevision, hostRevision: r.hostRevision, ruleHash: r.ruleHash, concerns, timeRules: timeRulesOf(r.timeRules) });
      }
      return out;
    });
  }

  /** Results written (undefined: the instance is gone) in one transaction. */
  saveResults(batch: ReadonlyMap<string, ValidationResult | undefined>): void {
    if (batch.size === 0) return;
    this.named(() =>
      this.db.transaction(() => {
        for (const [key, r] of batch) {
          const [host, id] = key.split("\0") as [string, string];
          if (!r) this.stmts.deleteResult.run(host, id);
          else {
            const timeRules = r.timeRules === undefined ? null : r.timeRules.size === 0 ? "[]" : JSON.stringify([...r.timeRules].sort());
            this.stmts.putResult.run(host, id, r.instanceRevision, r.hostRevision, r.ruleHash, `[${r.concerns.map(concernJson).join(",")}]`, timeRules);
          }
        }
      })(),
    );
  }

  close(): void {
    this.db.close();
  }
}

// A concern's JSON, made once per Concern object: the loop shares one object among every instance
// that found the same problem in the same millisecond (policy-evaluator.ts newConcern), and
// concern objects are never modified.
const concernJsons = new WeakMap<Concern, string>();
function concernJson(c: Concern): string {
  let json = concernJsons.get(c);
  if (json === undefined) {
    json = toJsonString(ConcernSchema, c);
    concernJsons.set(c, json);
  }
  return json;
}

/** A stored time_rules column: NULL (written before migration 3) or anything unreadable is "not known". */
function timeRulesOf(column: string | null): ReadonlySet<string> | undefined {
  if (column === null) return undefined;
  if (column === "[]") return NO_TIME_RULES;
  try {
    const names: unknown = JSON.parse(column);
    return Array.isArray(names) && names.every((n) => typeof n === "string") ? new Set(names) : undefined;
  } catch {
    return undefined;
  }
}
