import { afterAll, beforeAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { runFleetlet, startDaemon, type DaemonProcess } from "../helpers/daemon-process.js";
import { agentClients } from "../helpers/clients.js";
import { tempDir } from "../helpers/temp-dir.js";
import { standInProcess } from "../helpers/stand-in-process.js";
import { until } from "../helpers/until.js";

// Fleet policies from the command line (issue 14): `get policies`, `get instances --failing /
// --severity` and its CONCERNS column, `policies put -f` / `policies delete`, against a real
// agent and aggregator (rules validated by the aggregator's loop, swept every second).

// The instances' pid: not the agent's, nor the test process (an ancestor of the agent).
const standIn = standInProcess();

const dirs = { agent: tempDir("pol-agent"), aggregator: tempDir("pol-agg"), files: tempDir("pol-files") };
const policiesFile = join(dirs.files.path, "policies.yaml");
let agent: DaemonProcess;
let aggregator: DaemonProcess;
let agg: string[];

// One rule of the file's own; vcpu_overcommit_ratio so high that the built-in vcpu-overcommit
// passes whatever number of CPUs the test machine has (the counts below are exact).
writeFileSync(
  policiesFile,
  ["parameters:", "  max_vcpus: 4", "  vcpu_overcommit_ratio: 1000", "rules:", "  - name: big-vm", "    severity: warning", "    description: more vCPUs than params.max_vcpus", "    fails_when: instance.allocated_vcpus > params.max_vcpus", ""].join("\n"),
);

beforeAll(async () => {
  agent = await startDaemon(["agent", "--listen", "127.0.0.1:0", "--state-dir", dirs.agent.path, "--runtime", "none", "--metrics-listen", "off"]);
  aggregator = await startDaemon([
    "aggregator",
    "--listen",
    "127.0.0.1:0",
    "--state-dir",
    dirs.aggregator.path,
    "--metrics-listen",
    "off",
    "--hosts",
    `h1=${agent.address}`,
    "--policies",
    policiesFile,
    "--policy-sweep-interval",
    "1s",
  ]);
  agg = ["--aggregator", aggregator.address];
});

afterAll(async () => {
  await Promise.all([agent?.stop(), aggregator?.stop()]);
  standIn.stop();
  for (const d of Object.values(dirs)) d.remove();
});

/** Runs the CLI until its stdout is exactly `expected` (the loop validates within about a second). */
async function untilOutput(args: string[], expected: string): Promise<void> {
  await until(
    `fleetlet ${args.join(" ")} to print the expected table`,
    async () => {
      const r = await runFleetlet(args);
      assert.equal(r.code, 0, r.stderr);
      if (r.stdout !== expected) throw new Error(`got:\n${r.stdout}\nexpected:\n${expected}`);
      return r;
    },
    15_000,
  );
}

/** The first block of `get instances` (the instances; the host sync table after it has ages). */
async function instancesBlock(args: string[]): Promise<string> {
  const r = await runFleetlet(["get", "instances", ...agg, ...args]);
  assert.equal(r.code, 0, r.stderr);
  return r.stdout.split("\n\n")[0]!;
}

async function register(instance: Record<string, unknown>): Promise<void> {
  const c = agentClients(agent.address);
  try {
    await c.inventory.registerInstance({ instance });
  } finally {
    c.close();
  }
}

/** kubectl-style columns with the widths given: two spaces between, the last one not padded. */
const row = (widths: number[], cells: string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join("  ");

const RULES: [name: string, severity: string, source: string, description: string][] = [
  ["big-vm", "warning", "file", "more vCPUs than params.max_vcpus"],
  ["container-unhealthy", "warning", "builtin", "a container whose health check has been failing for longe..."],
  ["host-stale-running", "critical", "builtin", "RUNNING on a host the aggregator has not heard from for -..."],
  ["memory-above-host", "critical", "builtin", "allocated memory is more than the host has"],
  ["no-standby-policy", "info", "builtin", "no standby policy: the instance is never put on standby w..."],
  ["running-without-process", "warning", "builtin", "RUNNING but no process to measure: a registered VM or pro..."],
  ["standby-unsupported", "warning", "builtin", "standby is enabled for a network instance but its host ca..."],
  ["vcpu-overcommit", "warning", "builtin", "the instances of its host together are allocated more vCP..."],
];

/**
 * `get policies` as it must read: the eight rules in force (seven built in, one from the file) plus
 * `extra`, sorted by name, each with [PASSING, FAILING] from `counts` (default 0 0; UNEVALUATED
 * and ERRORS 0), then the rule set's line and the parameters.
 */
function rulesTable(counts: Record<string, [number, number]>, version = 1, extra: typeof RULES = []): string {
  const widths = [23, 8, 7, 7, 7, 11, 6];
  const rows = [...RULES, ...extra]
    .sort((a, b) => (a[0] < b[0] ? -1 : 1))
    .map(([name, severity, source, description]) => {
      const [passing, failing] = counts[name] ?? [0, 0];
      return row(widths, [name, severity, source, String(passing), String(failing), "0", "0", description]);
    });
  return [
    "RULE                     SEVERITY  SOURCE   PASSING  FAILING  UNEVALUATED  ERRORS  DESCRIPTION",
    ...rows,
    "",
    `rule set version ${version}, 0 unvalidated, validation lag 0s`,
    "parameters: max_vcpus=4, unhealthy_after_seconds=300, vcpu_overcommit_ratio=1000",
    "",
  ].join("\n");
}

/** Every rule at [passing, 0]. */
const allPassing = (passing: number): Record<string, [number, number]> => Object.fromEntries(RULES.map(([name]) => [name, [passing, 0]]));

describe("fleetlet get policies / policies put|delete", () => {
  it("get policies: the built-in and file rules, counts following the instances and their standby policy", async () => {
    const get = ["get", "policies", ...agg];
    // No instances yet: every count 0.
    await untilOutput(get, rulesTable({}));

    // A running VM with a process but no standby policy: fails no-standby-policy only.
    await register({ id: "vm-a", name: "small", pid: standIn.pid, allocatedVcpus: 2, allocatedMemoryBytes: 1n << 30n, labels: { team: "a" } });
    await untilOutput(get, rulesTable({ ...allPassing(1), "no-standby-policy": [0, 1] }));

    // The same VM again, now with a standby policy (SetStandbyPolicy needs conntrack on the
    // test machine; registering the instance again sets it everywhere): it passes everything.
    await register({ id: "vm-a", name: "small", pid: standIn.pid, allocatedVcpus: 2, allocatedMemoryBytes: 1n << 30n, labels: { team: "a" }, standbyPolicy: { enabled: true, idleTimeout: "30s" } });
    await untilOutput(get, rulesTable(allPassing(1)));

    // A big VM, created (no process yet), without a standby policy: fails big-vm and no-standby-policy.
    await register({ id: "vm-big", name: "big", allocatedVcpus: 8, allocatedMemoryBytes: 1n << 30n });
    await untilOutput(get, rulesTable({ ...allPassing(2), "big-vm": [1, 1], "no-standby-policy": [1, 1] }));
  });

  it("get policies -o json: the protobuf JSON of ListPoliciesResponse", async () => {
    const r = await runFleetlet(["get", "policies", ...agg, "-o", "json"]);
    assert.equal(r.code, 0, r.stderr);
    const doc = JSON.parse(r.stdout) as {
      rules: { name: string; severity: string; source: string; failsWhen: string }[];
      version: string;
      summaries: { rule: string; passing?: number; failing?: number }[];
      parameters: Record<string, number>;
    };
    assert.deepEqual(
      doc.rules.map((x) => [x.name, x.severity, x.source]),
      [
        ["big-vm", "POLICY_SEVERITY_WARNING", "POLICY_SOURCE_FILE"],
        ["container-unhealthy", "POLICY_SEVERITY_WARNING", "POLICY_SOURCE_BUILTIN"],
        ["host-stale-running", "POLICY_SEVERITY_CRITICAL", "POLICY_SOURCE_BUILTIN"],
        ["memory-above-host", "POLICY_SEVERITY_CRITICAL", "POLICY_SOURCE_BUILTIN"],
        ["no-standby-policy", "POLICY_SEVERITY_INFO", "POLICY_SOURCE_BUILTIN"],
        ["running-without-process", "POLICY_SEVERITY_WARNING", "POLICY_SOURCE_BUILTIN"],
        ["standby-unsupported", "POLICY_SEVERITY_WARNING", "POLICY_SOURCE_BUILTIN"],
        ["vcpu-overcommit", "POLICY_SEVERITY_WARNING", "POLICY_SOURCE_BUILTIN"],
      ],
    );
    assert.equal(doc.rules[0]!.failsWhen, "instance.allocated_vcpus > params.max_vcpus");
    assert.equal(doc.version, "1");
    assert.deepEqual(doc.parameters, { max_vcpus: 4, unhealthy_after_seconds: 300, vcpu_overcommit_ratio: 1000 });
    // proto3 JSON leaves zero counts out.
    assert.deepEqual(doc.summaries.find((s) => s.rule === "big-vm"), { rule: "big-vm", severity: "POLICY_SEVERITY_WARNING", passing: 1, failing: 1 });
  });

  it("get instances: a CONCERNS column, and --failing / --severity filters", async () => {
    const pidWidth = Math.max(3, String(standIn.pid).length);
    const widths = [4, 6, 5, 4, 7, pidWidth, 3, 5, 6, 19];
    const head = row(widths, ["HOST", "ID", "NAME", "KIND", "STATE", "PID", "TAP", "VCPUS", "MEMORY", "CONCERNS", "LABELS"]);
    const a = row(widths, ["h1", "vm-a", "small", "VM", "RUNNING", String(standIn.pid), "-", "2", "1.0Gi", "-", "team=a"]);
    const big = row(widths, ["h1", "vm-big", "big", "VM", "CREATED", "-", "-", "8", "1.0Gi", "2 (warning: big-vm)", "-"]);
    assert.equal(head, `HOST  ID      NAME   KIND  STATE    ${"PID".padEnd(pidWidth)}  TAP  VCPUS  MEMORY  CONCERNS             LABELS`);
    assert.equal(await instancesBlock([]), [head, a, big].join("\n"));
    // Columns are as wide as what is listed: vm-big alone has no pid and a short name.
    const onlyBig = [
      "HOST  ID      NAME  KIND  STATE    PID  TAP  VCPUS  MEMORY  CONCERNS             LABELS",
      "h1    vm-big  big   VM    CREATED  -    -    8      1.0Gi   2 (warning: big-vm)  -",
    ].join("\n");
    assert.equal(await instancesBlock(["--failing", "big-vm"]), onlyBig);
    // Comma-separated and repeated names are one list: instances failing any of them.
    assert.equal(await instancesBlock(["--failing", "no-standby-policy,memory-above-host"]), onlyBig);
    assert.equal(await instancesBlock(["--failing", "memory-above-host", "--failing", "big-vm"]), onlyBig);
    assert.equal(await instancesBlock(["--failing", "host-stale-running"]), "HOST  ID  NAME  KIND  STATE  PID  TAP  VCPUS  MEMORY  CONCERNS  LABELS");
    assert.equal(await instancesBlock(["--severity", "warning"]), onlyBig);
    assert.equal(await instancesBlock(["--severity", "info,critical"]), onlyBig);
    assert.equal(await instancesBlock(["--severity", "critical"]), "HOST  ID  NAME  KIND  STATE  PID  TAP  VCPUS  MEMORY  CONCERNS  LABELS");
    // The JSON carries the concerns themselves.
    const j = await runFleetlet(["get", "instances", ...agg, "--failing", "big-vm", "-o", "json"]);
    assert.equal(j.code, 0, j.stderr);
    const doc = JSON.parse(j.stdout) as { instances: { id: string; concerns: { rule: string; severity: string; message: string }[] }[] };
    assert.deepEqual(
      doc.instances.map((i) => [i.id, i.concerns.map((c) => [c.rule, c.severity, c.message])]),
      [
        [
          "vm-big",
          [
            ["big-vm", "POLICY_SEVERITY_WARNING", "more vCPUs than params.max_vcpus"],
            ["no-standby-policy", "POLICY_SEVERITY_INFO", "no standby policy: the instance is never put on standby when idle"],
          ],
        ],
      ],
    );
    // From one agent: no CONCERNS column (an agent has no policies).
    const direct = await runFleetlet(["get", "instances", "--agent", agent.address]);
    assert.equal(direct.code, 0, direct.stderr);
    assert.match(direct.stdout.split("\n")[0]!, /^ID\s+NAME\s+KIND\s+STATE\s+PID\s+TAP\s+VCPUS\s+MEMORY\s+LABELS$/);
  });

  it("bad flags: one line naming the flag, exit 2, nothing called", async () => {
    const cases: [string[], RegExp][] = [
      [["get", "instances", ...agg, "--severity", "high"], /^fleetlet get: error: option '--severity <level>' argument 'high' is invalid\. must be info, warning or critical, got "high"$/],
      [["get", "instances", ...agg, "--severity", "warning,"], /^fleetlet get: error: option '--severity <level>' argument 'warning,' is invalid\. must be info, warning or critical, got ""$/],
      [["get", "instances", ...agg, "--failing", "Big_VM"], /^fleetlet get: error: option '--failing <rule>' argument 'Big_VM' is invalid\. a rule name must match /],
      [["get", "instances", "--agent", agent.address, "--failing", "big-vm"], /^fleetlet get: error: --failing filter on the aggregator's policies \(an agent has none\); drop --agent$/],
      [["get", "instances", "--agent", agent.address, "--severity", "info"], /^fleetlet get: error: --severity filter on the aggregator's policies \(an agent has none\); drop --agent$/],
      [["get", "stats", ...agg, "--failing", "big-vm"], /^fleetlet get: error: --failing applies to get instances only$/],
      [["get", "policies", "--agent", agent.address], /^fleetlet get: error: policies are the aggregator's \(an agent has none\); drop --agent$/],
      [["policies", "put", ...agg], /^fleetlet policies put: error: required option '-f, --filename <file>' not specified$/],
      [["policies", "put", "-f", policiesFile, "--aggregator", "nohost"], /^fleetlet policies put: error: option '--aggregator <host:port>' argument 'nohost' is invalid\./],
      [["policies", "put", "-f", join(dirs.files.path, "missing.yaml"), ...agg], /^fleetlet policies put: error: -f \S+missing\.yaml: ENOENT: /],
      // The --policies file's parameters are not the API's.
      [["policies", "put", "-f", policiesFile, ...agg], /^fleetlet policies put: error: -f \S+policies\.yaml: parameters: are set in the aggregator's --policies file, not through the API$/],
      [["policies", "delete", "Big_VM", ...agg], /^fleetlet policies delete: error: <name>: a rule name must match /],
    ];
    for (const [args, want] of cases) {
      const r = await runFleetlet(args);
      assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
      assert.equal(r.stdout, "", args.join(" "));
      assert.equal(r.stderr.trimEnd().split("\n").length, 1, r.stderr);
      assert.match(r.stderr.trimEnd(), want);
    }
  });

  it("policies put of a bad expression: the rule and CEL's position on one line, exit 1, nothing changed", async () => {
    const syntax = join(dirs.files.path, "syntax.yaml");
    writeFileSync(syntax, "name: broken\nseverity: critical\nfails_when: instance.allocated_vcpus >\n");
    const r = await runFleetlet(["policies", "put", "-f", syntax, ...agg]);
    assert.equal(r.code, 1, r.stderr);
    assert.equal(r.stdout, "");
    assert.equal(r.stderr, `fleetlet policies put: ${aggregator.address}: [invalid_argument] rule.fails_when: rule broken: <input>:1:26: found > but expecting end of input\n`);

    // A list: the first rule is put, the second refused (a field FleetInstance does not have).
    const list = join(dirs.files.path, "list.yaml");
    writeFileSync(list, ["- name: tiny-vm", "  severity: info", "  fails_when: instance.allocated_vcpus < 1", "- name: no-field", "  fails_when: instance.vcpus > 2", ""].join("\n"));
    const l = await runFleetlet(["policies", "put", "-f", list, ...agg]);
    assert.equal(l.code, 1, l.stderr);
    assert.equal(l.stdout, "rule tiny-vm put (info), rule set version 2\n");
    assert.match(l.stderr, new RegExp(`^fleetlet policies put: ${aggregator.address.replace(/\./g, "\\.")}: \\[invalid_argument\\] rule\\.fails_when: rule no-field: <input>:1:9: FleetInstance has no field "vcpus" \\(it has: id, name, `));
    assert.equal(l.stderr.trimEnd().split("\n").length, 1);

    // The file's rule is the file's.
    const d = await runFleetlet(["policies", "delete", "big-vm", ...agg]);
    assert.equal(d.code, 1);
    assert.equal(d.stderr, `fleetlet policies delete: ${aggregator.address}: [failed_precondition] rule big-vm comes from the --policies file: it is deleted there, not through the API\n`);
  });

  it("policies put then delete: the rule appears with source api, the version moves, and it is gone again", async () => {
    const file = join(dirs.files.path, "put.yaml");
    // The --policies file's shape, `rules:` and all.
    writeFileSync(file, ["rules:", "  - name: labelled", "    severity: critical", "    description: every instance has a team label", "    fails_when: '!(\"team\" in instance.labels)'", ""].join("\n"));
    const put = await runFleetlet(["policies", "put", "-f", file, ...agg]);
    assert.equal(put.code, 0, put.stderr);
    assert.equal(put.stdout, "rule labelled put (critical), rule set version 3\n");

    // Counted: vm-big has no team label; tiny-vm (put above) fails nobody.
    const placed: Record<string, [number, number]> = { ...allPassing(2), "big-vm": [1, 1], "no-standby-policy": [1, 1] };
    await untilOutput(
      ["get", "policies", ...agg],
      rulesTable({ ...placed, labelled: [1, 1], "tiny-vm": [2, 0] }, 3, [
        ["labelled", "critical", "api", "every instance has a team label"],
        ["tiny-vm", "info", "api", "-"],
      ]),
    );
    assert.equal(
      await instancesBlock(["--severity", "critical"]),
      ["HOST  ID      NAME  KIND  STATE    PID  TAP  VCPUS  MEMORY  CONCERNS                LABELS", "h1    vm-big  big   VM    CREATED  -    -    8      1.0Gi   3 (critical: labelled)  -"].join("\n"),
    );

    const del = await runFleetlet(["policies", "delete", "labelled", ...agg, "-o", "json"]);
    assert.equal(del.code, 0, del.stderr);
    assert.deepEqual(JSON.parse(del.stdout), { version: "4" });
    const tidy = await runFleetlet(["policies", "delete", "tiny-vm", ...agg]);
    assert.equal(tidy.stdout, "rule tiny-vm deleted, rule set version 5\n");
    await untilOutput(["get", "policies", ...agg], rulesTable(placed, 5));

    const again = await runFleetlet(["policies", "delete", "labelled", ...agg]);
    assert.equal(again.code, 1);
    assert.equal(again.stderr, `fleetlet policies delete: ${aggregator.address}: [not_found] no rule named "labelled"\n`);
  });
});
