import { InvalidArgumentError } from "commander";
import { toJson, toJsonString, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { stringify as toYaml } from "yaml";

/**
 * What the read commands print (`-o`): a table, or the message in the proto JSON mapping
 * (camelCase, int64 as strings, enums by name) as JSON or as YAML — one convention for every
 * command, so `-o yaml` and `-o json` hold the same document.
 */
export type OutputFormat = "table" | "json" | "yaml";
export const OUTPUT_FORMATS: readonly OutputFormat[] = ["table", "json", "yaml"];

export function formatMessage<T extends DescMessage>(schema: T, msg: MessageShape<T>, format: "json" | "yaml"): string {
  if (format === "json") return `${toJsonString(schema, msg, { prettySpaces: 2 })}\n`;
  return toYaml(toJson(schema, msg), { lineWidth: 0 });
}

/**
 * `-l team=db,env!=prod,owner,!legacy`: kubectl's equality-based selector. Each term must hold:
 * key=value, key==value, key!=value (absent counts as not equal), key (present), !key (absent).
 */
export interface LabelTerm {
  key: string;
  op: "=" | "!=" | "exists" | "absent";
  value?: string;
}

const LABEL_KEY = /^[A-Za-z0-9][A-Za-z0-9._/-]{0,252}$/;

export function parseSelector(text: string): LabelTerm[] {
  const terms: LabelTerm[] = [];
  for (const raw of text.split(",")) {
    const term = raw.trim();
    if (term === "") throw new InvalidArgumentError(`empty term in ${JSON.stringify(text)}`);
    const m = /^(!?)([^=!]+)(?:(==|=|!=)(.*))?$/.exec(term);
    const key = m?.[2]?.trim() ?? "";
    if (!m || !LABEL_KEY.test(key) || (m[1] && m[3])) throw new InvalidArgumentError(`${JSON.stringify(term)}: expected key=value, key!=value, key or !key`);
    if (m[1]) terms.push({ key, op: "absent" });
    else if (!m[3]) terms.push({ key, op: "exists" });
    else terms.push({ key, op: m[3] === "!=" ? "!=" : "=", value: m[4] ?? "" });
  }
  return terms;
}

export function selectorMatches(terms: readonly LabelTerm[], labels: Readonly<Record<string, string>>): boolean {
  return terms.every((t) => {
    const has = Object.hasOwn(labels, t.key);
    switch (t.op) {
      case "=":
        return has && labels[t.key] === t.value;
      case "!=":
        return !has || labels[t.key] !== t.value;
      case "exists":
        return has;
      case "absent":
        return !has;
    }
  });
}

/** The terms the aggregator can filter on itself (ListInstancesRequest.labels: equality only). */
export function equalityLabels(terms: readonly LabelTerm[]): Record<string, string> {
  return Object.fromEntries(terms.filter((t) => t.op === "=").map((t) => [t.key, t.value!]));
}
