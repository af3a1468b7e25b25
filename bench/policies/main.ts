/**
 * Fleet policies (issue 14), in-process: the aggregator's MergedView, RuleSet, ValidationLoop and
 * PolicyStore (in a temp dir, as the daemon has one) over 100 hosts x 1,000 instances (smoke:
 * 100 x 100), with the built-in rules and 14 more (fleet.ts).
 * (1) full sweep: CPU of the scheduled search validating every instance against all rules (built-in + 14)
 *     (first start with an empty store, then after a rule change), and of a search with nothing
 *     behind; then where one evaluation's time goes (evaluation.ts).
 * (2) change -> concern visible: single-instance upserts through view.applyChanges that add or
 *     remove the owner label (flipping missing-owner-label), 50/s; time until a fleet-watch-like
 *     reader (lib/rpc/follow-source.ts over view.changesAfter) sees the concernsOnly MODIFIED.
 * (3) change -> watcher with policies on vs off: the same change stream, rounds alternating off /
 *     on (no loop at all / a ValidationLoop with the daemon's defaults), time until the reader
 *     sees the instance's own MODIFIED.
 */
import { create } from "@bufbuild/protobuf";
import { BUILTIN_RULES } from "../../aggregator/policies/builtin-rules.js";
import { compileRule } from "../../aggregator/policies/policy-rule.js";
import { PolicyStore } from "../../aggregator/policies/policy-store.js";
import { RuleSet } from "../../aggregator/policies/rule-set.js";
import { ValidationLoop } from "../../aggregator/policies/validation-loop.js";
import { MergedView } from "../../aggregator/inventory/merged-view.js";
import { policyHostOf } from "../../aggregator/policies/policy-host.js";
import { InstanceSchema, type Instance } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { HostSyncState } from "../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { NO_TIME_RULES, type ValidationResult } from "../../aggregator/policies/policy-store.js";
import { followSource } from "../../lib/rpc/follow-source.js";
import { createLogger } from "../../lib/rpc/logger.js";
import { onCleanup, runBench, sleep, tempDir } from "../common/processes.js";
import { check, figure, fmt, percentile, printFigures, progress, verdict } from "../common/report.js";
import { boundEvaluatorCost, emptyRuleCost, evaluateInstanceCost, perRuleCost, withRegexCache, type Sample } from "./evaluation.js";
import { EXTRA_PARAMETERS, EXTRA_RULES, hostInfo, hostName, makeInstance, prng, referencesHost } from "./fleet.js";

const HOSTS = 100;
const SWEEP_INTERVAL_MS = 10_000; // the daemon's --policy-sweep-interval default
const TARGET_SWEEP_CPU_MS = 1000;
const TARGET_CONCERN_P99_MS = 100;
const TARGET_WATCH_RATIO = 1.1;

const cpuMs = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};

