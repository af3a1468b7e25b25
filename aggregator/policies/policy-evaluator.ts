import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { ConcernSchema, type Concern, type FleetInstance, type PolicyHost, type PolicySeverity } from "../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import type { CompiledRule } from "./policy-rule.js";
import type { InputPath } from "./rule-inputs.js";

/**
 * One instance against every rule in force (policies.md): a concern for each rule it fails, and
 * for each rule that could not be evaluated on it ("rule X could not be evaluated: ..." — never a
 * silent pass). A concern it already had keeps its `since`. Sorted by rule name. `readNow`, when
 * given, gets the names of the rules whose evaluation read `now` (their outcome may change with
 * time alone; the others' will not until an input changes).
 */
export function evaluateInstance(
  rules: readonly CompiledRule[],
  instance: FleetInstance,
  host: PolicyHost,
  params: ReadonlyMap<string, number>,
  previous: readonly Concern[],
  nowMs: number,
  readNow?: Set<string>,
): Concern[] {
  const out: Concern[] = [];
  const scratch = { instance: new Map(), host: hostScratch(host) };
  const now = timestampFromMs(nowMs);
  for (const rule of rules) {
    const outcome = rule.evaluate(instance, host, params, scratch, now);
    if (outcome.readNow) readNow?.add(rule.name);
    if (outcome.fails === false) continue;
    const message = outcome.error !== undefined ? `rule ${rule.name} could not be evaluated: ${outcome.error}` : rule.description || `fails rule ${rule.name}`;
    // The same concern as before is the same object (it keeps its since; nothing allocated).
    const before = previous.find((c) => c.rule === rule.name && c.severity === rule.severity && c.message === message);
    out.push(before ?? newConcern(rule.name, rule.severity, message, nowMs));
  }
  // Sorted by rule name (RuleSet.list is already: then this only checks).
  return out.sort((a, b) => (a.rule < b.rule ? -1 : a.rule > b.rule ? 1 : 0));
}

/** Whether two concern lists say the same (rule, severity, message; `since` aside). */
export function sameConcerns(a: readonly Concern[], b: readonly Concern[]): boolean {
  if (a.length !== b.length) return false;
  return a.every((c, i) => c.rule === b[i]!.rule && c.severity === b[i]!.severity && c.message === b[i]!.message);
}

/** Whether a concern says its rule could not be evaluated (counted as an error in summaries). */
export function isEvaluationError(c: Concern): boolean {
  return c.message.startsWith(`rule ${c.rule} could not be evaluated: `);
}

// A host's value keys, reused by all its instances while it is the same object (a new PolicyHost
// is made whenever the host changes).
const hostScratches = new WeakMap<PolicyHost, Map<InputPath, string>>();
function hostScratch(host: PolicyHost): Map<InputPath, string> {
  let m = hostScratches.get(host);
  if (!m) {
    m = new Map();
    hostScratches.set(host, m);
  }
  return m;
}

// Concerns found in the same millisecond are equal whole (since included): one object for all of
// them, so a sweep that finds the same problem on 10,000 instances makes (and encodes) it once.
// Concern objects are never modified (a change makes new ones).
let internedAt = Number.NaN;
let interned = new Map<string, Concern>();
function newConcern(rule: string, severity: PolicySeverity, message: string, nowMs: number): Concern {
  if (nowMs !== internedAt) {
    internedAt = nowMs;
    interned = new Map();
  }
  const key = `${rule}\u0000${severity}\u0000${message}`;
  let c = interned.get(key);
  if (!c) {
    c = create(ConcernSchema, { rule, severity, message, since: timestampFromMs(nowMs) });
    interned.set(key, c);
  }
  return c;
}
