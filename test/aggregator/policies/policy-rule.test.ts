import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { InstanceKind, InstanceSource, InstanceState } from "../../../gen/fleetlet/agent/v1/inventory_pb.js";
import { FleetInstanceSchema, HostSyncState, PolicyHostSchema, PolicySeverity, PolicySource } from "../../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { BUILTIN_RULES, DEFAULT_PARAMETERS } from "../../../aggregator/policies/builtin-rules.js";
import { compileRule, RuleError } from "../../../aggregator/policies/policy-rule.js";
import { evaluateInstance } from "../../../aggregator/policies/policy-evaluator.js";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { prng, randomMessage } from "../../helpers/random-message.js";

const spec = (failsWhen: string, name = "r") => ({ name, severity: PolicySeverity.WARNING, description: "d", failsWhen, source: PolicySource.API });
const refused = (field: string, text: RegExp) => (e: unknown) => e instanceof RuleError && e.field === field && text.test(e.message);

describe("compileRule", () => {
  it("refuses bad names, severities and descriptions naming the field", () => {
    assert.throws(() => compileRule({ ...spec("true"), name: "Bad Name" }), refused("rule.name", /must match/));
    assert.throws(() => compileRule({ ...spec("true"), severity: PolicySeverity.UNSPECIFIED }), refused("rule.severity", /rule r: must be info, warning or critical/));
    assert.throws(() => compileRule({ ...spec("true"), description: "a\nb" }), refused("rule.description", /printable/));
    assert.throws(() => compileRule(spec("  ")), refused("rule.fails_when", /an expression is required/));
  });

  it("refuses expressions that cannot work, with the rule name and the CEL position", () => {
    assert.throws(() => compileRule(spec("instance.allocated_vcpus > ")), refused("rule.fails_when", /^rule r: <input>:1:26: /));
    assert.throws(() => compileRule(spec("instance.allocated_vcpu > 2")), refused("rule.fails_when", /^rule r: <input>:1:9: FleetInstance has no field "allocated_vcpu" \(it has: id, name/));
    assert.throws(() => compileRule(spec("has(instance.standby_policy.idle) ")), refused("rule.fails_when", /<input>:1:1: StandbyPolicy has no field "idle"/));
    assert.throws(() => compileRule(spec("host.cpus > 1u")), refused("rule.fails_when", /PolicyHost has no field "cpus"/));
    assert.throws(() => compileRule(spec('instance.allocated_vcpus > "8"')), refused("rule.fails_when", /no matching overload/));
    assert.throws(() => compileRule(spec("nobody > 1")), refused("rule.fails_when", /unresolved attribute/));
    assert.throws(() => compileRule(spec("instance.allocated_vcpus")), refused("rule.fails_when", /gave an int \(1\), not a bool/));
    // A rule sees the agent's data, not what other rules found.
    assert.throws(() => compileRule(spec("size(instance.concerns) > 0")), refused("rule.fails_when", /FleetInstance has no field "concerns"/));
  });

  it("accepts expressions whose errors depend on the data, and reports them per instance", () => {
    const rule = compileRule(spec('instance.labels["team"] == "db"'));
    const host = create(PolicyHostSchema);
    assert.deepEqual(rule.evaluate(create(FleetInstanceSchema, { labels: { team: "db" } }), host, new Map()), { fails: true });
    assert.deepEqual(rule.evaluate(create(FleetInstanceSchema, { labels: { team: "web" } }), host, new Map()), { fails: false });
    const missing = rule.evaluate(create(FleetInstanceSchema), host, new Map());
    assert.ok(missing.error !== undefined, "a missing label is an error, not a pass");
    // Comprehension variables are not field paths of `instance`.
    assert.deepEqual(compileRule(spec('instance.labels.exists(k, k == "x")')).evaluate(create(FleetInstanceSchema, { labels: { x: "1" } }), host, new Map()), { fails: true });
  });

  it("the built-in rules find what they describe, and an evaluation error becomes a concern", () => {
    const rules = BUILTIN_RULES.map(compileRule);
    const vm = create(FleetInstanceSchema, {
      id: "vm",
      state: InstanceState.RUNNING,
      kind: InstanceKind.VM,
      source: InstanceSource.REGISTERED,
      allocatedVcpus: 8,
      allocatedMemoryBytes: 64n << 30n,
      networkEnabled: true,
      standbyPolicy: { enabled: true },
    });
    const host = create(PolicyHostSchema, { name: "h", syncState: HostSyncState.STALE, cpuCount: 1, memoryBytes: 8n << 30n, allocatedVcpus: 8n, factsKnown: true });
    const failing = (i = vm, h = host) => evaluateInstance(rules, i, h, DEFAULT_PARAMETERS, [], 0).map((c) => c.rule);
    assert.deepEqual(failing(), ["host-stale-running", "memory-above-host", "running-without-process", "standby-unsupported", "vcpu-overcommit"]);
    const fine = create(FleetInstanceSchema, { ...vm, pid: 42, allocatedMemoryBytes: 1n << 30n, allocatedVcpus: 1 });
    const goodHost = create(PolicyHostSchema, { ...host, syncState: HostSyncState.SYNCED, cpuCount: 4, allocatedVcpus: 4n, standbySupported: true });
    assert.deepEqual(failing(fine, goodHost), []);
    assert.deepEqual(failing(create(FleetInstanceSchema, { ...fine, standbyPolicy: undefined }), goodHost), ["no-standby-policy"]);
    // Unknown host facts: nothing about the host is claimed.
    assert.deepEqual(failing(fine, create(PolicyHostSchema, { syncState: HostSyncState.SYNCED })), []);

    const broken = compileRule(spec('instance.labels["team"] == "db"', "team-db"));
    const [concern] = evaluateInstance([broken], fine, goodHost, new Map(), [], 1000);
    assert.equal(concern?.rule, "team-db");
    assert.match(concern!.message, /^rule team-db could not be evaluated: /);
  });

  it("a concern that stays keeps its since; one that comes back starts again", () => {
    const rule = compileRule(spec("instance.allocated_vcpus > 2", "big"));
    const i = create(FleetInstanceSchema, { allocatedVcpus: 4 });
    const first = evaluateInstance([rule], i, create(PolicyHostSchema), new Map(), [], 1000);
    const again = evaluateInstance([rule], i, create(PolicyHostSchema), new Map(), first, 5000);
    assert.deepEqual(again[0]!.since, first[0]!.since);
    const later = evaluateInstance([rule], i, create(PolicyHostSchema), new Map(), [], 9000);
    assert.notDeepEqual(later[0]!.since, first[0]!.since);
  });
});

describe("memoised evaluation", () => {
  it("gives exactly the evaluator's outcome on random instances and hosts, and runs it once per distinct input", () => {
    const rnd = prng(Number(process.env.FLEETLET_FUZZ_SEED ?? 11));
    const exprs = [
      "instance.allocated_vcpus > 4",
      'instance.labels["team"] == "db"',
      'instance.labels.exists(k, k.startsWith("a"))',
      "has(instance.standby_policy) && instance.standby_policy.enabled",
      "!has(instance.pid) || instance.pid > 100",
      "instance.state == fleetlet.agent.v1.InstanceState.INSTANCE_STATE_RUNNING && host.sync_state == fleetlet.aggregator.v1.HostSyncState.HOST_SYNC_STATE_STALE",
      "double(host.allocated_vcpus) > params.vcpu_overcommit_ratio * double(host.cpu_count)",
      '[instance].exists(i, i.name == "x")',
      'size(host.labels) > 1 && instance.name.contains("a")',
      // Map entries at constant keys are the inputs, not the whole map.
      '"zone" in instance.labels && "zone" in host.labels && instance.labels["zone"] != host.labels["zone"]',
      'has(instance.labels.team) && instance.labels.team == "db" || !("team" in instance.labels)',
      'instance.labels["zone"] == "a" && size(instance.labels) > 2',
      // has(): presence is the input (scalars, messages, repeated fields, nested).
      '!has(instance.standby_policy) && has(instance.pid) || has(instance.labels)',
      "has(instance.standby_policy.idle_timeout) != has(instance.standby_policy.ignore_source_cidrs)",
      "has(instance.allocated_vcpus) && has(host.cpu_count)",
      'instance.name.matches("^[a-m]") || instance.name.matches("[0-9]$")',
    ].map((e, i) => compileRule(spec(e, `r${i}`)));
    // Random maps hardly ever hold the keys the rules name: some get them.
    const withEntries = <T extends { labels: Record<string, string> }>(m: T): T => {
      for (const k of ["zone", "team"]) {
        const r = rnd();
        if (r < 0.3) m.labels[k] = "a";
        else if (r < 0.5) m.labels[k] = r < 0.4 ? "db" : "b";
      }
      return m;
    };
    const params = [new Map([["vcpu_overcommit_ratio", 2]]), new Map([["vcpu_overcommit_ratio", 0.5]])];
    let compared = 0;
    for (let n = 0; n < 400; n++) {
      const instance = withEntries(create(FleetInstanceSchema, { ...randomMessage(FleetInstanceSchema, rnd), concerns: [] }));
      const host = withEntries(randomMessage(PolicyHostSchema, rnd));
      const p = params[n % 2]!;
      for (const rule of exprs) {
        assert.deepEqual(rule.evaluate(instance, host, p), rule.evaluateUncached(instance, host, p), `${rule.failsWhen} on ${n}`);
        // Again, now from the memo.
        assert.deepEqual(rule.evaluate(instance, host, p), rule.evaluateUncached(instance, host, p));
        compared++;
      }
    }
    assert.equal(compared, 400 * exprs.length);
    // Rules reading `now`: an outcome that read it is never served from the memo (it changes with
    // time alone); one that stopped before it is (the same inputs take the same path).
    const timed = ["instance.allocated_vcpus > 4 && now.getSeconds() > 30", "!has(instance.health_since) || now.getSeconds() > 30"].map((e, i) => compileRule(spec(e, `t${i}`)));
    const times = [timestampFromMs(10_000), timestampFromMs(40_000)];
    let readNow = 0;
    for (let n = 0; n < 400; n++) {
      const instance = create(FleetInstanceSchema, { ...randomMessage(FleetInstanceSchema, rnd), concerns: [] });
      const host = randomMessage(PolicyHostSchema, rnd);
      for (const rule of timed) {
        for (const now of [...times, ...times]) {
          const memoised = rule.evaluate(instance, host, params[0]!, undefined, now);
          assert.deepEqual(memoised, rule.evaluateUncached(instance, host, params[0]!, now), `${rule.failsWhen} on ${n} at ${now.seconds}`);
          if (memoised.readNow) readNow++;
        }
      }
    }
    assert.ok(readNow > 400 && readNow < 400 * 2 * 4, `some outcomes read now, some did not (${readNow})`);
    assert.ok(timed.every((r) => r.memoSize() > 0), "outcomes that did not read now are memoised");
    // A rule that reads one enum sees a handful of values across a fleet.
    const byState = compileRule(spec("instance.state == fleetlet.agent.v1.InstanceState.INSTANCE_STATE_RUNNING", "state"));
    for (let n = 0; n < 1000; n++) byState.evaluate(create(FleetInstanceSchema, { id: `i${n}`, state: n % 3, allocatedVcpus: n }), create(PolicyHostSchema, { name: `h${n}` }), new Map());
    assert.equal(byState.memoSize(), 3);
    // A label read at a constant key: memoised by that label, whatever the other labels are.
    const owner = compileRule(spec('!("owner" in instance.labels) || instance.labels.owner == ""', "owner"));
    for (let n = 0; n < 1000; n++) {
      const i = create(FleetInstanceSchema, { id: `i${n}`, labels: { app: `app-${n}`, ...(n % 2 === 0 ? { owner: `team-${n % 3}` } : {}) } });
      assert.equal(owner.evaluate(i, create(PolicyHostSchema), new Map()).fails, n % 2 !== 0);
    }
    assert.equal(owner.memoSize(), 4, "absent, team-0, team-1, team-2");
  });
});
