import type { Meter } from "@opentelemetry/api";
import type { Logger } from "../../lib/rpc/logger.js";
import { promLabel, type DaemonMetrics } from "../../lib/otel-metrics.js";
import type { InstanceStats } from "../../gen/fleetlet/agent/v1/metrics_pb.js";

interface Series {
  name: string;
  type: "counter" | "gauge";
  unit: string;
  help: string;
  value: (s: InstanceStats) => number | undefined;
}

/** metrics.md's per-instance table, with the names Prometheus shows. */
const SERIES: Series[] = [
  { name: "fleetlet_vm_cpu_seconds_total", type: "counter", unit: "seconds", help: "CPU time (utime + stime) of the instance's process", value: (s) => s.cpuSeconds },
  { name: "fleetlet_vm_allocated_vcpus", type: "gauge", unit: "", help: "vCPUs allocated to the instance", value: (s) => s.allocatedVcpus },
  { name: "fleetlet_vm_memory_rss_bytes", type: "gauge", unit: "bytes", help: "Resident set size of the instance's process", value: (s) => num(s.memoryRssBytes) },
  { name: "fleetlet_vm_memory_vms_bytes", type: "gauge", unit: "bytes", help: "Virtual memory size of the instance's process", value: (s) => num(s.memoryVmsBytes) },
  { name: "fleetlet_vm_allocated_memory_bytes", type: "gauge", unit: "bytes", help: "Memory allocated to the instance", value: (s) => Number(s.allocatedMemoryBytes) },
  { name: "fleetlet_vm_network_rx_bytes_total", type: "counter", unit: "bytes", help: "Bytes the instance received (host-side interface tx)", value: (s) => num(s.netRxBytes) },
  { name: "fleetlet_vm_network_tx_bytes_total", type: "counter", unit: "bytes", help: "Bytes the instance sent (host-side interface rx)", value: (s) => num(s.netTxBytes) },
];

function num(v: bigint | undefined): number | undefined {
  return v === undefined ? undefined : Number(v);
}

/**
 * The fleetlet_vm_* series of metrics.md, from one sweep per scrape.
 *
 * Per-instance series are written fresh at each scrape (see ScrapeExposition for why they do not
 * go through OpenTelemetry instruments): a deregistered instance disappears at once, and a sweep
 * that fails exports no per-instance series for that scrape rather than stale or zero values.
 * The two aggregate instruments are OpenTelemetry instruments.
 *
 * Label budget: per-instance series multiply a scraper's storage, so when more instances are
 * observed than `labelBudget`, fleetlet_vm_metrics_label_budget_exceeded_total rises once per
 * transition into over-budget and a warning is logged once; the series keep being exported
 * (dropping them silently would hide instances). No ratio gauges: the ratios are in the RPC
 * answers.
 */
export function registerVmInstruments(
  metrics: Pick<DaemonMetrics, "meter" | "setScrapeExposition">,
  sweep: () => InstanceStats[],
  labelBudget: number,
  logger: Logger,
): { overBudget(): boolean } {
  const meter: Meter = metrics.meter;
  const observed = meter.createObservableGauge("fleetlet_vm_metrics_instances_observed", { unit: "{instance}", description: "Instances measured in the last scrape" });
  const exceeded = meter.createCounter("fleetlet_vm_metrics_label_budget_exceeded", { description: "Transitions into more observed instances than --metrics-label-budget" });
  exceeded.add(0);
  let over = false;
  let lastObserved: number | undefined;
  observed.addCallback((result) => {
    if (lastObserved !== undefined) result.observe(lastObserved);
  });

  metrics.setScrapeExposition(() => {
    let all: InstanceStats[];
    try {
      all = sweep();
    } catch (e) {
      logger.error({ err: e }, "metrics collection failed; no per-instance series this scrape");
      lastObserved = undefined;
      return "";
    }
    lastObserved = all.length;
    const nowOver = all.length > labelBudget;
    if (nowOver && !over) {
      exceeded.add(1);
      logger.warn({ observed: all.length, budget: labelBudget }, "observed instances exceed the metrics label budget");
    }
    over = nowOver;
    const out: string[] = [];
    for (const series of SERIES) {
      out.push(`# HELP ${series.name} ${series.help}`, `# TYPE ${series.name} ${series.type}`);
      if (series.unit) out.push(`# UNIT ${series.name} ${series.unit}`);
      for (const s of all) {
        const v = series.value(s);
        if (v === undefined) continue;
        out.push(`${series.name}{instance_id="${promLabel(s.instanceId)}",instance_name="${promLabel(s.instanceName)}"} ${v}`);
      }
    }
    return `${out.join("\n")}\n`;
  });
  return { overBudget: () => over };
}
