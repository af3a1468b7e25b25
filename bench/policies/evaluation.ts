/**
 * Where the time of one rule evaluation goes, outside the loop: each rule alone over a sample of
 * (instance, host) pairs as CompiledRule.evaluate runs it, evaluateInstance (all rules, concerns
 * built), and a prototype of "bind once per instance": the same expressions planned with the same
 * environment, called with an activation whose `instance` and `host` are reflected once per
 * instance (and host) instead of once per identifier reference per rule. The prototype's outcomes
 * are checked equal to CompiledRule.evaluate's on every sample.
 */
import { CelScalar, celEnv, celMap, isCelError, mapType, objectType, parse, plan } from "@bufbuild/cel";
import { create, createRegistry } from "@bufbuild/protobuf";
import { RE2JS } from "@bufbuild/re2";
import { ConstantSchema, type Expr } from "@bufbuild/cel-spec/cel/expr/syntax_pb.js";
import { reflect } from "@bufbuild/protobuf/reflect";
import { file_fleetlet_agent_v1_inventory } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { file_fleetlet_aggregator_v1_fleet, FleetInstanceSchema, PolicyHostSchema, type FleetInstance, type PolicyHost } from "../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { evaluateInstance } from "../../aggregator/policies/policy-evaluator.js";
import type { CompiledRule, RuleOutcome } from "../../aggregator/policies/policy-rule.js";
import { check } from "../common/report.js";

export interface Sample {
  instance: FleetInstance;
  host: PolicyHost;
}

const cpuUs = () => {
  const u = process.cpuUsage();
  return u.user + u.system;
};

/** CPU µs per call of fn over every sample, repeated until at least minMs of CPU. */
function timePerCall(samples: readonly Sample[], minMs: number, fn: (s: Sample) => unknown): number {
  for (const s of samples.slice(0, 2000)) fn(s); // warm-up
  let calls = 0;
  const start = cpuUs();
  let spent = 0;
  do {
    for (const s of samples) fn(s);
    calls += samples.length;
    spent = cpuUs() - start;
  } while (spent < minMs * 1000);
  return spent / calls;
}

export interface RuleCost {
  rule: string;
  usPerEval: number;
  failing: number;
}

/** Each rule alone: CPU µs per CompiledRule.evaluate, and how many samples fail it. */
export function perRuleCost(rules: readonly CompiledRule[], samples: readonly Sample[], params: ReadonlyMap<string, number>, minMs: number): RuleCost[] {
  return rules.map((r) => ({
    rule: r.name,
    usPerEval: timePerCall(samples, minMs, (s) => r.evaluate(s.instance, s.host, params)),
    failing: samples.filter((s) => r.evaluate(s.instance, s.host, params).fails !== false).length,
  }));
}

/** evaluateInstance (every rule, concerns made and sorted): CPU µs per instance. */
export function evaluateInstanceCost(rules: readonly CompiledRule[], samples: readonly Sample[], params: ReadonlyMap<string, number>, minMs: number): number {
  const now = Date.now();
  return timePerCall(samples, minMs, (s) => evaluateInstance(rules, s.instance, s.host, params, s.instance.concerns, now));
}

/** A rule that references nothing: the fixed cost of one call of a planned expression. */
export function emptyRuleCost(samples: readonly Sample[], params: ReadonlyMap<string, number>, minMs: number): number {
  const run = plan(environment(), parse("false"));
  return timePerCall(samples, minMs, (s) => run({ instance: s.instance, host: s.host, params: params as Map<string, number> }));
}

const registry = createRegistry(file_fleetlet_agent_v1_inventory, file_fleetlet_aggregator_v1_fleet);
let env: ReturnType<typeof celEnv> | undefined;
/** The same environment as aggregator/policies/policy-rule.ts (registry of both protos, the three variables). */
function environment() {
  env ??= celEnv({
    registry,
    variables: { instance: objectType(FleetInstanceSchema), host: objectType(PolicyHostSchema), params: mapType(CelScalar.STRING, CelScalar.DOUBLE) },
  });
  return env;
}

/**
 * The prototype: every rule planned as policy-rule.ts plans it, evaluated for one instance with
 * ONE activation object whose values are already CEL values (ReflectMessage for the messages, a
 * CelMap for params), made once per instance (the host's once per host).
 */
