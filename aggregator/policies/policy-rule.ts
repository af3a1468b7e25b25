import { CelScalar, celEnv, isCelError, mapType, objectType, parse, plan, type CelEnv } from "@bufbuild/cel";
import { createRegistry, create, type DescMessage } from "@bufbuild/protobuf";
import { TimestampSchema, timestampNow, type Timestamp } from "@bufbuild/protobuf/wkt";
import type { Expr, SourceInfo } from "@bufbuild/cel-spec/cel/expr/syntax_pb.js";
import { file_fleetlet_agent_v1_inventory, InstanceKind, InstanceSource, InstanceState } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { file_fleetlet_agent_v1_runtime } from "../../gen/fleetlet/agent/v1/runtime_pb.js";
import { file_fleetlet_agent_v1_standby } from "../../gen/fleetlet/agent/v1/standby_pb.js";
import {
  file_fleetlet_aggregator_v1_fleet,
  FleetInstanceSchema,
  HostSyncState,
  PolicyHostSchema,
  PolicySeverity,
  type PolicySource,
  type FleetInstance,
  type PolicyHost,
} from "../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { RE2JS } from "@bufbuild/re2";
import { errorMessage } from "../../lib/error-message.js";
import { inputKey, ruleInputs, walkExpr, type InputScratch } from "./rule-inputs.js";

/** A rule as written (file, API or built in), before it is checked. */
export interface RuleSpec {
  name: string;
  severity: PolicySeverity;
  description: string;
  failsWhen: string;
  source: PolicySource;
}

/**
 * What one evaluation found: the instance fails the rule, passes it, or could not be evaluated.
 * `readNow`: the evaluation looked at `now` (CEL's && and || go left to right and stop early, so
 * `instance.kind == CONTAINER && now - ... > d` reads `now` only for containers): only such an
 * outcome can change with time alone.
 */
export type RuleOutcome = ({ fails: boolean; error?: undefined } | { fails?: undefined; error: string }) & { readNow?: boolean };

/** A checked rule with its expression planned once: evaluate() never throws. */
export interface CompiledRule extends RuleSpec {
  /** Memoised by the values the expression reads; `scratch` shares value keys between the rules of one validation. */
  evaluate(instance: FleetInstance, host: PolicyHost, params: ReadonlyMap<string, number>, scratch?: InputScratch, now?: Timestamp): RuleOutcome;
  /** The evaluator itself, every time (tests compare the two). */
  evaluateUncached(instance: FleetInstance, host: PolicyHost, params: ReadonlyMap<string, number>, now?: Timestamp): RuleOutcome;
  /** Outcomes memoised now (distinct input values seen). */
  memoSize(): number;
  /** Whether it reads `host` (a host change needs it evaluated again) or `params`. */
  readsHost: boolean;
  readsParams: boolean;
  /** Reads `now`: its outcome can change with time alone (the scheduled search evaluates it again). */
  readsNow: boolean;
}

/** A rule refused: `field` names what is wrong (rule.name, rule.fails_when, ...). */
export class RuleError extends Error {
  override readonly name = "RuleError";
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(message);
  }
}

export const RULE_NAME = /^[a-z][a-z0-9-]{0,62}$/;
const MAX_DESCRIPTION = 512;
const MAX_EXPRESSION = 4096;

// Both proto files: expressions may name enum values by their full names
// (fleetlet.agent.v1.InstanceState.INSTANCE_STATE_RUNNING) as well as by number.
const registry = createRegistry(file_fleetlet_agent_v1_inventory, file_fleetlet_agent_v1_runtime, file_fleetlet_agent_v1_standby, file_fleetlet_aggregator_v1_fleet);
const VARIABLES = {
  instance: objectType(FleetInstanceSchema),
  host: objectType(PolicyHostSchema),
  params: mapType(CelScalar.STRING, CelScalar.DOUBLE),
  // The time of the evaluation: rules over durations (`now - instance.health_since > ...`).
  now: objectType(TimestampSchema),
};
let env: CelEnv | undefined;
function celEnvironment(): CelEnv {
  env ??= celEnv({ registry, variables: VARIABLES, re2: { compile: compiledRegex } });
  return env;
}

// CEL's `matches` compiles its pattern at every call (@bufbuild/cel std/logic.js); rules use a
// handful of constant patterns, so they are compiled once. Bounded: a pattern built from data
// (`instance.name.matches(instance.labels.re)`) cannot grow it without limit.
const regexes = new Map<string, ReturnType<typeof RE2JS.compile>>();
const REGEX_CACHE_LIMIT = 256;
function compiledRegex(pattern: string): ReturnType<typeof RE2JS.compile> {
  let re = regexes.get(pattern);
  if (!re) {
    re = RE2JS.compile(pattern);
    if (regexes.size >= REGEX_CACHE_LIMIT) regexes.clear();
    regexes.set(pattern, re);
  }
  return re;
}

