import type { Meter } from "@opentelemetry/api";
import { PolicySeverity } from "../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import type { RuleSet } from "./rule-set.js";
import type { LoopStatus, ValidationLoop } from "./validation-loop.js";

/** How long one status walk is reused: a scrape and an OTLP export close together walk once. */
const STATUS_REUSE_MS = 1000;

/**
 * Policy gauges (policies.md "What users see"): instances failing each rule (by severity),
 * those not validated yet, the validation lag, the rule set's version, and the loop's counters.
 * Labels are rule names and severities only: bounded by the rule set, never per instance.
 */
export function registerPolicyInstruments(meter: Meter, loop: ValidationLoop, rules: RuleSet): void {
  let cached: { at: number; status: LoopStatus } | undefined;
  const status = () => {
    const now = performance.now();
    if (!cached || now - cached.at > STATUS_REUSE_MS) cached = { at: now, status: loop.status() };
    return cached.status;
  };
  const failing = meter.createObservableGauge("fleetlet_policy_failing_instances", { unit: "{instance}", description: "Instances failing a policy rule (its concern is on them), by rule and severity" });
  failing.addCallback((result) => {
    for (const s of status().summaries) result.observe(s.failing, { rule: s.rule, severity: (PolicySeverity[s.severity] ?? "UNSPECIFIED").toLowerCase() });
  });
  const errors = meter.createObservableGauge("fleetlet_policy_evaluation_error_instances", { unit: "{instance}", description: "Instances on which a rule could not be evaluated, by rule" });
  errors.addCallback((result) => {
    for (const s of status().summaries) result.observe(s.errors, { rule: s.rule });
  });
  const unvalidated = meter.createObservableGauge("fleetlet_policy_unvalidated_instances", { unit: "{instance}", description: "Instances not validated against the current rules, host facts and their own revision yet" });
  unvalidated.addCallback((result) => result.observe(status().unvalidated));
  const lag = meter.createObservableGauge("fleetlet_policy_validation_lag_seconds", { unit: "s", description: "Age of the oldest change not validated yet (0: everything current)" });
  lag.addCallback((result) => result.observe(status().lagMs / 1000));
  const version = meter.createObservableGauge("fleetlet_policy_rule_set_version", { description: "Version of the rule set in force (bumped by every change)" });
  version.addCallback((result) => result.observe(rules.version));
  const counters = meter.createObservableCounter("fleetlet_policy_validations", { unit: "{validation}", description: "Instance validations by outcome: done, failed (the evaluator threw), skipped (real-time queue full)" });
  counters.addCallback((result) => {
    result.observe(loop.counters.validated, { outcome: "done" });
    result.observe(loop.counters.failed, { outcome: "failed" });
    result.observe(loop.counters.skipped, { outcome: "skipped" });
  });
}
