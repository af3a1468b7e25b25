import { readFileSync } from "node:fs";
import { Command, InvalidArgumentError, Option } from "commander";
import { createClient, type Client } from "@connectrpc/connect";
import { create, toJson, toJsonString } from "@bufbuild/protobuf";
import { parse as parseYaml } from "yaml";
import {
  type Concern,
  DeletePolicyResponseSchema,
  FleetService,
  ListPoliciesResponseSchema,
  PolicyRuleSchema,
  PolicySeverity,
  PolicySource,
  PutPolicyResponseSchema,
  type ListPoliciesResponse,
  type PolicyRule,
} from "../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { createGrpcJsTransport } from "../lib/rpc/grpc-transport.js";
import { clientTransportOptions } from "./client-token.js";
import { parse } from "./options.js";
import { formatTable } from "./table.js";
import { formatMessage, type OutputFormat } from "./output.js";
import { errorMessage } from "../lib/error-message.js";

/**
 * Fleet policies from the command line (issue 14): `get policies` (the table is here, the get
 * command calls it), the `get instances --failing/--severity` filters and its CONCERNS cell, and
 * `fleetlet policies put|delete` (FleetService PutPolicy / DeletePolicy, admin calls).
 *
 * The CLI checks only the shape of what it sends (names, severities, the file's keys): the
 * expression is the aggregator's to check, so one rule set decides and its errors (with CEL's
 * `<input>:line:col`) reach the user unchanged. No aggregator module is loaded here (CEL is not
 * the CLI's to start).
 */

/** The rule-name rule of aggregator/policies/policy-rule.ts (RULE_NAME), kept in step by hand. */
const RULE_NAME = /^[a-z][a-z0-9-]{0,62}$/;

/** The severity words of the --policies file, the table and --severity. */
const SEVERITIES: Readonly<Record<string, PolicySeverity>> = {
  info: PolicySeverity.INFO,
  warning: PolicySeverity.WARNING,
  critical: PolicySeverity.CRITICAL,
};

export function severityWord(s: PolicySeverity): string {
  return s === PolicySeverity.UNSPECIFIED ? "-" : (PolicySeverity[s] ?? String(s)).toLowerCase();
}

function sourceWord(s: PolicySource): string {
  return s === PolicySource.UNSPECIFIED ? "-" : (PolicySource[s] ?? String(s)).toLowerCase();
}

/** `--failing a,b --failing c` → [a, b, c]; each a rule name (else the flag's one-line error, exit 2). */
export const failingOption = () =>
  new Option("--failing <rule>", "instances: only those failing this policy rule (repeat or comma-separate for any of several; aggregator only)").argParser(
    (value: string, previous: string[] | undefined) => {
      const names = value.split(",").map((s) => s.trim());
      for (const n of names) {
        if (!RULE_NAME.test(n)) throw new InvalidArgumentError(`a rule name must match ${RULE_NAME.source}, got ${JSON.stringify(n.slice(0, 80))}`);
      }
      return [...(previous ?? []), ...names];
    },
  );

/** `--severity warning,critical` → [WARNING, CRITICAL]. */
export const severityOption = () =>
  new Option("--severity <level>", "instances: only those with a concern of this severity: info, warning or critical (repeat or comma-separate; aggregator only)").argParser(
    (value: string, previous: PolicySeverity[] | undefined) => {
      const levels = value.split(",").map((s) => s.trim());
      const out = [...(previous ?? [])];
      for (const l of levels) {
        const s = SEVERITIES[l];
        if (s === undefined) throw new InvalidArgumentError(`must be info, warning or critical, got ${JSON.stringify(l.slice(0, 80))}`);
        if (!out.includes(s)) out.push(s);
      }
      return out;
    },
  );

/**
 * An instance's concerns in one cell: how many, then the most severe one (ties: the first rule
 * by name), e.g. `2 (critical: host-stale-running)`; `-` for none.
 */
export function concernsCell(concerns: readonly Concern[]): string {
  if (concerns.length === 0) return "-";
  const worst = [...concerns].sort((a, b) => b.severity - a.severity || (a.rule < b.rule ? -1 : a.rule > b.rule ? 1 : 0))[0]!;
  return `${concerns.length} (${severityWord(worst.severity)}: ${worst.rule})`;
}

const DESCRIPTION_WIDTH = 60;

/** A description cut to one short line (the full text is in -o json). */
function shortDescription(text: string): string {
  const one = text.replace(/\s+/g, " ").trim();
  if (one === "") return "-";
  return one.length > DESCRIPTION_WIDTH ? `${one.slice(0, DESCRIPTION_WIDTH - 3).trimEnd()}...` : one;
}

/**
 * `get policies`: one row per rule in force (sorted by name, as the aggregator answers), with how
 * many instances pass, fail, are not evaluated yet and could not be evaluated; then the rule
 * set's version, the validation backlog, the parameters rules see, and the --policies file's
 * problem when it has one.
 */