runBench(async ({ smoke }) => {
  const perHost = smoke ? 100 : 1000;
  const total = HOSTS * perHost;
  const rounds = smoke ? 1 : 3;
  const changesPerRound = smoke ? 40 : 500;
  const changeIntervalMs = 20;
  const microMs = smoke ? 100 : 400;
  const dir = tempDir("policies");
  const logger = createLogger("bench-policies", "silent");

  // ---- the fleet ----
  progress(`building the merged view: ${HOSTS} hosts x ${perHost} instances`);
  const view = new MergedView(undefined);
  const agent = new Map<string, Instance>(); // what each agent has, by `${host}/${id}`
  const hostVersion = new Map<string, number>();
  for (let h = 0; h < HOSTS; h++) {
    const name = hostName(h);
    view.ensureHost(name);
    view.setHostInfo(name, hostInfo(h));
    const instances = Array.from({ length: perHost }, (_, i) => makeInstance(h, i, BigInt(i + 1)));
    for (const i of instances) agent.set(`${name}/${i.id}`, i);
    hostVersion.set(name, perHost);
    view.applyChanges(name, `inc-${h}`, perHost, instances, [], Date.now());
    view.setState(name, HostSyncState.SYNCED);
  }
  check(view.list({}).length === total, `view has ${view.list({}).length} instances, expected ${total}`);

  const store = PolicyStore.open(dir);
  onCleanup(() => store.close());
  const extra = EXTRA_RULES.map((r) => compileRule(r));
  const rules = new RuleSet(store, BUILTIN_RULES, { rules: extra, parameters: new Map(EXTRA_PARAMETERS) });
  const ruleCount = rules.list().length;
  // The built-in ones (6 at commit 1efec8f; the set may grow) and the 14 of fleet.ts.
  check(ruleCount === BUILTIN_RULES.length + EXTRA_RULES.length, `${ruleCount} rules in force, expected ${BUILTIN_RULES.length + EXTRA_RULES.length}`);

  // ---- (1) full sweeps ----
  const waitValidated = async (loop: ValidationLoop, target: number, timeoutMs: number) => {
    const started = performance.now();
    while (loop.counters.validated < target) {
      check(performance.now() - started < timeoutMs, `${loop.counters.validated} of ${target} validated after ${timeoutMs} ms`);
      await new Promise((r) => setImmediate(r));
    }
  };
  progress(`scheduled search from an empty store (everything behind): ${total} instances x ${ruleCount} rules`);
  let cpu0 = cpuMs();
  let wall0 = performance.now();
  const loop = new ValidationLoop(view, rules, { logger, store, sweepIntervalMs: SWEEP_INTERVAL_MS });
  await waitValidated(loop, total, 600_000);
  const firstSweep = { cpuMs: cpuMs() - cpu0, wallMs: performance.now() - wall0 };
  await sleep(200); // the search's last slice
  let status = loop.status();
  check(status.unvalidated === 0, `${status.unvalidated} instances unvalidated after the first search`);
  const failingPerRule = new Map(status.summaries.map((s) => [s.rule, s.failing]));
  const errors = status.summaries.reduce((n, s) => n + s.errors, 0);
  const withConcerns = view.list({}).filter((i) => i.concerns.length > 0).length;

  progress("a search with nothing behind (validateAllNow: walks and compares revisions)");
  cpu0 = cpuMs();
  loop.validateAllNow();
  const idleSweepMs = cpuMs() - cpu0;

  progress("a rule change (too-many-vcpus edited) and the scheduled search it starts");
  const edited = EXTRA_RULES.map((r) => (r.name === "too-many-vcpus" ? compileRule({ ...r, failsWhen: "double(instance.allocated_vcpus) >= params.max_vcpus" }) : compileRule(r)));
  const validatedBefore = loop.counters.validated;
  cpu0 = cpuMs();
  wall0 = performance.now();
  rules.setFile({ rules: edited, parameters: new Map(EXTRA_PARAMETERS) });
  await waitValidated(loop, validatedBefore + total, 600_000);
  const ruleSweep = { cpuMs: cpuMs() - cpu0, wallMs: performance.now() - wall0 };
  await sleep(200);
  status = loop.status();
  check(status.unvalidated === 0, `${status.unvalidated} instances unvalidated after the rule change`);
  loop.close();

  // ---- where an evaluation's time goes ----
  progress(`per-rule cost and the bind-once prototype (${microMs} ms CPU each)`);
  const hostFacts = new Map(view.hostNames().map((n) => [n, policyHostOf(view.host(n)!)]));
  const pick = prng(7);
  const all = view.list({});
  const samples: Sample[] = Array.from({ length: Math.min(5000, total) }, () => {
    const instance = all[Math.floor(pick() * all.length)]!;
    return { instance, host: hostFacts.get(instance.host)! };
  });
  const ruleList = rules.list();
  const params = rules.parameters;
  const perRule = perRuleCost(ruleList, samples, params, microMs / 4);
  const perInstanceUs = evaluateInstanceCost(ruleList, samples, params, microMs);
  const emptyUs = emptyRuleCost(samples, params, microMs / 2);
  const boundUs = boundEvaluatorCost(ruleList, samples, params, microMs);
  const foldUs = boundEvaluatorCost(ruleList, samples, params, microMs, true);
  const regexOnlyUs = withRegexCache(() => evaluateInstanceCost(ruleList, samples, params, microMs)) / ruleCount;
  const allThreeUs = withRegexCache(() => boundEvaluatorCost(ruleList, samples, params, microMs, true));
  const costOf = (name: string) => perRule.find((r) => r.rule === name)!.usPerEval;
  const naiveUs = perRule.reduce((a, r) => a + r.usPerEval, 0) / perRule.length;
  const hostRules = ruleList.filter(referencesHost).map((r) => r.name);

  // ---- (2) and (3): the change stream, rounds alternating policies off / on ----
  const watchSeen: Record<"off" | "on", number[]> = { off: [], on: [] };
  const watchApply: Record<"off" | "on", number[]> = { off: [], on: [] };
  const concernSeen: number[] = [];
  const concernApply: number[] = [];
  let concernsMissing = 0;

  const runRound = async (mode: "off" | "on", round: number) => {
    let l: ValidationLoop | undefined;
    if (mode === "on") {
      l = new ValidationLoop(view, rules, { logger, store, sweepIntervalMs: SWEEP_INTERVAL_MS });
      l.validateAllNow(); // what changed during an off round; the constructor's search then finds nothing behind
      // The constructor's first search (a full walk, as after every start) ends before the round.
      while (l.counters.sweeps === 0 || l.searching) await sleep(10);
      await sleep(50);
    }
    // A reader as the fleet watch is (aggregator/inventory/fleet-inventory-watch.ts): woken by
    // view.subscribe, reads view.changesAfter in a microtask.
    const pending = new Map<string, { planned: number; applied: number; changeSeen: boolean }>();
    const abort = new AbortController();
    let cursor = view.lastSeq;
    const pages = followSource(abort.signal, (notify) => view.subscribe(notify), () => {
      const changes = view.changesAfter(cursor);
      check(changes !== undefined, "the reader fell behind the view's ring");
      if (changes.length === 0) return undefined;
      cursor = changes[changes.length - 1]!.seq;
      return changes;
    });
    const reading = (async () => {
      for await (const page of pages) {
        const now = performance.now();
        for (const { item } of page) {
          const p = item.instance && pending.get(item.instance.id);
          if (!p) continue;
          if (!item.concernsOnly && !p.changeSeen) {
            p.changeSeen = true;
            watchSeen[mode].push(now - p.planned);
            watchApply[mode].push(now - p.applied);
            if (mode === "off") pending.delete(item.instance!.id);
          } else if (item.concernsOnly && mode === "on") {
            concernSeen.push(now - p.planned);
            concernApply.push(now - p.applied);
            pending.delete(item.instance!.id);
          }
        }
      }
    })();
    // The same stream in the off and on rounds of a pair: the same instances, the same kind of change.
    const r = prng(100 + round);
    const start = performance.now() + 50;
    for (let k = 0; k < changesPerRound; k++) {
      const planned = start + k * changeIntervalMs;
      const wait = planned - performance.now();
      if (wait > 0) await new Promise((res) => setTimeout(res, wait));
      let h: number;
      let i: number;
      let id: string;
      do {
        h = Math.floor(r() * HOSTS);
        i = Math.floor(r() * perHost);
        id = `vm-${h}-${i}`;
      } while (pending.has(id));
      const name = hostName(h);
      const prev = agent.get(`${name}/${id}`)!;
      const version = hostVersion.get(name)! + 1;
      hostVersion.set(name, version);
      const labels = { ...prev.labels };
      if ("owner" in labels) delete labels.owner;
      else labels.owner = `user${k}`;
      const next = create(InstanceSchema, { ...prev, labels, resourceVersion: BigInt(version) });
      agent.set(`${name}/${id}`, next);
      const applied = performance.now();
      pending.set(id, { planned: Math.min(planned, applied), applied, changeSeen: false }); // a timer may fire a hair early
      view.applyChanges(name, `inc-${h}`, version, [next], [], Date.now());
    }
    const deadline = performance.now() + 5000;
    while (pending.size > 0 && performance.now() < deadline) await sleep(10);
    if (mode === "on") concernsMissing += pending.size;
    else check(pending.size === 0, `${pending.size} changes never reached the reader`);
    abort.abort();
    await reading;
    l?.close();
  };
  for (let round = 0; round < rounds; round++) {
    for (const mode of ["off", "on"] as const) {
      progress(`round ${round + 1}/${rounds}, policies ${mode}: ${changesPerRound} changes, one every ${changeIntervalMs} ms`);
      await runRound(mode, round);
    }
  }

  // ---- what the store costs per validated instance (the loop flushes after every 5 ms slice) ----
  progress(`PolicyStore.saveResults of ${total} results in batches of 64`);
  const batch = new Map<string, ValidationResult>();
  let saveMs = 0;
  for (const i of view.list({})) {
    batch.set(`${i.host}\0${i.id}`, { instanceRevision: `x:${i.resourceVersion}`, hostRevision: "h", ruleHash: rules.hash, concerns: i.concerns, timeRules: NO_TIME_RULES });
    if (batch.size === 64) {
      const c = cpuMs();
      store.saveResults(batch);
      saveMs += cpuMs() - c;
      batch.clear();
    }
  }
  const saveUs = (saveMs * 1000) / (total - batch.size);

  // ---- figures ----
  const perEvalUs = (ruleSweep.cpuMs * 1000) / (total * ruleCount);
  const scaled = (ms: number) => (ms * 100_000) / total; // smoke: what 100,000 would take at this rate
  const p = (v: number[], q: number) => percentile(v, q);
  const ratio = p(watchSeen.on, 99) / p(watchSeen.off, 99);
  const ratioApply = p(watchApply.on, 99) / p(watchApply.off, 99);
  const topRules = [...perRule].sort((a, b) => b.usPerEval - a.usPerEval);
  printFigures(`policies (issue 14)${smoke ? " --smoke" : ""}`, [
    ["setup", `${HOSTS} hosts x ${perHost} instances (${total}), ${ruleCount} rules (${BUILTIN_RULES.length} built-in + ${EXTRA_RULES.length}), PolicyStore in a temp dir (as the daemon), sweep interval ${SWEEP_INTERVAL_MS / 1000} s`],
    ["first search, store empty", `${fmt(firstSweep.cpuMs, 0)} ms CPU, ${fmt(firstSweep.wallMs, 0)} ms wall: ${fmt((total / firstSweep.cpuMs) * 1000, 0)} instances/s of CPU`],
    ["search after a rule change", `${fmt(ruleSweep.cpuMs, 0)} ms CPU, ${fmt(ruleSweep.wallMs, 0)} ms wall: ${fmt((total / ruleSweep.cpuMs) * 1000, 0)} instances/s, ${fmt(perEvalUs, 2)} us CPU per rule evaluation (loop, store included)`],
    ["search, nothing behind", `${fmt(idleSweepMs, 1)} ms CPU (every ${SWEEP_INTERVAL_MS / 1000} s)`],
    ["found", `${withConcerns} of ${total} instances with concerns, ${errors} evaluation errors; failing per rule: ${[...failingPerRule].map(([n, f]) => `${n} ${f}`).join(", ")}`],
    [`target sweep <= ${TARGET_SWEEP_CPU_MS} ms CPU`, `${smoke ? `${fmt(scaled(ruleSweep.cpuMs), 0)} ms scaled to 100,000` : `${fmt(ruleSweep.cpuMs, 0)} ms`}: ${verdict(scaled(ruleSweep.cpuMs) <= TARGET_SWEEP_CPU_MS)}`],
    ["CompiledRule.evaluate, mean of rules", `${fmt(naiveUs, 2)} us per evaluation (${samples.length} samples); evaluateInstance ${fmt(perInstanceUs, 1)} us per instance (${fmt(perInstanceUs / ruleCount, 2)} us per rule)`],
    ["  costliest rules", topRules.slice(0, 5).map((r) => `${r.rule} ${fmt(r.usPerEval, 2)}`).join(", ")],
    ["  cheapest rules", topRules.slice(-3).map((r) => `${r.rule} ${fmt(r.usPerEval, 2)}`).join(", ")],
    ["  expression `false`", `${fmt(emptyUs, 2)} us per call (activation, try/catch: the floor of a planned call)`],
    ["prototype: bind once per instance", `${fmt(boundUs, 2)} us per evaluation (speed-up ${fmt(naiveUs / boundUs, 2)}x; same outcomes on every sample)`],
    ["prototype: + enum names folded", `${fmt(foldUs, 2)} us per evaluation (speed-up ${fmt(naiveUs / foldUs, 2)}x)`],
    ["regex cache alone (evaluateInstance)", `${fmt(regexOnlyUs, 2)} us per rule (RE2JS.compile cached by pattern)`],
    ["prototype: bind + fold + regex cache", `${fmt(allThreeUs, 2)} us per evaluation (speed-up ${fmt(naiveUs / allThreeUs, 2)}x): ${fmt((allThreeUs * total * ruleCount) / 1000, 0)} ms for ${total} x ${ruleCount} evaluations`],
    ["loop + store overhead", `${fmt((ruleSweep.cpuMs * 1000) / total - perInstanceUs, 1)} us per instance beyond evaluateInstance; PolicyStore.saveResults ${fmt(saveUs, 1)} us per result (batches of 64)`],
    ["rules reading host.*", `${hostRules.length} of ${ruleCount} (${hostRules.join(", ")}): a host-only change needs only these`],
    ["projected: only the changed rule", `${fmt((total * costOf("too-many-vcpus")) / 1000, 0)} ms of evaluation for ${total} instances x 1 rule (too-many-vcpus), plus the store`],
    ["projected: host change, host rules", `${fmt((perHost * hostRules.reduce((a, n) => a + costOf(n), 0)) / 1000, 1)} ms per host of ${perHost} instances (vs ${fmt((perHost * perInstanceUs) / 1000, 1)} ms with all rules)`],
    ["change -> concern visible", `p50 ${fmt(p(concernSeen, 50))} ms, p99 ${fmt(p(concernSeen, 99))} ms, max ${fmt(Math.max(...concernSeen))} ms over ${concernSeen.length} changes (${concernsMissing} not seen in 5 s); from applyChanges p99 ${fmt(p(concernApply, 99))} ms`],
    [`target concern p99 <= ${TARGET_CONCERN_P99_MS} ms`, verdict(concernsMissing === 0 && p(concernSeen, 99) <= TARGET_CONCERN_P99_MS)],
    ["change -> watcher, policies off", `p50 ${fmt(p(watchSeen.off, 50))} ms, p99 ${fmt(p(watchSeen.off, 99))} ms, max ${fmt(Math.max(...watchSeen.off))} ms over ${watchSeen.off.length} (from applyChanges: p99 ${fmt(p(watchApply.off, 99), 3)} ms)`],
    ["change -> watcher, policies on", `p50 ${fmt(p(watchSeen.on, 50))} ms, p99 ${fmt(p(watchSeen.on, 99))} ms, max ${fmt(Math.max(...watchSeen.on))} ms over ${watchSeen.on.length} (from applyChanges: p99 ${fmt(p(watchApply.on, 99), 3)} ms)`],
    [`target on/off p99 <= ${TARGET_WATCH_RATIO}x`, `${fmt(ratio)}x (from applyChanges ${fmt(ratioApply)}x): ${verdict(ratio <= TARGET_WATCH_RATIO)}`],
  ], [
    figure("sweep_rule_change_cpu_ms", ruleSweep.cpuMs, "ms", "lower"),
    figure("sweep_first_cpu_ms", firstSweep.cpuMs, "ms", "lower"),
    figure("sweep_us_per_rule_eval", perEvalUs, "us", "lower"),
    figure("sweep_instances_per_s", (total / ruleSweep.cpuMs) * 1000, "instances/s", "higher"),
    figure("sweep_nothing_behind_cpu_ms", idleSweepMs, "ms", "lower"),
    figure("evaluate_us_per_rule", naiveUs, "us", "lower"),
    figure("prototype_bound_us_per_rule", boundUs, "us", "lower"),
    figure("prototype_all_us_per_rule", allThreeUs, "us", "lower"),
    figure("store_us_per_result", saveUs, "us", "lower"),
    figure("concern_visible_ms_p50", p(concernSeen, 50), "ms", "lower"),
    figure("concern_visible_ms_p99", p(concernSeen, 99), "ms", "lower"),
    figure("watch_off_ms_p99", p(watchSeen.off, 99), "ms", "lower"),
    figure("watch_on_ms_p99", p(watchSeen.on, 99), "ms", "lower"),
    figure("watch_on_off_ratio_p99", ratio, "x", "lower"),
  ]);
});
