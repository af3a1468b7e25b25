import { isFieldSet, ScalarType, type DescField, type DescMessage, type Message } from "@bufbuild/protobuf";
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
 *
 * A string-keyed map read only at constant keys (`m["k"]`, `"k" in m`, `has(m.k)`, `m.k`) has
 * those entries as inputs, not the whole map: `"owner" in instance.labels` is memoised by the
 * owner label alone, however the other labels differ from instance to instance. A field only
 * tested with `has()` has its presence as the input, not its value (`!has(instance.pid)`).
 */
export interface RuleInputs {
  instancePaths: InputPath[];
  hostPaths: InputPath[];
  readsParams: boolean;
  /** Reads `now` (the evaluation's time). */
  readsNow: boolean;
  /** `instance` or `host` used whole: no key, always evaluated. */
  whole: boolean;
}

/**
 * Fields from the root; `entry`: one key of the map the last field is (its presence and value
 * are the input); `presence`: only whether the last field is set (CEL's has()).
 */
export interface InputPath {
  readonly fields: readonly DescField[];
  readonly entry?: string;
  readonly presence?: true;
}

/** Collects the inputs of an expression already checked by checkFieldPaths (paths resolve). */
export function ruleInputs(expr: Expr, instanceSchema: DescMessage, hostSchema: DescMessage): RuleInputs {
  const inputs: RuleInputs = { instancePaths: [], hostPaths: [], readsParams: false, readsNow: false, whole: false };
  const roots: Record<string, DescMessage> = { instance: instanceSchema, host: hostSchema };
  /**
   * A select chain down to `instance`/`host`: its root and fields as far as they are message
   * fields; a name selected from a string-keyed map (`labels.env`) is that map's entry.
   */
  const pathOf = (e: Expr, shadowed: ReadonlySet<string>): { root: string; path: InputPath } | undefined => {
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
    let entry: string | undefined;
    for (let n = 0; n < names.length; n++) {
      const f: DescField | undefined = desc?.fields.find((x) => x.name === names[n]);
      // Past a map, a list or a scalar the rest is data (map keys): the field so far is the input.
      if (!f) break;
      fields.push(f);
      if (isStringMap(f) && n + 1 < names.length) {
        entry = names[n + 1];
        break;
      }
      desc = f.fieldKind === "message" ? f.message : undefined;
      if (!desc) break;
    }
    return { root, path: intern(root, fields, entry) };
  };
  const add = (p: { root: string; path: InputPath }) => (p.root === "instance" ? inputs.instancePaths : inputs.hostPaths).push(p.path);
  /** `m["k"]` and `"k" in m` with a constant key, m a string-keyed map: the entry. */
  const entryOf = (e: Expr, shadowed: ReadonlySet<string>): { root: string; path: InputPath } | undefined => {
    if (e.exprKind.case !== "callExpr" || e.exprKind.value.target || e.exprKind.value.args.length !== 2) return undefined;
    const { function: fn, args } = e.exprKind.value;
    const [mapExpr, keyExpr] = fn === "_[_]" ? [args[0]!, args[1]!] : fn === "@in" ? [args[1]!, args[0]!] : [undefined, undefined];
    if (!mapExpr || keyExpr?.exprKind.case !== "constExpr" || keyExpr.exprKind.value.constantKind.case !== "stringValue") return undefined;
    const p = pathOf(mapExpr, shadowed);
    const last = p?.path.fields.at(-1);
    if (!p || p.path.entry !== undefined || !last || !isStringMap(last) || p.path.fields.length === 0) return undefined;
    // The map expression must be the path itself (not `labels.x` mangled by pathOf's early stop).
    if (selectDepth(mapExpr) !== p.path.fields.length) return undefined;
    return { root: p.root, path: intern(p.root, p.path.fields, keyExpr.exprKind.value.constantKind.value) };
  };
  walkExpr(expr, (e, shadowed) => {
    const k = e.exprKind;
    if (k.case === "identExpr") {
      if (k.value.name === "params") inputs.readsParams = true;
      else if (k.value.name === "now") inputs.readsNow = true;
      else if (k.value.name in roots) inputs.whole = true;
      return true;
    }
    const entry = entryOf(e, shadowed);
    if (entry) {
      add(entry);
      return true;
    }
    if (k.case !== "selectExpr") return false;
    const p = pathOf(e, shadowed);
    if (!p || p.path.fields.length === 0) return false;
    if (k.value.testOnly && p.path.entry === undefined && selectDepth(e) === p.path.fields.length) {
      add({ root: p.root, path: intern(p.root, p.path.fields, undefined, true) });
      return true;
    }
    // Names past the input (a list's or scalar's "fields") do not change what is read.
    add(p);
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

function isStringMap(f: DescField): boolean {
  return f.fieldKind === "map" && f.mapKey === ScalarType.STRING;
}

function selectDepth(e: Expr): number {
  let n = 0;
  for (let cur: Expr | undefined = e; cur?.exprKind.case === "selectExpr"; cur = cur.exprKind.value.operand) n++;
  return n;
}

// One object per distinct path (across rules): a validation computes each path's value key once
// for all the rules that read it (inputKey's scratch map is keyed by these objects).
const interned = new Map<string, InputPath>();
function intern(root: string, fields: readonly DescField[], entry?: string, presence?: true): InputPath {
  const key = `${root}:${fields.map((f) => `${f.parent.typeName}.${f.number}`).join("/")}${entry === undefined ? "" : `[${JSON.stringify(entry)}]`}${presence ? "?" : ""}`;
  let path = interned.get(key);
  if (!path) {
    path = { fields, ...(entry === undefined ? {} : { entry }), ...(presence ? { presence } : {}) };
    interned.set(key, path);
  }
  return path;
}

const bigintSafe = (_k: string, v: unknown) => (typeof v === "bigint" ? `${v}n` : v);

/** The value at a path as a string that differs whenever the value (or its presence) differs. */
function valueKey(message: object, path: InputPath): string {
  let cur: unknown = message;
  if (path.presence) {
    // What CEL's has() answers: the field set on its message (an unset message on the way: not).
    const last = path.fields.length - 1;
    for (let n = 0; n < last; n++) {
      if (cur === undefined || cur === null) return "∅";
      cur = (cur as Record<string, unknown>)[path.fields[n]!.localName];
    }
    if (cur === undefined || cur === null) return "∅";
    return isFieldSet(cur as Message, path.fields[last]!) ? "1" : "0";
  }
  for (const f of path.fields) {
    if (cur === undefined || cur === null) return "∅";
    cur = (cur as Record<string, unknown>)[f.localName];
  }
  if (path.entry !== undefined) {
    // protobuf-es keeps a string-keyed map as a plain object.
    if (cur === undefined || cur === null || !Object.hasOwn(cur, path.entry)) return "∅";
    cur = (cur as Record<string, unknown>)[path.entry];
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
  instance: Map<InputPath, string>;
  host: Map<InputPath, string>;
}

function cached(scratch: Map<InputPath, string> | undefined, message: object, path: InputPath): string {
  if (!scratch) return valueKey(message, path);
  let v = scratch.get(path);
  if (v === undefined) {
    v = valueKey(message, path);
    scratch.set(path, v);
  }
  return v;
}