export function policiesTable(res: ListPoliciesResponse): string {
  const summaries = new Map(res.summaries.map((s) => [s.rule, s]));
  const table = formatTable(
    ["RULE", "SEVERITY", "SOURCE", "PASSING", "FAILING", "UNEVALUATED", "ERRORS", "DESCRIPTION"],
    res.rules.map((r) => {
      const s = summaries.get(r.name);
      return [
        r.name,
        severityWord(r.severity),
        sourceWord(r.source),
        s ? String(s.passing) : "-",
        s ? String(s.failing) : "-",
        s ? String(s.unevaluated) : "-",
        s ? String(s.errors) : "-",
        shortDescription(r.description),
      ];
    }),
  );
  const params = Object.entries(res.parameters)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([k, v]) => `${k}=${v}`)
    .join(", ");
  const lines = [
    `rule set version ${res.version}, ${res.unvalidated} unvalidated, validation lag ${lagText(res.validationLagSeconds)}`,
    `parameters: ${params || "-"}`,
  ];
  if (res.fileError) lines.push(`policies file: ${oneLine(res.fileError)}`);
  return `${table}\n\n${lines.join("\n")}`;
}

function lagText(seconds: number): string {
  if (seconds <= 0) return "0s";
  return seconds < 10 ? `${seconds.toFixed(1)}s` : `${Math.round(seconds)}s`;
}

/** A server message on one line (a CEL syntax error comes with a caret line under the input). */
function oneLine(text: string): string {
  return text
    .split("\n")
    .map((l) => l.trim())
    .filter(Boolean)
    .join(" ");
}

export async function getPolicies(fleet: Client<typeof FleetService>, call: { timeoutMs: number }, output: OutputFormat, pick: (rule: string) => boolean = () => true): Promise<void> {
  const all = await fleet.listPolicies({}, call);
  const res = { ...all, rules: all.rules.filter((r) => pick(r.name)), summaries: all.summaries.filter((x) => pick(x.rule)) };
  process.stdout.write(output === "table" ? `${policiesTable(res)}\n` : formatMessage(ListPoliciesResponseSchema, res, output));
}

interface PoliciesOptions {
  aggregator?: string;
  output: "table" | "json";
  timeout: number;
}

/**
 * `fleetlet policies put -f FILE` and `fleetlet policies delete NAME`: the rules kept by the
 * aggregator (source api). Rules of its --policies file are changed in that file; the aggregator
 * refuses them here (FAILED_PRECONDITION), and that is printed as it says it.
 */
export function policiesCommand(): Command {
  const policies = new Command("policies").description("change the aggregator's policy rules: put (add or replace from a YAML/JSON file), delete");
  // Usage errors of a subcommand: one line naming it, and exit 2 through main's handler (a
  // command added with addCommand does not inherit the parent's exitOverride).
  const common = (c: Command) =>
    c
      .exitOverride()
      .configureOutput({ outputError: (text, write) => write(`fleetlet policies ${c.name()}: ${text.trim().replace(/\n+/g, " ")}\n`) })
      .addOption(
        new Option("--aggregator <host:port>", "aggregator to ask (default 127.0.0.1:7700)").argParser((value: string) => {
          parse.address(value);
          return value;
        }),
      )
      .addOption(new Option("-o, --output <format>", "table or json").choices(["table", "json"]).default("table"))
      .addOption(new Option("--timeout <duration>", "deadline of each call").default(10_000, "10s").argParser(parse.durationMs));

  policies.addCommand(
    common(
      new Command("put")
        .description("add or replace rules: one rule, a list of rules, or a map with `rules:`, as in the --policies file (name, severity, description, fails_when)")
        .requiredOption("-f, --filename <file>", "YAML or JSON file with the rule(s); - for stdin"),
    ).action(async (opts: PoliciesOptions & { filename: string }, command: Command) => {
      let rules: PolicyRule[] = [];
      try {
        rules = readRules(opts.filename === "-" ? readFileSync(0, "utf8") : readFileSync(opts.filename, "utf8"));
      } catch (e) {
        // The file is the flag's value: a problem with it is a usage error, before any call.
        command.error(`error: -f ${opts.filename}: ${oneLine(errorMessage(e))}`, { exitCode: 2 });
      }
      await run("put", opts, async (fleet, call) => {
        // One call per rule, in the file's order; the first refusal stops the rest (the rules
        // before it are in force, and were printed).
        const answers = [];
        for (const rule of rules) {
          try {
            const res = await fleet.putPolicy({ rule }, call);
            answers.push(res);
            if (opts.output === "table") process.stdout.write(`rule ${res.rule?.name ?? rule.name} put (${severityWord(res.rule?.severity ?? rule.severity)}), rule set version ${res.version}\n`);
          } catch (e) {
            if (opts.output === "json" && answers.length > 0) process.stdout.write(`${jsonList(answers)}\n`);
            const rest = rules.length - answers.length - 1;
            // The aggregator's message names the rule for most refusals; say it when it does not.
            const message = errorMessage(e);
            const named = message.includes(`rule ${rule.name}`) || message.includes(JSON.stringify(rule.name)) ? message : `rule ${rule.name}: ${message}`;
            throw new Error(`${named}${rest > 0 ? ` (${rest} more not put)` : ""}`);
          }
        }
        if (opts.output === "json") process.stdout.write(`${jsonList(answers)}\n`);
      });
    }),
  );

  policies.addCommand(
    common(new Command("delete").description("delete a rule put through the API, or turn a built-in rule off").argument("<name>", "rule name")).action(
      async (name: string, opts: PoliciesOptions, command: Command) => {
        if (!RULE_NAME.test(name)) command.error(`error: <name>: a rule name must match ${RULE_NAME.source}, got ${JSON.stringify(name.slice(0, 80))}`, { exitCode: 2 });
        await run("delete", opts, async (fleet, call) => {
          const res = await fleet.deletePolicy({ name }, call);
          process.stdout.write(opts.output === "json" ? `${toJsonString(DeletePolicyResponseSchema, res, { prettySpaces: 2 })}\n` : `rule ${name} deleted, rule set version ${res.version}\n`);
        });
      },
    ),
  );
  return policies;
}