/**
 * Checks a rule and plans its expression (policies.md "Rules"): the name, severity and
 * description first, then the CEL expression — parsed (a syntax error keeps CEL's
 * `<input>:line:col`), every `instance.x` / `host.x` field path checked against the messages
 * (with the position of the unknown field), and a trial run on probe instances: an error that
 * every probe gives (no overload for these types, an unknown function) is the expression's,
 * not the data's. @bufbuild/cel 0.6 does not export its type checker; errors that depend on
 * data (a missing map key) stay for run time, where they become concerns.
 */
export function compileRule(spec: RuleSpec): CompiledRule {
  if (!RULE_NAME.test(spec.name)) throw new RuleError("rule.name", `must match ${RULE_NAME.source}, got ${JSON.stringify(spec.name.slice(0, 80))}`);
  const where = `rule ${spec.name}`;
  if (!(spec.severity in PolicySeverity) || spec.severity === PolicySeverity.UNSPECIFIED) {
    throw new RuleError("rule.severity", `${where}: must be info, warning or critical`);
  }
  if (spec.description.length > MAX_DESCRIPTION || /[\u0000-\u001f\u007f]/.test(spec.description)) {
    throw new RuleError("rule.description", `${where}: at most ${MAX_DESCRIPTION} printable characters`);
  }
  const source = spec.failsWhen.trim();
  if (source === "") throw new RuleError("rule.fails_when", `${where}: an expression is required`);
  if (source.length > MAX_EXPRESSION) throw new RuleError("rule.fails_when", `${where}: at most ${MAX_EXPRESSION} characters`);
  let parsed: ReturnType<typeof parse>;
  try {
    parsed = parse(source);
  } catch (e) {
    throw new RuleError("rule.fails_when", `${where}: ${errorMessage(e)}`);
  }
  checkFieldPaths(parsed.expr, parsed.sourceInfo, source, where);
  let run: ReturnType<typeof plan<typeof VARIABLES>>;
  try {
    run = plan(celEnvironment(), parsed) as ReturnType<typeof plan<typeof VARIABLES>>;
  } catch (e) {
    throw new RuleError("rule.fails_when", `${where}: ${errorMessage(e)}`);
  }
  const inputs = ruleInputs(parsed.expr, FleetInstanceSchema, PolicyHostSchema);
  const run1 = (instance: FleetInstance, host: PolicyHost, params: ReadonlyMap<string, number>, now?: Timestamp): RuleOutcome => {
    // A rule naming `now` gets it through a getter, to learn whether this evaluation read it
    // (the activation reads bindings by property: @bufbuild/cel ObjectActivation).
    let readNow = false;
    const bindings = inputs.readsNow
      ? {
          instance,
          host,
          params: params as Map<string, number>,
          get now() {
            readNow = true;
            return now ?? timestampNow();
          },
        }
      : { instance, host, params: params as Map<string, number>, now: NO_TIME };
    let outcome: RuleOutcome;
    try {
      const r = run(bindings);
      if (isCelError(r)) outcome = { error: r.message };
      else if (typeof r !== "boolean") outcome = { error: `the expression gave ${describeValue(r)}, not a bool` };
      else outcome = { fails: r };
    } catch (e) {
      outcome = { error: errorMessage(e) };
    }
    if (readNow) outcome.readNow = true;
    return outcome;
  };
  // Outcomes memoised by the values the expression reads (rule-inputs.ts): the evaluator costs
  // 1–4 µs a run, and most instances of a fleet share the few values a rule looks at.
  const memo = new Map<string, RuleOutcome>();
  // A rule whose inputs are nearly all distinct (an instance's name, its id) gains nothing from
  // the memo and pays for its keys: after MEMO_TRIAL lookups with few hits it is turned off.
  let lookups = 0;
  let hits = 0;
  // Time is an input no key holds: an outcome that read `now` is never memoised; one that did not
  // is a function of the keyed inputs like any other (the same inputs take the same path).
  let memoOff = inputs.whole;
  const evaluate = (instance: FleetInstance, host: PolicyHost, params: ReadonlyMap<string, number>, scratch?: InputScratch, now?: Timestamp): RuleOutcome => {
    if (memoOff) return run1(instance, host, params, now);
    const key = inputKey(inputs, instance, host, inputs.readsParams ? paramsKeyOf(params) : "", scratch);
    if (key === undefined) return run1(instance, host, params, now);
    lookups++;
    const hit = memo.get(key);
    if (hit) {
      hits++;
      return hit;
    }
    if (lookups >= MEMO_TRIAL && hits < lookups / 5) {
      memoOff = true;
      memo.clear();
    }
    const outcome = run1(instance, host, params, now);
    if (memo.size >= MEMO_LIMIT) memo.clear();
    if (!memoOff && !outcome.readNow) memo.set(key, outcome);
    return outcome;
  };
  const probes = probeInputs();
  const outcomes = probes.map(([i, h, p]) => run1(i, h, p));
  const staticError = outcomes.every((o) => o.error !== undefined && STATIC_ERROR.test(o.error)) ? outcomes[0]!.error : undefined;
  if (staticError) throw new RuleError("rule.fails_when", `${where}: ${staticError}`);
  const notBool = outcomes.find((o) => o.error?.endsWith("not a bool"));
  if (notBool && outcomes.every((o) => o.error?.endsWith("not a bool"))) throw new RuleError("rule.fails_when", `${where}: ${notBool.error}`);
  return {
    ...spec,
    failsWhen: source,
    evaluate,
    evaluateUncached: run1,
    memoSize: () => memo.size,
    readsHost: inputs.whole || inputs.hostPaths.length > 0,
    readsParams: inputs.whole || inputs.readsParams,
    readsNow: inputs.readsNow,
  };
}

