import type { DescField, DescMessage } from "@bufbuild/protobuf";
import type { Expr } from "@bufbuild/cel-spec/cel/expr/syntax_pb.js";

/**
 * What a rule's expression reads (policies.md; bench/policies): the field paths it selects
 * from `instance` and from `host`, whether it reads `params`, and whether it uses `instance` or
 * `host` whole (passed to a function, compared, iterated), which makes every field an input.
 *
 * A CEL expression is a pure function of its inputs, so two instances that agree on every path
 * a rule reads (and on its host's paths and the parameters, when it reads them) get the same
 * outcome: the validation loop memoises outcomes by those values (RuleInputs.key) instead of
 * running the evaluator again — most of a fleet shares a few shapes and states.
 */
export interface RuleInputs {
  instancePaths: DescField[][];
  hostPaths: DescField[][];
  readsParams: boolean;
  /** Reads `now` (the evaluation's time). */
  readsNow: boolean;
  /** `instance` or `host` used whole: no key, always evaluated. */
  whole: boolean;
}

/** Collects the inputs of an expression already checked by checkFieldPaths (paths resolve). */
export function ruleInputs(expr: Expr, instanceSchema: DescMessage, hostSchema: DescMessage): RuleInputs {
  const inputs: RuleInputs = { instancePaths: [], hostPaths: [], readsParams: false, readsNow: false, whole: false };
  const roots: Record<string, DescMessage> = { instance: instanceSchema, host: hostSchema };
  /** A select chain down to `instance`/`host`: its root and fields, as far as they are message fields. */
  const pathOf = (e: Expr, shadowed: ReadonlySet<string>): { root: string; fields: DescField[] } | undefined => {
    const names: string[] = [];
    let cur: Expr | undefined = e;
    while (cur?.exprKind.case === "selectExpr") {
      names.unshift(cur.exprKind.value.field);
      cur = cur.exprKind.value.operand;
    }
    if (cur?.exprKind.case !== "identExpr" || shadowed.has(cur.exprKind.value.name)) return undefined;
    const root = cur.exprKind.value.name;
    let desc: DescMessage | undefined = roots[root];
    if (!desc) return undefined;
    const fields: DescField[] = [];
    for (const name of names) {
      const f: DescField | undefined = desc?.fields.find((x) => x.name === name);
      // Past a map, a list or a scalar the rest is data (map keys): the field so far is the input.
      if (!f) break;
      fields.push(f);
      desc = f.fieldKind === "message" ? f.message : undefined;
      if (!desc) break;
    }
    return { root, fields: intern(root, fields) };
  };
  walkExpr(expr, (e, shadowed) => {
    const k = e.exprKind;
    if (k.case === "identExpr") {
      if (k.value.name === "params") inputs.readsParams = true;
      else if (k.value.name === "now") inputs.readsNow = true;
      else if (k.value.name in roots) inputs.whole = true;
      return true;
    }
    if (k.case !== "selectExpr") return false;
    const p = pathOf(e, shadowed);
    if (!p || p.fields.length === 0) return false;
    (p.root === "instance" ? inputs.instancePaths : inputs.hostPaths).push(p.fields);
    return true; // the path is the input: its operands are not separate uses
  });
  return inputs;
}

/**
 * Visits every node of a CEL expression with the names comprehensions bind around it (a
 * comprehension variable named `instance` is not the instance). `visit` returns true when it
 * has handled the node whole (its children are not visited). Identifiers that are shadowed are
 * not passed to `visit`.
 */
export function walkExpr(expr: Expr, visit: (e: Expr, shadowed: ReadonlySet<string>) => boolean): void {
  const walk = (e: Expr | undefined, shadowed: ReadonlySet<string>): void => {
    if (!e) return;
    const k = e.exprKind;
    if (k.case === "identExpr" && shadowed.has(k.value.name)) return;
    if (visit(e, shadowed)) return;
    switch (k.case) {
      case "selectExpr":
        walk(k.value.operand, shadowed);
        return;
      case "callExpr":
        walk(k.value.target, shadowed);
        for (const a of k.value.args) walk(a, shadowed);
        return;
      case "listExpr":
        for (const a of k.value.elements) walk(a, shadowed);
        return;
      case "structExpr":
        for (const entry of k.value.entries) {
          if (entry.keyKind.case === "mapKey") walk(entry.keyKind.value, shadowed);
          walk(entry.value, shadowed);
        }
        return;
      case "comprehensionExpr": {
        const c = k.value;
        walk(c.iterRange, shadowed);
        const inner = new Set([...shadowed, c.iterVar, c.iterVar2, c.accuVar].filter(Boolean));
        walk(c.accuInit, inner);
        walk(c.loopCondition, inner);
        walk(c.loopStep, inner);
        walk(c.result, inner);
        return;
      }
      default:
        return;
    }
  };
  walk(expr, new Set());
}

// One array per distinct path (across rules): a validation computes each path's value key once
// for all the rules that read it (inputKey's scratch map is keyed by these arrays).
const interned = new Map<string, DescField[]>();
function intern(root: string, fields: DescField[]): DescField[] {
  const key = `${root}:${fields.map((f) => `${f.parent.typeName}.${f.number}`).join("/")}`;
  let path = interned.get(key);
  if (!path) {
    path = fields;
    interned.set(key, path);
  }
  return path;
}

const bigintSafe = (_k: string, v: unknown) => (typeof v === "bigint" ? `${v}n` : v);

/** The value at a path as a string that differs whenever the value (or its presence) differs. */
function valueKey(message: object, path: readonly DescField[]): string {
  let cur: unknown = message;
  for (const f of path) {
    if (cur === undefined || cur === null) return "∅";
    cur = (cur as Record<string, unknown>)[f.localName];
  }
  if (cur === undefined) return "∅";
  switch (typeof cur) {
    case "bigint":
      return `${cur}n`;
    case "string":
      return JSON.stringify(cur);
    case "number":
    case "boolean":
      return String(cur);
    default: {
      if (cur instanceof Uint8Array) return `b${Buffer.from(cur).toString("base64")}`;
      // Maps (plain objects, keys sorted), lists, messages (their fields in declaration order).
      if (!Array.isArray(cur) && Object.getPrototypeOf(cur) === Object.prototype && !("$typeName" in (cur as object))) {
        const entries = Object.entries(cur as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
        return JSON.stringify(entries, bigintSafe);
      }
      return JSON.stringify(cur, bigintSafe);
    }
  }
}

/** The memo key of an evaluation: the values of every input the rule reads; undefined when it reads `instance` or `host` whole. */
export function inputKey(inputs: RuleInputs, instance: object, host: object, paramsKey: string, scratch?: InputScratch): string | undefined {
  if (inputs.whole) return undefined;
  let key = "";
  for (const p of inputs.instancePaths) key += `${cached(scratch?.instance, instance, p)}\u0001`;
  key += "\u0002";
  for (const p of inputs.hostPaths) key += `${cached(scratch?.host, host, p)}\u0001`;
  if (inputs.readsParams) key += `\u0002${paramsKey}`;
  return key;
}

/** Value keys already computed for one instance and its host (every rule of a validation shares them). */
export interface InputScratch {
  instance: Map<readonly DescField[], string>;
  host: Map<readonly DescField[], string>;
}

function cached(scratch: Map<readonly DescField[], string> | undefined, message: object, path: readonly DescField[]): string {
  if (!scratch) return valueKey(message, path);
  let v = scratch.get(path);
  if (v === undefined) {
    v = valueKey(message, path);
    scratch.set(path, v);
  }
  return v;
}