function jsonList(answers: Parameters<typeof toJson<typeof PutPolicyResponseSchema>>[1][]): string {
  return JSON.stringify(
    answers.map((a) => toJson(PutPolicyResponseSchema, a)),
    null,
    2,
  );
}

/**
 * The rules of a put file, shape-checked: one rule (a map with `name`), a list of rules, or the
 * --policies file's map with `rules:` (its `parameters:` are the file's only, and refused here).
 * Each problem names the entry: `rules[1].severity: must be info, warning or critical, got "high"`.
 */
export function readRules(text: string): PolicyRule[] {
  let doc: unknown;
  try {
    doc = parseYaml(text, { uniqueKeys: true, maxAliasCount: 100 });
  } catch (e) {
    throw new Error(`not YAML or JSON: ${errorMessage(e).split("\n")[0]}`);
  }
  let list: unknown[];
  let at: (i: number) => string;
  if (Array.isArray(doc)) {
    list = doc;
    at = (i) => `[${i}]`;
  } else if (typeof doc === "object" && doc !== null && "rules" in doc) {
    const top = doc as Record<string, unknown>;
    for (const key of Object.keys(top)) {
      if (key === "parameters") throw new Error("parameters: are set in the aggregator's --policies file, not through the API");
      if (key !== "rules") throw new Error(`unknown key ${JSON.stringify(key)} (rules)`);
    }
    if (!Array.isArray(top.rules)) throw new Error("rules: must be a list");
    list = top.rules;
    at = (i) => `rules[${i}]`;
  } else if (typeof doc === "object" && doc !== null) {
    list = [doc];
    at = () => "rule";
  } else {
    throw new Error("must be a rule (name, severity, description, fails_when), a list of rules, or a map with rules:");
  }
  if (list.length === 0) throw new Error("no rules in it");
  const seen = new Set<string>();
  return list.map((raw, i) => {
    const where = at(i);
    if (typeof raw !== "object" || raw === null || Array.isArray(raw)) throw new Error(`${where}: must be a map (name, severity, description, fails_when)`);
    const r = raw as Record<string, unknown>;
    for (const key of Object.keys(r)) if (!["name", "severity", "description", "fails_when"].includes(key)) throw new Error(`${where}: unknown key ${JSON.stringify(key)} (name, severity, description, fails_when)`);
    const str = (key: string, required: boolean): string => {
      const v = r[key];
      if (v === undefined && !required) return "";
      if (typeof v !== "string") throw new Error(`${where}.${key}: must be a string`);
      return v;
    };
    const name = str("name", true);
    if (!RULE_NAME.test(name)) throw new Error(`${where}.name: must match ${RULE_NAME.source}, got ${JSON.stringify(name.slice(0, 80))}`);
    if (seen.has(name)) throw new Error(`${where}.name: ${JSON.stringify(name)} appears twice`);
    seen.add(name);
    // As in the --policies file: warning when not said.
    const severityName = str("severity", false) || "warning";
    const severity = SEVERITIES[severityName];
    if (severity === undefined) throw new Error(`${where}.severity: must be info, warning or critical, got ${JSON.stringify(severityName.slice(0, 80))}`);
    return create(PolicyRuleSchema, { name, severity, description: str("description", false), failsWhen: str("fails_when", true) });
  });
}

/** One command's calls to the aggregator; a refusal or a failed call is one line on stderr, exit 1. */
async function run(what: string, opts: PoliciesOptions, f: (fleet: Client<typeof FleetService>, call: { timeoutMs: number }) => Promise<void>): Promise<void> {
  const target = opts.aggregator ?? "127.0.0.1:7700";
  const transport = createGrpcJsTransport(target, clientTransportOptions());
  try {
    await f(createClient(FleetService, transport), { timeoutMs: opts.timeout });
  } catch (e) {
    process.stderr.write(`fleetlet policies ${what}: ${target}: ${oneLine(errorMessage(e))}\n`);
    process.exitCode = 1;
  } finally {
    transport.close();
  }
}