// What a rule that never names `now` is given for it (the variable is declared for every rule).
const NO_TIME = create(TimestampSchema);

/** Memoised outcomes kept per rule at most (then forgotten at once: a fleet with that many distinct inputs gains little). */
const MEMO_LIMIT = 65_536;
/** Lookups after which a memo hit by fewer than one in five is turned off for the rule. */
const MEMO_TRIAL = 4096;

const paramsKeys = new WeakMap<ReadonlyMap<string, number>, string>();
function paramsKeyOf(params: ReadonlyMap<string, number>): string {
  let key = paramsKeys.get(params);
  if (key === undefined) {
    key = JSON.stringify([...params].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
    paramsKeys.set(params, key);
  }
  return key;
}

// Errors of the expression itself rather than of one instance's data.
const STATIC_ERROR = /no matching overload|unresolved attribute|undeclared reference|unknown function|no such overload/i;

function describeValue(v: unknown): string {
  if (v === null) return "null";
  if (typeof v === "bigint") return `an int (${v})`;
  if (typeof v === "number") return `a double (${v})`;
  if (typeof v === "string") return "a string";
  return `a ${typeof v}`;
}

/**
 * Walks the expression for field paths rooted at `instance` and `host` and checks each field
 * against the message it selects from, down through message fields (a map or scalar ends the
 * check: its keys are data). A comprehension variable that shadows them is left alone.
 */
function checkFieldPaths(expr: Expr, info: SourceInfo | undefined, source: string, where: string): void {
  const roots: Record<string, DescMessage> = { instance: FleetInstanceSchema, host: PolicyHostSchema };
  const typeOf = (e: Expr, shadowed: ReadonlySet<string>): DescMessage | undefined => {
    const k = e.exprKind;
    if (k.case === "identExpr") return shadowed.has(k.value.name) ? undefined : roots[k.value.name];
    if (k.case !== "selectExpr" || !k.value.operand) return undefined;
    const parent = typeOf(k.value.operand, shadowed);
    if (!parent) return undefined;
    // A rule sees the instance as the agent reported it, not what other rules found.
    const field = parent.fields.find((f) => f.name === k.value.field && !(parent === FleetInstanceSchema && f.name === "concerns"));
    if (!field) {
      const known = parent.fields
        .filter((f) => !(parent === FleetInstanceSchema && f.name === "concerns"))
        .map((f) => f.name)
        .join(", ");
      throw new RuleError("rule.fails_when", `${where}: ${position(info, source, e.id)}: ${parent.name} has no field ${JSON.stringify(k.value.field)} (it has: ${known})`);
    }
    return field.fieldKind === "message" ? field.message : undefined;
  };
  walkExpr(expr, (e, shadowed) => {
    if (e.exprKind.case === "selectExpr") typeOf(e, shadowed);
    return false;
  });
}

/** "<input>:line:col" of an expression node, as CEL's own parse errors say it. */
function position(info: SourceInfo | undefined, source: string, id: bigint): string {
  const offset = info?.positions[id.toString()] ?? 0;
  const before = source.slice(0, offset);
  const line = before.split("\n").length;
  const col = offset - before.lastIndexOf("\n");
  return `<input>:${line}:${col}`;
}

/** An instance and host with every field set, and both empty: what a static error fails on both. */
function probeInputs(): [FleetInstance, PolicyHost, ReadonlyMap<string, number>][] {
  const full = create(FleetInstanceSchema, {
    id: "probe",
    name: "probe",
    kind: InstanceKind.VM,
    state: InstanceState.RUNNING,
    pid: 1,
    tapDevice: "tap0",
    ip: "10.0.0.1",
    networkEnabled: true,
    hasVgpu: true,
    allocatedVcpus: 1,
    allocatedMemoryBytes: 1n,
    allocatedStorageBytes: 1n,
    hypervisor: "probe",
    standbyPolicy: { enabled: true },
    labels: { probe: "probe" },
    source: InstanceSource.REGISTERED,
    runtimeRef: "probe",
    pidStartTime: 1n,
    resourceVersion: 1n,
    host: "probe",
  });
  const fullHost = create(PolicyHostSchema, {
    name: "probe",
    labels: { probe: "probe" },
    syncState: HostSyncState.SYNCED,
    agentVersion: "0",
    cpuCount: 1,
    memoryBytes: 1n,
    kernel: "probe",
    standbySupported: true,
    allocatedVcpus: 1n,
    allocatedMemoryBytes: 1n,
    factsKnown: true,
  });
  const params = new Map([["probe", 1]]);
  return [
    [full, fullHost, params],
    [create(FleetInstanceSchema), create(PolicyHostSchema), new Map()],
  ];
}
