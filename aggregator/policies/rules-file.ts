import { readFileSync, statSync } from "node:fs";
import { parseDocument } from "yaml";
import { PolicySeverity, PolicySource } from "../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { errorMessage } from "../../lib/error-message.js";
import { compileRule, RuleError, type CompiledRule } from "./policy-rule.js";

/** What a --policies file holds, checked: its rules and the parameters it sets. */
export interface RulesFileContent {
  rules: CompiledRule[];
  parameters: Map<string, number>;
}

export const SEVERITY_NAMES: Readonly<Record<string, PolicySeverity>> = {
  info: PolicySeverity.INFO,
  warning: PolicySeverity.WARNING,
  critical: PolicySeverity.CRITICAL,
};

const PARAMETER_NAME = /^[a-z][a-z0-9_]{0,62}$/;
const MAX_FILE_BYTES = 1024 * 1024;

/**
 * Parses a --policies file (YAML, of which JSON is a subset):
 *
 *   parameters: { vcpu_overcommit_ratio: 3 }
 *   rules:
 *     - name: big-vm
 *       severity: warning
 *       description: more than 32 vCPUs
 *       fails_when: instance.allocated_vcpus > 32
 *
 * Every problem is thrown as one line naming the file and the entry: `FILE: rules[2].fails_when:
 * rule big-vm: <input>:1:20: ...`.
 */
export function parseRulesFile(file: string, text: string): RulesFileContent {
  let doc: unknown;
  try {
    // A warning (an unknown tag such as !!binary) is refused like an error: the yaml package
    // would otherwise print it to the daemon's stderr and go on with a guess.
    const parsed = parseDocument(text, { uniqueKeys: true, logLevel: "silent" });
    const problem = parsed.errors[0] ?? parsed.warnings[0];
    if (problem) throw problem;
    doc = parsed.toJS({ maxAliasCount: 100 });
  } catch (e) {
    throw new Error(`${file}: not YAML or JSON: ${errorMessage(e).split("\n")[0]}`);
  }
  if (doc === null || doc === undefined) return { rules: [], parameters: new Map() };
  if (typeof doc !== "object" || Array.isArray(doc)) throw new Error(`${file}: must be a map with "rules" and/or "parameters"`);
  const top = doc as Record<string, unknown>;
  for (const key of Object.keys(top)) if (key !== "rules" && key !== "parameters") throw new Error(`${file}: unknown key ${JSON.stringify(key)} (rules, parameters)`);
  const parameters = new Map<string, number>();
  if (top.parameters !== undefined) {
    if (typeof top.parameters !== "object" || top.parameters === null || Array.isArray(top.parameters)) throw new Error(`${file}: parameters: must be a map of names to numbers`);
    for (const [k, v] of Object.entries(top.parameters)) {
      if (!PARAMETER_NAME.test(k)) throw new Error(`${file}: parameters.${k}: a name must match ${PARAMETER_NAME.source}`);
      if (typeof v !== "number" || !Number.isFinite(v)) throw new Error(`${file}: parameters.${k}: must be a number, got ${JSON.stringify(v)}`);
      parameters.set(k, v);
    }
  }
  const rules: CompiledRule[] = [];
  const rawRules = top.rules ?? [];
  if (!Array.isArray(rawRules)) throw new Error(`${file}: rules: must be a list`);
  const seen = new Set<string>();
  rawRules.forEach((raw, i) => {
    const at = `${file}: rules[${i}]`;
    if (typeof raw !== "object" || raw === null || Array.isArray(raw)) throw new Error(`${at}: must be a map (name, severity, description, fails_when)`);
    const r = raw as Record<string, unknown>;
    for (const key of Object.keys(r)) if (!["name", "severity", "description", "fails_when"].includes(key)) throw new Error(`${at}: unknown key ${JSON.stringify(key)}`);
    const str = (key: string, required: boolean): string => {
      const v = r[key];
      if (v === undefined && !required) return "";
      if (typeof v !== "string") throw new Error(`${at}.${key}: must be a string`);
      return v;
    };
    const name = str("name", true);
    if (seen.has(name)) throw new Error(`${at}.name: ${JSON.stringify(name)} appears twice`);
    seen.add(name);
    const severityName = str("severity", false) || "warning";
    const severity = SEVERITY_NAMES[severityName];
    if (severity === undefined) throw new Error(`${at}.severity: must be info, warning or critical, got ${JSON.stringify(severityName)}`);
    try {
      rules.push(compileRule({ name, severity, description: str("description", false), failsWhen: str("fails_when", true), source: PolicySource.FILE }));
    } catch (e) {
      if (e instanceof RuleError) throw new Error(`${at}.${e.field.replace(/^rule\./, "")}: ${e.message}`);
      throw e;
    }
  });
  return { rules, parameters };
}

/**
 * The --policies file, re-read when it changes (polled by stat every second, as the tokens file:
 * a replaced file is seen whether edited in place or renamed over). A file that becomes invalid
 * keeps the last good content; `lastError` says why until a good one comes.
 */
export class RulesFile {
  private stamp = "";
  private timer: NodeJS.Timeout | undefined;
  content: RulesFileContent;
  lastError = "";

  constructor(
    readonly path: string,
    private readonly onChange: (content: RulesFileContent) => void,
    private readonly onProblem: (problem: string) => void,
    pollMs = 1000,
  ) {
    // At start a bad file stops the daemon (the caller prints the one line).
    this.content = this.read();
    this.timer = setInterval(() => this.poll(), pollMs);
    this.timer.unref();
  }

  private read(): RulesFileContent {
    const st = statSync(this.path);
    if (st.size > MAX_FILE_BYTES) throw new Error(`${this.path}: larger than ${MAX_FILE_BYTES} bytes`);
    this.stamp = `${st.mtimeMs}:${st.size}:${st.ino}`;
    return parseRulesFile(this.path, readFileSync(this.path, "utf8"));
  }

  private poll(): void {
    let stamp: string;
    try {
      const st = statSync(this.path);
      stamp = `${st.mtimeMs}:${st.size}:${st.ino}`;
    } catch (e) {
      this.problem(`${this.path}: ${errorMessage(e)}; keeping the rules read before`);
      return;
    }
    if (stamp === this.stamp) return;
    try {
      this.content = this.read();
      this.lastError = "";
      this.onChange(this.content);
    } catch (e) {
      this.stamp = stamp;
      this.problem(`${errorMessage(e)}; keeping the rules read before`);
    }
  }

  private problem(message: string): void {
    if (message === this.lastError) return;
    this.lastError = message;
    this.onProblem(message);
  }

  close(): void {
    clearInterval(this.timer);
  }
}
