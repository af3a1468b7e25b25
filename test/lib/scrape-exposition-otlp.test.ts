import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { DataPointType } from "@opentelemetry/sdk-metrics";
import { expositionToScopeMetrics } from "../../lib/scrape-exposition-otlp.js";

const START: [number, number] = [1000, 0];
const END: [number, number] = [1060, 500];

describe("the scrape exposition as OpenTelemetry metric data", () => {
  it("turns counters into cumulative monotonic sums and gauges into gauges, with labels unescaped", () => {
    const text = [
      "# HELP fleetlet_vm_cpu_seconds_total CPU time",
      "# TYPE fleetlet_vm_cpu_seconds_total counter",
      "# UNIT fleetlet_vm_cpu_seconds_total seconds",
      'fleetlet_vm_cpu_seconds_total{instance_id="a",instance_name="say \\"hi\\", \\\\ back\\nslash"} 1.25',
      'fleetlet_vm_cpu_seconds_total{instance_id="b",instance_name=""} 0',
      "# HELP fleetlet_vm_allocated_vcpus vCPUs",
      "# TYPE fleetlet_vm_allocated_vcpus gauge",
      'fleetlet_vm_allocated_vcpus{instance_id="a",instance_name="x"} 4',
      "# HELP fleetlet_vm_memory_rss_bytes RSS",
      "# TYPE fleetlet_vm_memory_rss_bytes gauge",
      "# UNIT fleetlet_vm_memory_rss_bytes bytes",
      "",
    ].join("\n");
    const scope = expositionToScopeMetrics(text, START, END);
    assert.equal(scope.scope.name, "", "unnamed: no otel_scope_name label once back in Prometheus");
    assert.deepEqual(
      scope.metrics.map((m) => [m.descriptor.name, m.descriptor.unit, m.dataPointType]),
      [
        ["fleetlet_vm_cpu_seconds_total", "s", DataPointType.SUM],
        ["fleetlet_vm_allocated_vcpus", "", DataPointType.GAUGE],
      ],
      "a family without samples is left out",
    );
    const cpu = scope.metrics[0]!;
    assert.ok(cpu.dataPointType === DataPointType.SUM && cpu.isMonotonic);
    assert.equal(cpu.descriptor.description, "CPU time");
    assert.deepEqual(
      cpu.dataPoints.map((p) => [p.attributes, p.value, p.startTime, p.endTime]),
      [
        [{ instance_id: "a", instance_name: 'say "hi", \\ back\nslash' }, 1.25, START, END],
        [{ instance_id: "b", instance_name: "" }, 0, START, END],
      ],
    );
  });

  it("refuses what it cannot carry, naming the line", () => {
    assert.throws(() => expositionToScopeMetrics("# TYPE h histogram\n", START, END), /line 1: type "histogram" is not exported over OTLP/);
    assert.throws(() => expositionToScopeMetrics("orphan 1\n", START, END), /line 1: orphan has no # TYPE before its samples/);
    assert.throws(() => expositionToScopeMetrics('# TYPE g gauge\ng{a="unterminated} 1\n', START, END), /line 2: not a sample/);
    assert.throws(() => expositionToScopeMetrics("# TYPE g gauge\ng{} one\n", START, END), /line 2: not a sample/);
  });

  it("reads label-less samples and the special values", () => {
    const scope = expositionToScopeMetrics("# TYPE g gauge\ng 7\ng{k=\"v\"} +Inf\n", START, END);
    assert.deepEqual(
      scope.metrics[0]!.dataPoints.map((p) => [p.attributes, p.value]),
      [
        [{}, 7],
        [{ k: "v" }, Number.POSITIVE_INFINITY],
      ],
    );
  });
});
