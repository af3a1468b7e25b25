import { afterAll, beforeAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import net from "node:net";
import { create } from "@bufbuild/protobuf";
import { InstanceStatsSchema, type InstanceStats } from "../../../gen/fleetlet/agent/v1/metrics_pb.js";
import { registerVmInstruments } from "../../../agent/metrics/prometheus-export.js";
import { startDaemonMetrics, type DaemonMetrics } from "../../../lib/otel-metrics.js";
import { parseHostPort } from "../../../lib/listen-address.js";
import { createLogger } from "../../../lib/rpc/logger.js";

let metrics: DaemonMetrics;
let current: InstanceStats[] | Error = [];
const warnings: unknown[] = [];

function freePort(): Promise<number> {
  return new Promise((res) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => res(port));
    });
  });
}

const stats = (n: number) =>
  Array.from({ length: n }, (_, i) =>
    create(InstanceStatsSchema, {
      instanceId: `vm-${i}`,
      instanceName: `name ${i}`,
      cpuSeconds: 1.5 + i,
      memoryRssBytes: 1000n,
      memoryVmsBytes: 2000n,
      netRxBytes: 10n,
      netTxBytes: 20n,
      allocatedVcpus: 2,
      allocatedMemoryBytes: 4096n,
    }),
  );

async function scrape(): Promise<string> {
  return (await fetch(metrics.url!)).text();
}

function value(text: string, name: string, labels = ""): number | undefined {
  const line = text.split("\n").find((l) => l.startsWith(`${name}{`) && l.includes(labels));
  return line === undefined ? undefined : Number(line.split(" ").pop());
}

beforeAll(async () => {
  metrics = await startDaemonMetrics("test", parseHostPort(`127.0.0.1:${await freePort()}`));
  const logger = createLogger("test", "silent");
  logger.warn = ((o: unknown) => void warnings.push(o)) as typeof logger.warn;
  registerVmInstruments(metrics, () => {
    if (current instanceof Error) throw current;
    return current;
  }, 2, logger);
});

afterAll(() => metrics.shutdown());

describe("Prometheus export", () => {
  it("exports the fleetlet_vm_* instruments under metrics.md's names, in the instance view", async () => {
    current = stats(1);
    const text = await scrape();
    const l = 'instance_id="vm-0",instance_name="name 0"';
    assert.equal(value(text, "fleetlet_vm_cpu_seconds_total", l), 1.5);
    assert.equal(value(text, "fleetlet_vm_allocated_vcpus", l), 2);
    assert.equal(value(text, "fleetlet_vm_memory_rss_bytes", l), 1000);
    assert.equal(value(text, "fleetlet_vm_memory_vms_bytes", l), 2000);
    assert.equal(value(text, "fleetlet_vm_allocated_memory_bytes", l), 4096);
    assert.equal(value(text, "fleetlet_vm_network_rx_bytes_total", l), 10);
    assert.equal(value(text, "fleetlet_vm_network_tx_bytes_total", l), 20);
    assert.equal(value(text, "fleetlet_vm_metrics_instances_observed"), 1);
    assert.equal(value(text, "fleetlet_vm_metrics_label_budget_exceeded_total"), 0);
    assert.match(text, /# TYPE fleetlet_vm_cpu_seconds_total counter/);
    assert.ok(value(text, "fleetlet_event_loop_delay_p99_seconds") !== undefined);
    assert.ok(!text.includes("utilization"), "no ratio gauges");
  });
  it("label budget: the counter rises once per transition into over-budget, series stay", async () => {
    current = stats(3);
    let text = await scrape();
    assert.equal(value(text, "fleetlet_vm_metrics_label_budget_exceeded_total"), 1);
    assert.equal(value(text, "fleetlet_vm_metrics_instances_observed"), 3);
    assert.ok(value(text, "fleetlet_vm_cpu_seconds_total", 'instance_id="vm-2"') !== undefined, "per-instance series kept");
    text = await scrape();
    assert.equal(value(text, "fleetlet_vm_metrics_label_budget_exceeded_total"), 1, "still over: no new transition");
    assert.equal(warnings.length, 1, "warned once");
    current = stats(1);
    await scrape();
    current = stats(5);
    text = await scrape();
    assert.equal(value(text, "fleetlet_vm_metrics_label_budget_exceeded_total"), 2);
  });
  it("a deregistered instance's series disappear at the next scrape", async () => {
    current = stats(2);
    assert.ok(value(await scrape(), "fleetlet_vm_cpu_seconds_total", 'instance_id="vm-1"') !== undefined);
    current = stats(1);
    assert.equal(value(await scrape(), "fleetlet_vm_cpu_seconds_total", 'instance_id="vm-1"'), undefined);
  });
  it("escapes label values", async () => {
    current = [create(InstanceStatsSchema, { instanceId: "q", instanceName: 'a"b\\c', allocatedVcpus: 1 })];
    assert.match(await scrape(), /fleetlet_vm_allocated_vcpus\{instance_id="q",instance_name="a\\"b\\\\c"\} 1/);
  });
  it("a failed collection exports no per-instance series for that scrape", async () => {
    current = new Error("boom");
    const text = await scrape();
    assert.equal(value(text, "fleetlet_vm_cpu_seconds_total", 'instance_id="vm-0"'), undefined);
    assert.equal(value(text, "fleetlet_vm_memory_rss_bytes", 'instance_id="vm-0"'), undefined);
    current = stats(1);
    assert.equal(value(await scrape(), "fleetlet_vm_cpu_seconds_total", 'instance_id="vm-0"'), 1.5, "back next scrape");
  });
});
