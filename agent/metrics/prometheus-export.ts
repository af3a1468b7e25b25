import type { Attributes, Meter } from "@opentelemetry/api";
import type { Logger } from "../../lib/rpc/logger.js";
import type { InstanceStats } from "../../gen/fleetlet/agent/v1/metrics_pb.js";

/**
 * The fleetlet_vm_* instruments of metrics.md, observed from one sweep per scrape.
 *
 * Label budget: per-instance series multiply a scraper's storage, so when more instances are
 * observed than `labelBudget`, fleetlet_vm_metrics_label_budget_exceeded_total rises once per
 * transition into over-budget and a warning is logged once; the series keep being exported
 * (dropping them silently would hide instances). A sweep that fails exports no per-instance
 * series for that scrape rather than partial or zero values. No ratio gauges: the ratios are in
 * the RPC answers.
 */
export function registerVmInstruments(
  meter: Meter,
  sweep: () => InstanceStats[],
  labelBudget: number,
  logger: Logger,
): { overBudget(): boolean } {
  const cpu = meter.createObservableCounter("fleetlet_vm_cpu_seconds", { unit: "s", description: "CPU time (utime + stime) of the instance's process" });
  const vcpus = meter.createObservableGauge("fleetlet_vm_allocated_vcpus", { unit: "{vcpu}", description: "vCPUs allocated to the instance" });
  const rss = meter.createObservableGauge("fleetlet_vm_memory_rss_bytes", { unit: "By", description: "Resident set size of the instance's process" });
  const vms = meter.createObservableGauge("fleetlet_vm_memory_vms_bytes", { unit: "By", description: "Virtual memory size of the instance's process" });
  const allocatedMemory = meter.createObservableGauge("fleetlet_vm_allocated_memory_bytes", { unit: "By", description: "Memory allocated to the instance" });
  const rx = meter.createObservableCounter("fleetlet_vm_network_rx_bytes", { unit: "By", description: "Bytes the instance received (host-side interface tx)" });
  const tx = meter.createObservableCounter("fleetlet_vm_network_tx_bytes", { unit: "By", description: "Bytes the instance sent (host-side interface rx)" });
  const observed = meter.createObservableGauge("fleetlet_vm_metrics_instances_observed", { unit: "{instance}", description: "Instances measured in the last scrape" });
  const exceeded = meter.createCounter("fleetlet_vm_metrics_label_budget_exceeded", { description: "Transitions into more observed instances than --metrics-label-budget" });
  exceeded.add(0);
  let over = false;

  meter.addBatchObservableCallback(
    (result) => {
      let all: InstanceStats[];
      try {
        all = sweep();
      } catch (e) {
        logger.error({ err: e }, "metrics collection failed; no per-instance series this scrape");
        return;
      }
      result.observe(observed, all.length);
      const nowOver = all.length > labelBudget;
      if (nowOver && !over) {
        exceeded.add(1);
        logger.warn({ observed: all.length, budget: labelBudget }, "observed instances exceed the metrics label budget");
      }
      over = nowOver;
      for (const s of all) {
        const attrs: Attributes = { instance_id: s.instanceId, instance_name: s.instanceName };
        if (s.cpuSeconds !== undefined) result.observe(cpu, s.cpuSeconds, attrs);
        result.observe(vcpus, s.allocatedVcpus, attrs);
        if (s.memoryRssBytes !== undefined) result.observe(rss, Number(s.memoryRssBytes), attrs);
        if (s.memoryVmsBytes !== undefined) result.observe(vms, Number(s.memoryVmsBytes), attrs);
        result.observe(allocatedMemory, Number(s.allocatedMemoryBytes), attrs);
        if (s.netRxBytes !== undefined) result.observe(rx, Number(s.netRxBytes), attrs);
        if (s.netTxBytes !== undefined) result.observe(tx, Number(s.netTxBytes), attrs);
      }
    },
    [cpu, vcpus, rss, vms, allocatedMemory, rx, tx, observed],
  );
  return { overBudget: () => over };
}
