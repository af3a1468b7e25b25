import { afterEach, describe, it } from "vitest";
import assert from "node:assert/strict";
import { create, equals } from "@bufbuild/protobuf";
import { HostInfoSchema, InstanceKind, InstanceSchema, InstanceSource, InstanceState, type Instance } from "../../../gen/fleetlet/agent/v1/inventory_pb.js";
import { FleetInstanceSchema, HostSyncState, PolicySeverity, PolicySource, type FleetInstance } from "../../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { StandbyPolicySchema } from "../../../gen/fleetlet/agent/v1/standby_pb.js";
import { HealthStatus } from "../../../gen/fleetlet/agent/v1/runtime_pb.js";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { BUILTIN_RULES } from "../../../aggregator/policies/builtin-rules.js";
import { evaluateInstance, sameConcerns } from "../../../aggregator/policies/policy-evaluator.js";
import { policyHostOf } from "../../../aggregator/policies/policy-host.js";
import { PolicyStore } from "../../../aggregator/policies/policy-store.js";
import { RuleSet } from "../../../aggregator/policies/rule-set.js";
import { ValidationLoop } from "../../../aggregator/policies/validation-loop.js";
import { MergedView } from "../../../aggregator/inventory/merged-view.js";
import { createLogger } from "../../../lib/rpc/logger.js";
import { prng } from "../../helpers/random-message.js";
import { tempDir } from "../../helpers/temp-dir.js";
import { until } from "../../helpers/until.js";

// policies.md "How it is tested": random instance changes, host changes and rule changes, with an
// evaluator that fails at random; after each quiet period every instance's concerns equal a fresh
// evaluation of the current rules on the current instance and host, and the merged view (its
// instances without concerns, their resource versions, each host's cursor and sync state) is
// identical to the same run without policies.

const SEED = Number(process.env.FLEETLET_PROPERTY_SEED ?? Date.now() % 1e9);
const logger = createLogger("test", "silent");
const loops: ValidationLoop[] = [];
afterEach(() => {
  for (const l of loops.splice(0)) l.close();
});

const RULE_POOL = [
  { name: "big-vm", failsWhen: "instance.allocated_vcpus > 4" },
  { name: "team-db", failsWhen: 'instance.labels["team"] == "db"' }, // errors when the label is missing
  { name: "zone-eu", failsWhen: 'host.labels.exists(k, k == "zone") && host.labels["zone"] == "eu" && instance.allocated_vcpus > 1' },
  { name: "half-host", failsWhen: "host.facts_known && double(host.allocated_vcpus) > 0.5 * double(host.cpu_count)" },
  { name: "named", failsWhen: 'instance.name.startsWith("x")' },
  { name: "param-vcpus", failsWhen: "double(instance.allocated_vcpus) > params.vcpu_overcommit_ratio" },
];

function randomInstance(rnd: () => number, id: string, version: number): Instance {
  const labels: Record<string, string> = {};
  if (rnd() < 0.5) labels.team = rnd() < 0.5 ? "db" : "web";
  return create(InstanceSchema, {
    id,
    name: rnd() < 0.3 ? `x-${id}` : id,
    kind: rnd() < 0.2 ? InstanceKind.CONTAINER : InstanceKind.VM,
    state: [InstanceState.RUNNING, InstanceState.STOPPED, InstanceState.STANDBY][Math.floor(rnd() * 3)]!,
    source: InstanceSource.REGISTERED,
    allocatedVcpus: Math.floor(rnd() * 8),
    allocatedMemoryBytes: BigInt(Math.floor(rnd() * 16)) << 30n,
    networkEnabled: rnd() < 0.5,
    ...(rnd() < 0.5 ? { pid: 1000 + Math.floor(rnd() * 100) } : {}),
    ...(rnd() < 0.5 ? { standbyPolicy: { enabled: rnd() < 0.7 } } : {}),
    labels,
    resourceVersion: BigInt(version),
  });
}

const stripped = (i: FleetInstance) => create(FleetInstanceSchema, { ...i, concerns: [] });

