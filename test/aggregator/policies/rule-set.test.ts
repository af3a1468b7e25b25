import { afterEach, beforeEach, describe, it } from "vitest";
import assert from "node:assert/strict";
import { renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { PolicySeverity, PolicySource } from "../../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { BUILTIN_RULES } from "../../../aggregator/policies/builtin-rules.js";
import { PolicyStore } from "../../../aggregator/policies/policy-store.js";
import { RuleSet, RuleSetConflict } from "../../../aggregator/policies/rule-set.js";
import { parseRulesFile, RulesFile } from "../../../aggregator/policies/rules-file.js";
import { tempDir } from "../../helpers/temp-dir.js";
import { until } from "../../helpers/until.js";
import { prng } from "../../helpers/random-message.js";

let dir: ReturnType<typeof tempDir>;
beforeEach(() => {
  dir = tempDir("rule-set");
});
afterEach(() => dir.remove());

const FILE = `
parameters:
  vcpu_overcommit_ratio: 2
rules:
  - name: big-vm
    severity: critical
    description: more than 16 vCPUs
    fails_when: instance.allocated_vcpus > 16
`;

describe("the --policies file", () => {
  it("reads YAML and JSON; every problem names the file and the entry", () => {
    const yaml = parseRulesFile("p.yaml", FILE);
    assert.deepEqual(yaml.rules.map((r) => [r.name, r.severity, r.source]), [["big-vm", PolicySeverity.CRITICAL, PolicySource.FILE]]);
    assert.deepEqual([...yaml.parameters], [["vcpu_overcommit_ratio", 2]]);
    const json = parseRulesFile("p.json", JSON.stringify({ rules: [{ name: "x", fails_when: "true" }] }));
    assert.equal(json.rules[0]!.severity, PolicySeverity.WARNING, "warning when not given");
    assert.deepEqual(parseRulesFile("empty.yaml", "").rules, []);
    const bad: [string, RegExp][] = [
      ["rules: {}", /Error: p: rules: must be a list$/],
      ["rules: [{name: x, fails_when: 'instance.nope'}]", /Error: p: rules\[0\]\.fails_when: rule x: <input>:1:9: FleetInstance has no field "nope"/],
      ["rules: [{name: x, fails_when: 'true', severity: huge}]", /Error: p: rules\[0\]\.severity: must be info, warning or critical, got "huge"/],
      ["rules: [{name: x, fails_when: 'true'}, {name: x, fails_when: 'false'}]", /Error: p: rules\[1\]\.name: "x" appears twice/],
      ["rules: [{name: x, when: 'true'}]", /Error: p: rules\[0\]: unknown key "when"/],
      ["parameters: {ratio: high}", /Error: p: parameters\.ratio: must be a number/],
      ["owner: me", /Error: p: unknown key "owner"/],
      ["rules: [", /Error: p: not YAML or JSON: /],
    ];
    for (const [text, re] of bad) assert.throws(() => parseRulesFile("p", text), re, text);
  });

  it("is re-read when it changes; a bad edit keeps the last good rules and says why", async () => {
    const path = join(dir.path, "p.yaml");
    writeFileSync(path, FILE);
    const seen: string[][] = [];
    const problems: string[] = [];
    const file = new RulesFile(path, (c) => seen.push(c.rules.map((r) => r.name)), (p) => problems.push(p), 50);
    try {
      assert.deepEqual(file.content.rules.map((r) => r.name), ["big-vm"]);
      writeFileSync(`${path}.new`, `${FILE}  - name: huge-memory\n    fails_when: instance.allocated_memory_bytes > 1099511627776\n`);
      renameSync(`${path}.new`, path);
      await until("the new rule", async () => (seen.at(-1)?.includes("huge-memory") ? true : undefined), 5000);
      writeFileSync(path, "rules: [{name: broken, fails_when: 'instance.'}]");
      await until("the problem", async () => (problems.length > 0 ? true : undefined), 5000);
      assert.match(problems[0]!, /rules\[0\]\.fails_when: rule broken: <input>.*; keeping the rules read before$/);
      assert.match(file.lastError, /keeping the rules read before/);
      assert.deepEqual(file.content.rules.map((r) => r.name), ["big-vm", "huge-memory"], "the last good content stays");
      writeFileSync(path, FILE);
      await until("good again", async () => (file.lastError === "" ? true : undefined), 5000);
      assert.deepEqual(seen.at(-1), ["big-vm"]);
    } finally {
      file.close();
    }
    // At start, a bad file is an error (the daemon prints it as one line).
    writeFileSync(path, "rules: 3");
    assert.throws(() => new RulesFile(path, () => {}, () => {}), /rules: must be a list/);
  });
});

describe("RuleSet", () => {
  it("built-in, API and file rules; the version moves with every change of what is in force, and persists", () => {
    const store = PolicyStore.open(dir.path);
    const rules = new RuleSet(store, BUILTIN_RULES, parseRulesFile("p.yaml", FILE));
    let changes = 0;
    rules.onChange(() => changes++);
    const v0 = rules.version;
    assert.equal(v0, 1);
    assert.ok(rules.list().some((r) => r.name === "no-standby-policy" && r.source === PolicySource.BUILTIN));
    assert.equal(rules.parameters.get("vcpu_overcommit_ratio"), 2);

    rules.put({ name: "team-db", severity: PolicySeverity.INFO, description: "", failsWhen: 'instance.labels.team == "db"', source: PolicySource.API });
    assert.equal(rules.version, v0 + 1);
    rules.put({ name: "team-db", severity: PolicySeverity.INFO, description: "", failsWhen: 'instance.labels.team == "db"', source: PolicySource.API });
    assert.equal(rules.version, v0 + 1, "the same rule again changes nothing");
    // Replacing a built-in one, then deleting it: it stays off.
    rules.put({ name: "no-standby-policy", severity: PolicySeverity.WARNING, description: "mine", failsWhen: "!has(instance.standby_policy)", source: PolicySource.API });
    assert.equal(rules.get("no-standby-policy")?.source, PolicySource.API);
    rules.delete("no-standby-policy");
    assert.equal(rules.get("no-standby-policy"), undefined);
    assert.throws(() => rules.delete("no-standby-policy"), (e: unknown) => e instanceof RuleSetConflict && e.kind === "not-found");
    assert.throws(() => rules.put({ name: "big-vm", severity: 1, description: "", failsWhen: "true", source: PolicySource.API }), (e: unknown) => e instanceof RuleSetConflict && e.kind === "file-owned");
    assert.throws(() => rules.delete("big-vm"), /comes from the --policies file/);
    const version = rules.version;
    const hash = rules.hash;
    assert.equal(changes, 3);
    store.close();

    // Reopened: the same rules, version and hash; a changed file moves the version once.
    const again = PolicyStore.open(dir.path);
    const reopened = new RuleSet(again, BUILTIN_RULES, parseRulesFile("p.yaml", FILE));
    assert.deepEqual([reopened.version, reopened.hash], [version, hash]);
    assert.deepEqual(reopened.list().map((r) => r.name), rules.list().map((r) => r.name));
    reopened.setFile(parseRulesFile("p.yaml", FILE.replace("> 16", "> 32")));
    assert.equal(reopened.version, version + 1);
    again.close();
    const third = PolicyStore.open(dir.path);
    assert.equal(new RuleSet(third, BUILTIN_RULES, parseRulesFile("p.yaml", FILE)).version, version + 2, "edited back while down: another version");
    third.close();
  });
});

describe("parseRulesFile fuzz", () => {
  it("random and mangled files give an Error naming the file, never anything else", () => {
    const rnd = prng(Number(process.env.FLEETLET_FUZZ_SEED ?? 7));
    const pieces = ["rules:", "\n  - ", "name: x", "fails_when: ", "'instance.allocated_vcpus > 1'", "severity: info", "parameters:", " {a: 1}", "[", "]", "{", "}", ":", "&a", "*a", "\"", "'", "!!binary", "\u0000", "- ", "\t", "42", "null", "true"];
    let accepted = 0;
    for (let i = 0; i < 2000; i++) {
      const text = Array.from({ length: 1 + Math.floor(rnd() * 12) }, () => pieces[Math.floor(rnd() * pieces.length)]).join(rnd() < 0.5 ? "" : "\n");
      try {
        parseRulesFile("fz.yaml", text);
        accepted++;
      } catch (e) {
        assert.ok(e instanceof Error, `not an Error for ${JSON.stringify(text)}`);
        assert.match(e.message, /^fz\.yaml: /, `for ${JSON.stringify(text)}`);
      }
    }
    assert.ok(accepted > 0 && accepted < 2000, `accepted ${accepted} of 2000`);
  });

  it("an unknown YAML tag is refused naming the file, not printed as a process warning and guessed at", async () => {
    const warnings: string[] = [];
    const onWarning = (w: Error) => warnings.push(w.message);
    process.on("warning", onWarning);
    try {
      assert.throws(() => parseRulesFile("t.yaml", "rules:\n  - name: !shout x\n    severity: info\n    fails_when: 'true'\n"), /t\.yaml: not YAML or JSON: .*tag/i);
      await new Promise((r) => setImmediate(r));
    } finally {
      process.off("warning", onWarning);
    }
    assert.deepEqual(warnings, []);
  });
});
