import type { Meter } from "@opentelemetry/api";
import type { ConntrackProcessSource } from "../kernel/conntrack-process-source.js";
import { CONTROLLER_OPERATIONS, type Phase, type StandbyController } from "./standby-controller.js";

const PHASES: Phase[] = ["UNSUPPORTED", "DISABLED", "INELIGIBLE", "ACTIVE", "IDLE_COUNTDOWN", "READY_FOR_STANDBY", "STANDBY_REQUESTED", "IN_STANDBY", "WAKING", "ERROR"];

/**
 * The standby instruments of standby.md "Export": conntrack events by type, overflows and
 * resyncs, standby attempts and wakes by result, wake latency, controller errors by operation
 * and instances by phase (every operation and phase, zeros included, so a dashboard never has to
 * guess), active connections, standby in flight.
 */
export function registerStandbyInstruments(
  meter: Meter,
  controller: StandbyController,
  socket: ConntrackProcessSource | undefined,
  instanceIds: () => string[],
): { recordWake(ms: number, ok: boolean): void } {
  const events = meter.createObservableCounter("fleetlet_standby_conntrack_events", { description: "Conntrack events received, by type" });
  const overflows = meter.createObservableCounter("fleetlet_standby_conntrack_overflows", { description: "ENOBUFS on the conntrack event socket (events lost; a resync follows)" });
  const resyncs = meter.createObservableCounter("fleetlet_standby_resyncs", { description: "Full re-reads of the conntrack table after an overflow or stream error" });
  const attempts = meter.createObservableCounter("fleetlet_standby_attempts", { description: "Standby requests run, by result" });
  const wakes = meter.createObservableCounter("fleetlet_standby_wakes", { description: "Wakes, by result" });
  const errors = meter.createObservableCounter("fleetlet_standby_controller_errors", { description: "Standby controller failures, by operation (dumps, resyncs, drivers, checks)" });
  const phases = meter.createObservableGauge("fleetlet_standby_instances", { unit: "{instance}", description: "Instances by standby phase" });
  const active = meter.createObservableGauge("fleetlet_standby_active_connections", { unit: "{connection}", description: "Active inbound connections of tracked instances" });
  const inFlight = meter.createObservableGauge("fleetlet_standby_in_flight", { unit: "{request}", description: "Standby requests queued or running" });
  const wakeLatency = meter.createHistogram("fleetlet_standby_wake_duration", {
    unit: "s",
    description: "From the wake trigger to the instance running again",
    advice: { explicitBucketBoundaries: [0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2.5, 5, 10] },
  });
  meter.addBatchObservableCallback(
    (r) => {
      if (socket) {
        r.observe(events, socket.counters.events.new, { type: "new" });
        r.observe(events, socket.counters.events.destroy, { type: "destroy" });
        r.observe(overflows, socket.counters.overflows);
      }
      r.observe(resyncs, controller.counters.resyncs);
      r.observe(attempts, controller.counters.standby.ok, { result: "ok" });
      r.observe(attempts, controller.counters.standby.failed, { result: "failed" });
      r.observe(wakes, controller.counters.wake.ok, { result: "ok" });
      r.observe(wakes, controller.counters.wake.failed, { result: "failed" });
      for (const operation of CONTROLLER_OPERATIONS) r.observe(errors, controller.counters.errors[operation], { operation });
      const counts = new Map<Phase, number>(PHASES.map((p) => [p, 0]));
      let connections = 0;
      let requested = 0;
      for (const id of instanceIds()) {
        const d = controller.describe(id);
        counts.set(d.status, (counts.get(d.status) ?? 0) + 1);
        connections += d.activeInboundCount;
        if (d.status === "STANDBY_REQUESTED") requested++;
      }
      for (const [phase, n] of counts) r.observe(phases, n, { phase });
      r.observe(active, connections);
      r.observe(inFlight, requested);
    },
    [events, overflows, resyncs, attempts, wakes, errors, phases, active, inFlight],
  );
  return { recordWake: (ms, ok) => wakeLatency.record(ms / 1000, { result: ok ? "ok" : "failed" }) };
}