/** Every instance's concerns against a fresh evaluation; the two views against each other. */
function check(withPolicies: MergedView, without: MergedView, rules: RuleSet): string[] {
  const problems: string[] = [];
  const names = withPolicies.hostNames().sort();
  if (JSON.stringify(names) !== JSON.stringify(without.hostNames().sort())) problems.push(`hosts ${names} vs ${without.hostNames()}`);
  for (const name of names) {
    const a = withPolicies.host(name)!;
    const b = without.host(name)!;
    if (a.incarnation !== b.incarnation || a.version !== b.version || a.state !== b.state) problems.push(`${name}: cursor/state differ`);
    if (a.instances.size !== b.instances.size) problems.push(`${name}: ${a.instances.size} vs ${b.instances.size} instances`);
    const host = policyHostOf(a);
    for (const [id, i] of a.instances) {
      const other = b.instances.get(id);
      if (!other || !equals(FleetInstanceSchema, stripped(i), other)) problems.push(`${name}/${id}: differs from the view without policies`);
      if (other && other.concerns.length > 0) problems.push(`${name}/${id}: concerns without policies`);
      const fresh = evaluateInstance(rules.list(), i, host, rules.parameters, [], 0);
      if (!sameConcerns(i.concerns, fresh)) problems.push(`${name}/${id}: concerns ${i.concerns.map((c) => c.rule)} vs fresh ${fresh.map((c) => c.rule)}`);
    }
  }
  return problems;
}

/**
 * The property run. `unreliable`: the evaluator fails 20% of the time and the real-time queue
 * holds 5 (every failure and overflow makes the next search walk everything); reliable: nothing
 * fails or overflows, so the searches walk only the hosts whose facts moved and the instances
 * whose outcome depends on the time — what is left behind then shows.
 */
async function propertyRun(unreliable: boolean): Promise<void> {
    const rnd = prng(SEED);
    const evalRnd = prng(SEED + 1);
    const withPolicies = new MergedView(undefined);
    const without = new MergedView(undefined);
    const rules = new RuleSet(undefined, BUILTIN_RULES);
    let thrown = 0;
    const loop = new ValidationLoop(withPolicies, rules, {
      logger,
      sweepIntervalMs: 20,
      queueLimit: unreliable ? 5 : 10_000, // small: bursts overflow it and are left to the search
      sliceMs: 1,
      evaluate: (...args) => {
        if (unreliable && evalRnd() < 0.2) {
          thrown++;
          throw new Error("injected evaluator failure");
        }
        return evaluateInstance(...args);
      },
    });
    loops.push(loop);
    const hosts = ["h1", "h2", "h3"];
    const versions = new Map(hosts.map((h) => [h, 0]));
    const both = (f: (v: MergedView) => void) => {
      f(withPolicies);
      f(without);
    };
    let checks = 0;
    for (let step = 0; step < 400; step++) {
      const host = hosts[Math.floor(rnd() * hosts.length)]!;
      const r = rnd();
      if (r < 0.55) {
        const version = versions.get(host)! + 1;
        versions.set(host, version);
        const upsert = randomInstance(rnd, `i${Math.floor(rnd() * 12)}`, version);
        both((v) => v.applyChanges(host, "inc", version, [upsert], [], 0));
      } else if (r < 0.65) {
        const version = versions.get(host)! + 1;
        versions.set(host, version);
        const id = `i${Math.floor(rnd() * 12)}`;
        both((v) => v.applyChanges(host, "inc", version, [], [id], 0));
      } else if (r < 0.75) {
        const info = create(HostInfoSchema, { cpuCount: 1 + Math.floor(rnd() * 8), memoryBytes: BigInt(1 + Math.floor(rnd() * 32)) << 30n, labels: rnd() < 0.5 ? { zone: "eu" } : {}, standbySupported: rnd() < 0.5 });
        both((v) => {
          v.ensureHost(host);
          v.setHostInfo(host, info);
        });
      } else if (r < 0.82) {
        const state = rnd() < 0.5 ? HostSyncState.STALE : HostSyncState.SYNCED;
        both((v) => {
          v.ensureHost(host);
          v.setState(host, state);
        });
      } else if (!unreliable && Math.floor(step / 25) % 2 === 1) {
        // Every other quiet period of the reliable run has no rule change (which would make the
        // next search walk everything): only the partial searches can catch up there.
      } else if (r < 0.92) {
        const pick = RULE_POOL[Math.floor(rnd() * RULE_POOL.length)]!;
        rules.put({ ...pick, severity: rnd() < 0.5 ? PolicySeverity.WARNING : PolicySeverity.CRITICAL, description: pick.name, source: PolicySource.API });
      } else if (r < 0.96) {
        const names = rules.list().map((x) => x.name);
        if (names.length > 1) rules.delete(names[Math.floor(rnd() * names.length)]!);
      } else {
        // A parameter change (as a --policies file edit would bring).
        rules.setFile({ rules: [], parameters: new Map([["vcpu_overcommit_ratio", Math.floor(rnd() * 8)]]) });
      }
      if (step % 25 === 24) {
        // A quiet period: no change until the loop has caught up (the search retries failures).
        await until("everything validated", async () => (loop.status().unvalidated === 0 ? true : undefined), 10_000);
        assert.deepEqual(check(withPolicies, without, rules), [], `step ${step} (seed ${SEED})`);
        checks++;
      }
    }
    assert.equal(checks, 16);
    if (unreliable) {
      assert.ok(thrown > 10, `the evaluator failed ${thrown} times`);
      assert.ok(loop.counters.skipped > 0, "bursts overflowed the real-time queue");
    } else assert.deepEqual([thrown, loop.counters.skipped, loop.counters.failed], [0, 0, 0]);
    assert.ok(loop.counters.sweeps > 2);
}