export function boundEvaluator(rules: readonly CompiledRule[], foldEnums = false) {
  const runs = rules.map((r) => {
    const parsed = parse(r.failsWhen);
    if (foldEnums) foldEnumConstants(parsed.expr);
    return { name: r.name, run: plan(environment(), parsed) };
  });
  const hostCache = new WeakMap<PolicyHost, unknown>();
  let paramsSource: ReadonlyMap<string, number> | undefined;
  let paramsCel: unknown;
  return (instance: FleetInstance, host: PolicyHost, params: ReadonlyMap<string, number>): RuleOutcome[] => {
    let h = hostCache.get(host);
    if (h === undefined) {
      h = reflect(PolicyHostSchema, host);
      hostCache.set(host, h);
    }
    if (paramsSource !== params) {
      paramsSource = params;
      paramsCel = celMap(params as Map<string, number>);
    }
    const bindings = { instance: reflect(FleetInstanceSchema, instance), host: h, params: paramsCel } as never;
    const out: RuleOutcome[] = [];
    for (const { run } of runs) {
      try {
        const r = run(bindings);
        if (isCelError(r)) out.push({ error: r.message });
        else if (typeof r !== "boolean") out.push({ error: "not a bool" });
        else out.push({ fails: r });
      } catch (e) {
        out.push({ error: String(e) });
      }
    }
    return out;
  };
}

/** The prototype's CPU µs per rule evaluation, after checking its outcomes against CompiledRule.evaluate on every sample. */
export function boundEvaluatorCost(rules: readonly CompiledRule[], samples: readonly Sample[], params: ReadonlyMap<string, number>, minMs: number, foldEnums = false): number {
  const evaluate = boundEvaluator(rules, foldEnums);
  for (const s of samples) {
    const got = evaluate(s.instance, s.host, params);
    rules.forEach((r, i) => {
      const want = r.evaluate(s.instance, s.host, params);
      check(got[i]!.fails === want.fails && (got[i]!.error === undefined) === (want.error === undefined), `prototype differs on rule ${r.name} for ${s.instance.id}: ${JSON.stringify(got[i])} vs ${JSON.stringify(want)}`);
    });
  }
  return timePerCall(samples, minMs, (s) => evaluate(s.instance, s.host, params)) / rules.length;
}

/**
 * Enum values named in full (`fleetlet.agent.v1.InstanceState.INSTANCE_STATE_RUNNING`) replaced
 * by their number, in place: @bufbuild/cel resolves such a name at every evaluation (activation
 * lookups of each namespace candidate, registry.getEnum, values.find, BigInt).
 */
export function foldEnumConstants(expr: Expr | undefined): void {
  const dotted = (e: Expr): string | undefined => {
    const k = e.exprKind;
    if (k.case === "identExpr") return k.value.name;
    if (k.case === "selectExpr" && !k.value.testOnly && k.value.operand) {
      const left = dotted(k.value.operand);
      return left === undefined ? undefined : `${left}.${k.value.field}`;
    }
    return undefined;
  };
  const walk = (e: Expr | undefined): void => {
    if (!e) return;
    const k = e.exprKind;
    switch (k.case) {
      case "selectExpr": {
        const name = dotted(e);
        const dot = name?.lastIndexOf(".") ?? -1;
        const value = name && dot > 0 ? registry.getEnum(name.slice(0, dot))?.values.find((v) => v.name === name.slice(dot + 1)) : undefined;
        if (value) {
          e.exprKind = { case: "constExpr", value: create(ConstantSchema, { constantKind: { case: "int64Value", value: BigInt(value.number) } }) };
          return;
        }
        walk(k.value.operand);
        return;
      }
      case "callExpr":
        walk(k.value.target);
        for (const a of k.value.args) walk(a);
        return;
      case "listExpr":
        for (const a of k.value.elements) walk(a);
        return;
      case "structExpr":
        for (const entry of k.value.entries) {
          if (entry.keyKind.case === "mapKey") walk(entry.keyKind.value);
          walk(entry.value);
        }
        return;
      case "comprehensionExpr":
        walk(k.value.iterRange);
        walk(k.value.accuInit);
        walk(k.value.loopCondition);
        walk(k.value.loopStep);
        walk(k.value.result);
        return;
      default:
        return;
    }
  };
  walk(expr);
}

/**
 * While fn runs, RE2JS.compile (what CEL's `matches` calls on every evaluation) answers from a
 * cache by (pattern, flags). Restored afterwards: a prototype, not something to leave patched.
 */
export function withRegexCache<T>(fn: () => T): T {
  const original = RE2JS.compile;
  const cache = new Map<string, ReturnType<typeof RE2JS.compile>>();
  RE2JS.compile = ((regex: string, flags = 0) => {
    const k = `${flags}/${regex}`;
    let re = cache.get(k);
    if (!re) {
      re = original.call(RE2JS, regex, flags);
      cache.set(k, re);
    }
    return re;
  }) as typeof RE2JS.compile;
  try {
    return fn();
  } finally {
    RE2JS.compile = original;
  }
}