describe("ValidationLoop", () => {
  it(`property: after quiet periods concerns equal a fresh evaluation and the view equals one without policies; evaluator failing, queue overflowing (seed ${SEED})`, () => propertyRun(true), 120_000);
  it(`property: the same with nothing failing (searches walk only what moved) (seed ${SEED})`, () => propertyRun(false), 120_000);

  it("a change is validated in real time, before the next search, and never waits for it", async () => {
    const view = new MergedView(undefined);
    const rules = new RuleSet(undefined, BUILTIN_RULES);
    const loop = new ValidationLoop(view, rules, { logger, sweepIntervalMs: 3_600_000 });
    loops.push(loop);
    const vm = create(InstanceSchema, { id: "vm", kind: InstanceKind.VM, state: InstanceState.RUNNING, source: InstanceSource.REGISTERED, pid: 5, resourceVersion: 1n });
    view.applyChanges("h", "inc", 1, [vm], [], 0);
    // Applied and visible at once, concerns or not.
    assert.equal(view.host("h")?.instances.get("vm")?.resourceVersion, 1n);
    const concerned = await until("the no-standby-policy concern", async () => (view.host("h")!.instances.get("vm")!.concerns.some((c) => c.rule === "no-standby-policy") ? true : undefined), 2000);
    assert.ok(concerned);
    view.applyChanges("h", "inc", 2, [create(InstanceSchema, { ...vm, standbyPolicy: create(StandbyPolicySchema, { enabled: true }), resourceVersion: 2n })], [], 0);
    // Until validated, the instance keeps its old concerns (never shown as clean just because it changed).
    assert.ok(view.host("h")!.instances.get("vm")!.concerns.some((c) => c.rule === "no-standby-policy"));
    await until("cleared", async () => (view.host("h")!.instances.get("vm")!.concerns.length === 0 ? true : undefined), 2000);
  });

  it("real-time results reach the store a moment later, many to a transaction", async () => {
    const dir = tempDir("policy-flush");
    const store = PolicyStore.open(dir.path);
    try {
      const view = new MergedView(undefined);
      const loop = new ValidationLoop(view, new RuleSet(store, BUILTIN_RULES), { logger, sweepIntervalMs: 3_600_000, store });
      loops.push(loop);
      await until("the first search", async () => (loop.counters.sweeps > 0 && !loop.searching ? true : undefined), 2000);
      const vms = Array.from({ length: 5 }, (_, n) => create(InstanceSchema, { id: `vm${n}`, kind: InstanceKind.VM, state: InstanceState.RUNNING, source: InstanceSource.REGISTERED, pid: 5, resourceVersion: BigInt(n + 1) }));
      vms.forEach((vm, n) => view.applyChanges("h", "inc", n + 1, [vm], [], 0));
      await until("validated", async () => (loop.counters.validated >= 5 ? true : undefined), 2000);
      const stored = await until("stored", async () => (store.results().size === 5 ? store.results() : undefined), 2000);
      assert.deepEqual([...stored.values()].map((r) => r.concerns.map((c) => c.rule)), vms.map(() => ["no-standby-policy"]));
      loop.close();
    } finally {
      store.close();
      dir.remove();
    }
  });

  it("results are stored: a restart validates only what is behind", () => {
    const dir = tempDir("policy-loop");
    try {
      const view = new MergedView(undefined);
      const vm = create(InstanceSchema, { id: "vm", kind: InstanceKind.VM, state: InstanceState.RUNNING, source: InstanceSource.REGISTERED, resourceVersion: 1n });
      const other = create(InstanceSchema, { id: "other", kind: InstanceKind.VM, state: InstanceState.RUNNING, source: InstanceSource.REGISTERED, pid: 3, standbyPolicy: { enabled: true }, resourceVersion: 2n });
      view.applyChanges("h", "inc", 2, [vm, other], [], 0);
      const store = PolicyStore.open(dir.path);
      const loop = new ValidationLoop(view, new RuleSet(store, BUILTIN_RULES), { logger, sweepIntervalMs: 3_600_000, store });
      loop.validateAllNow();
      assert.equal(loop.counters.validated, 2);
      loop.close();
      store.close();

      // The same view again (as loaded from inventory.sqlite), "other" changed meanwhile.
      const again = new MergedView(undefined);
      again.applyChanges("h", "inc", 3, [vm, create(InstanceSchema, { ...other, labels: { team: "x" }, resourceVersion: 3n })], [], 0);
      const store2 = PolicyStore.open(dir.path);
      const restarted = new ValidationLoop(again, new RuleSet(store2, BUILTIN_RULES), { logger, sweepIntervalMs: 3_600_000, store: store2 });
      assert.deepEqual(again.host("h")!.instances.get("vm")!.concerns.map((c) => c.rule), ["no-standby-policy", "running-without-process"], "restored without evaluating");
      restarted.validateAllNow();
      assert.equal(restarted.counters.validated, 1, "only the changed instance was evaluated");

      // A rule change that changes no instance's concerns rewrites no row; the complete search
      // vouches for them, so the next restart evaluates nothing.
      const rules2 = new RuleSet(store2, BUILTIN_RULES);
      const loop2 = new ValidationLoop(again, rules2, { logger, sweepIntervalMs: 3_600_000, store: store2 });
      loop2.validateAllNow();
      const rowsBefore = new Map([...store2.results()].map(([k, r]) => [k, r.ruleHash]));
      rules2.put({ name: "huge", severity: PolicySeverity.WARNING, description: "", failsWhen: "instance.allocated_vcpus > 1000", source: PolicySource.API });
      loop2.validateAllNow();
      assert.deepEqual(new Map([...store2.results()].map(([k, r]) => [k, r.ruleHash])), rowsBefore, "no row rewritten");
      assert.equal(store2.validatedHash(), rules2.hash);
      loop2.close();
      restarted.close();
      const rules3 = new RuleSet(store2, BUILTIN_RULES);
      assert.equal(rules3.hash, rules2.hash);
      const loop3 = new ValidationLoop(again, rules3, { logger, sweepIntervalMs: 3_600_000, store: store2 });
      loops.push(loop3);
      loop3.validateAllNow();
      assert.equal(loop3.counters.validated, 0, "all current after the restart");
      // A later rule change clears the vouching until the next complete search.
      rules3.put({ name: "huge", severity: PolicySeverity.WARNING, description: "", failsWhen: "instance.allocated_vcpus > 2000", source: PolicySource.API });
      assert.equal(store2.validatedHash(), "");
      store2.close();
    } finally {
      dir.remove();
    }
  });

  it("a rule reading `now` is evaluated again by the search: a container unhealthy for longer than the threshold gets the concern with no change at all", async () => {
    const view = new MergedView(undefined);
    const rules = new RuleSet(undefined, BUILTIN_RULES, { rules: [], parameters: new Map([["unhealthy_after_seconds", 1]]) });
    const loop = new ValidationLoop(view, rules, { logger, sweepIntervalMs: 200 });
    loops.push(loop);
    const container = create(InstanceSchema, { id: "c", kind: InstanceKind.CONTAINER, source: InstanceSource.RUNTIME, state: InstanceState.RUNNING, health: HealthStatus.UNHEALTHY, healthSince: timestampFromMs(Date.now()), resourceVersion: 1n });
    view.applyChanges("h", "inc", 1, [container], [], 0);
    await until("validated", async () => (loop.status().unvalidated === 0 ? true : undefined), 2000);
    const rulesOf = () => view.host("h")!.instances.get("c")!.concerns.map((c) => c.rule);
    assert.ok(!rulesOf().includes("container-unhealthy"), "not yet: unhealthy for less than a second");
    const flipped = await until("container-unhealthy after the threshold", async () => (rulesOf().includes("container-unhealthy") ? true : undefined), 5000);
    assert.ok(flipped);
    assert.equal(view.host("h")!.version, 1, "the view did not change but for the concern");
  });

  it("the search evaluates a `now` rule again only where its last outcome read `now`: healthy containers and VMs are not evaluated at every sweep", async () => {
    const view = new MergedView(undefined);
    const rules = new RuleSet(undefined, BUILTIN_RULES, { rules: [], parameters: new Map([["unhealthy_after_seconds", 3600]]) });
    const evaluatedIds: string[] = [];
    const loop = new ValidationLoop(view, rules, {
      logger,
      sweepIntervalMs: 30,
      evaluate: (...args) => {
        evaluatedIds.push(args[1].id);
        return evaluateInstance(...args);
      },
    });
    loops.push(loop);
    const instances = [
      ...Array.from({ length: 20 }, (_, n) => create(InstanceSchema, { id: `healthy-${n}`, kind: InstanceKind.CONTAINER, source: InstanceSource.RUNTIME, state: InstanceState.RUNNING, health: HealthStatus.HEALTHY, healthSince: timestampFromMs(Date.now()), resourceVersion: 1n })),
      ...Array.from({ length: 20 }, (_, n) => create(InstanceSchema, { id: `vm-${n}`, kind: InstanceKind.VM, source: InstanceSource.REGISTERED, state: InstanceState.RUNNING, resourceVersion: 1n })),
      create(InstanceSchema, { id: "sick", kind: InstanceKind.CONTAINER, source: InstanceSource.RUNTIME, state: InstanceState.RUNNING, health: HealthStatus.UNHEALTHY, healthSince: timestampFromMs(Date.now()), resourceVersion: 1n }),
    ];
    view.applyChanges("h", "inc", 1, instances, [], 0);
    await until("validated", async () => (loop.status().unvalidated === 0 ? true : undefined), 2000);
    const sweepsBefore = loop.counters.sweeps;
    evaluatedIds.length = 0;
    await until("three more sweeps", async () => (loop.counters.sweeps >= sweepsBefore + 3 ? true : undefined), 5000);
    // The unhealthy container's outcome depends on the time (not over the hour yet): evaluated
    // at every sweep; nothing else is.
    assert.ok(evaluatedIds.length >= 2, `the unhealthy container is evaluated again (${evaluatedIds.length} evaluations)`);
    assert.deepEqual([...new Set(evaluatedIds)], ["sick"]);
  });

  it("which rules read `now` is stored with the result: after a restart the search evaluates only where they did", async () => {
    const dir = tempDir("policy-time-rules");
    try {
      const view = new MergedView(undefined);
      const instances = [
        ...Array.from({ length: 10 }, (_, n) => create(InstanceSchema, { id: `healthy-${n}`, kind: InstanceKind.CONTAINER, source: InstanceSource.RUNTIME, state: InstanceState.RUNNING, health: HealthStatus.HEALTHY, resourceVersion: 1n })),
        create(InstanceSchema, { id: "sick", kind: InstanceKind.CONTAINER, source: InstanceSource.RUNTIME, state: InstanceState.RUNNING, health: HealthStatus.UNHEALTHY, healthSince: timestampFromMs(Date.now()), resourceVersion: 1n }),
      ];
      view.applyChanges("h", "inc", 1, instances, [], 0);
      const params = { rules: [], parameters: new Map([["unhealthy_after_seconds", 3600]]) };
      const store = PolicyStore.open(dir.path);
      const first = new ValidationLoop(view, new RuleSet(store, BUILTIN_RULES, params), { logger, sweepIntervalMs: 3_600_000, store });
      first.validateAllNow();
      first.close();
      assert.deepEqual(
        [...store.results()].filter(([, r]) => r.timeRules === undefined || r.timeRules.size > 0).map(([k, r]) => `${k.split("\0")[1]}:${[...(r.timeRules ?? ["?"])]}`),
        ["sick:container-unhealthy"],
      );
      const evaluatedIds: string[] = [];
      const restarted = new ValidationLoop(view, new RuleSet(store, BUILTIN_RULES, params), {
        logger,
        sweepIntervalMs: 20,
        store,
        evaluate: (...args) => {
          evaluatedIds.push(args[1].id);
          return evaluateInstance(...args);
        },
      });
      loops.push(restarted);
      await until("two searches", async () => (restarted.counters.sweeps >= 2 ? true : undefined), 5000);
      assert.deepEqual([...new Set(evaluatedIds)], ["sick"]);
      restarted.close();
      store.close();
    } finally {
      dir.remove();
    }
  });
});
