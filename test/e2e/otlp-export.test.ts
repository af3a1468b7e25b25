import { afterAll, beforeAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { startDaemon, type DaemonProcess } from "../helpers/daemon-process.js";
import { agentClients, fleetClient } from "../helpers/clients.js";
import { tempDir } from "../helpers/temp-dir.js";
import {
  otlpJsonSpans,
  otlpJsonToSeries,
  otlpProtobufMetricNames,
  prometheusSeries,
  seriesKey,
  startOtlpReceiver,
  type OtlpReceiver,
} from "../helpers/otlp-receiver.js";

// OTLP export configured through the standard OTEL_ environment, received by an OTLP/HTTP
// receiver of the test's own: the agent's metrics over OTLP/JSON compared series by series with
// a Prometheus scrape of the same agent taken as the export arrives; the aggregator's fan-out as
// a trace (one span per host call under the fan-out's) with a SIGSTOP'd host; and the default
// protocol, protobuf.

/** The Prometheus endpoint an agent or aggregator logged when it started serving. */
function metricsUrl(daemon: DaemonProcess): string {
  const line = daemon.lines.find((l) => l.includes('serving"'));
  const url = line ? (JSON.parse(line) as { metrics?: string }).metrics : undefined;
  assert.ok(url, `no metrics URL in ${line}`);
  return url;
}

/** Series whose value changes at every collection: compared by presence, not value. */
const MOVING = /^(fleetlet_event_loop_delay_|process_(cpu|resident|open_fds)|nodejs_heap_)/;

describe("OTLP metrics export next to the Prometheus endpoint", () => {
  let state: ReturnType<typeof tempDir>;
  let receiver: OtlpReceiver;
  let agent: DaemonProcess;
  let sleeper: ChildProcess;

  beforeAll(async () => {
    state = tempDir("otlp-agent");
    receiver = await startOtlpReceiver();
    // An idle process: its CPU time and memory do not move between the export and the scrape.
    sleeper = spawn("sleep", ["600"], { stdio: "ignore" });
    agent = await startDaemon(["agent", "--listen", "127.0.0.1:0", "--state-dir", state.path, "--metrics-listen", "127.0.0.1:0"], 15_000, {
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
      OTEL_EXPORTER_OTLP_PROTOCOL: "http/json",
      OTEL_METRIC_EXPORT_INTERVAL: "400",
    });
    const c = agentClients(agent.address);
    await c.inventory.registerInstance({ instance: { id: "vm-a", name: "alpha \"quoted\"", pid: sleeper.pid!, allocatedVcpus: 2, allocatedMemoryBytes: 1n << 30n } });
    await c.inventory.registerInstance({ instance: { id: "vm-b", name: "beta", pid: sleeper.pid!, allocatedVcpus: 1 } });
    c.close();
  });

  afterAll(async () => {
    await agent?.stop();
    sleeper?.kill("SIGKILL");
    await receiver?.close();
    state?.remove();
  });

  it("exports the same series with the same values as a scrape taken as the export arrives", async () => {
    const url = metricsUrl(agent);
    const registeredAt = performance.now();
    // An export collected after both registrations; the scrape is taken before the receiver answers.
    const { request, result: scrape } = await receiver.next(
      (r) => r.path === "/v1/metrics" && r.receivedAt > registeredAt + 450,
      10_000,
      async () => (await fetch(url)).text(),
    );
    assert.equal(request.contentType, "application/json");
    const { series: otlp, metrics } = otlpJsonToSeries(request.body);
    const prom = prometheusSeries(scrape);
    prom.delete(seriesKey("target_info", { service_name: "fleetlet-agent" }));

    // Same series (names and labels), both ways.
    const missing = [...prom.keys()].filter((k) => !otlp.has(k));
    const extra = [...otlp.keys()].filter((k) => !prom.has(k));
    assert.deepEqual(missing, [], "series on the endpoint but not in the OTLP export");
    assert.deepEqual(extra, [], "series in the OTLP export but not on the endpoint");
    // Same values, except the event-loop delay (reset by each collection).
    const differing = [...prom].filter(([k, v]) => !MOVING.test(k) && otlp.get(k) !== v).map(([k, v]) => `${k}: scrape ${v}, otlp ${otlp.get(k)}`);
    assert.deepEqual(differing, []);
    // Every kind of series is in the comparison: per-instance, OpenTelemetry gauges, counters, histograms.
    const names = new Set([...prom.keys()].map((k) => k.slice(0, k.indexOf("{"))));
    for (const name of ["fleetlet_vm_cpu_seconds_total", "fleetlet_standby_instances", "fleetlet_metering_entries_appended_total", "fleetlet_registry_commit_duration_seconds_bucket"]) {
      assert.ok(names.has(name), `${name} in the comparison`);
    }

    // The per-instance series, with their labels (escaped on the endpoint, raw in OTLP).
    const alpha = { instance_id: "vm-a", instance_name: 'alpha "quoted"' };
    assert.equal(otlp.get(seriesKey("fleetlet_vm_allocated_vcpus", alpha)), 2);
    assert.equal(otlp.get(seriesKey("fleetlet_vm_allocated_memory_bytes", alpha)), 2 ** 30);
    assert.equal(otlp.get(seriesKey("fleetlet_vm_allocated_vcpus", { instance_id: "vm-b", instance_name: "beta" })), 1);
    assert.ok((otlp.get(seriesKey("fleetlet_vm_memory_rss_bytes", alpha)) ?? 0) > 0, "the sleeper's RSS");
    assert.ok(otlp.has(seriesKey("fleetlet_vm_cpu_seconds_total", alpha)));
    assert.equal(otlp.get(seriesKey("fleetlet_vm_metrics_instances_observed", { otel_scope_name: "fleetlet" })), 2);
    const cpu = metrics.get("fleetlet_vm_cpu_seconds_total");
    assert.equal(cpu?.sum?.isMonotonic, true, "a counter is a monotonic sum");
    assert.equal(cpu?.sum?.aggregationTemporality, 2, "cumulative");
    assert.equal(cpu?.unit, "s");
    assert.equal(metrics.get("fleetlet_vm_memory_rss_bytes")?.unit, "By");
    assert.ok(metrics.get("fleetlet_vm_memory_rss_bytes")?.gauge, "a gauge is a gauge");
  });

  it("drops a deregistered instance's series from the next export, as from the next scrape", async () => {
    const c = agentClients(agent.address);
    await c.inventory.deregisterInstance({ instanceId: "vm-b" });
    c.close();
    const removedAt = performance.now();
    const { request } = await receiver.next((r) => r.path === "/v1/metrics" && r.receivedAt > removedAt + 450, 10_000);
    const { series } = otlpJsonToSeries(request.body);
    const instances = new Set([...series.keys()].filter((k) => k.startsWith("fleetlet_vm_allocated_vcpus")));
    assert.deepEqual([...instances], [seriesKey("fleetlet_vm_allocated_vcpus", { instance_id: "vm-a", instance_name: 'alpha "quoted"' })]);
  });
});

describe("fan-out traces with a hung host", () => {
  let dirs: ReturnType<typeof tempDir>[] = [];
  let receiver: OtlpReceiver;
  let agents: DaemonProcess[] = [];
  let aggregator: DaemonProcess;

  beforeAll(async () => {
    // Made here, not when the file is collected, so a filtered run (-t) leaves nothing behind.
    dirs = ["otlp-a", "otlp-b", "otlp-c", "otlp-agg"].map((name) => tempDir(name));
    receiver = await startOtlpReceiver();
    agents = await Promise.all(
      ["a", "b", "c"].map((_, i) => startDaemon(["agent", "--listen", "127.0.0.1:0", "--state-dir", dirs[i]!.path, "--metrics-listen", "off"])),
    );
    const hosts = agents.map((a, i) => `host-${"abc"[i]}=${a.address}`).join(",");
    aggregator = await startDaemon(
      ["aggregator", "--listen", "127.0.0.1:0", "--state-dir", dirs[3]!.path, "--metrics-listen", "127.0.0.1:0", "--hosts", hosts],
      15_000,
      {
        // Traces in JSON (decoded below), metrics in the default protocol, protobuf.
        OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
        OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: "http/json",
        OTEL_BSP_SCHEDULE_DELAY: "100",
        OTEL_METRIC_EXPORT_INTERVAL: "300",
      },
    );
  });

  afterAll(async () => {
    for (const a of agents) a.child.kill("SIGCONT");
    await Promise.all([...agents.map((a) => a.stop()), aggregator?.stop()]);
    await receiver?.close();
    for (const d of dirs) d.remove();
  });

  it("has one span per host call under the fan-out's span, the hung host's lasting its deadline with an error", async () => {
    agents[1]!.child.kill("SIGSTOP");
    const { fleet, close } = fleetClient(aggregator.address);
    const res = await fleet.listInstanceStats({ perHostTimeout: { seconds: 0n, nanos: 500e6 } });
    close();
    assert.deepEqual(
      res.hostResults.map((h) => [h.host, h.code]),
      [["host-a", "OK"], ["host-b", "DEADLINE_EXCEEDED"], ["host-c", "OK"]],
    );
    const find = () => otlpJsonSpans(receiver.requests.filter((r) => r.path === "/v1/traces").map((r) => r.body));
    await receiver.next((r) => r.path === "/v1/traces" && find().some((s) => s.name === "FleetService.ListInstanceStats"), 10_000);
    const spans = find();
    const parent = spans.find((s) => s.name === "FleetService.ListInstanceStats")!;
    assert.equal(parent.serviceName, "fleetlet-aggregator");
    assert.equal(parent.parentSpanId, "", "the fan-out's span is a root here");
    assert.equal(parent.attributes["fleetlet.fan_out.hosts"], "3");
    assert.equal(parent.attributes["fleetlet.fan_out.failed_hosts"], "1");
    const children = spans.filter((s) => s.parentSpanId === parent.spanId);
    assert.ok(children.every((s) => s.traceId === parent.traceId));
    const byHost = Object.fromEntries(children.map((s) => [s.attributes["fleetlet.host"], s]));
    assert.deepEqual(Object.keys(byHost).sort(), ["host-a", "host-b", "host-c"]);
    assert.equal(children.length, 3);
    const slow = byHost["host-b"]!;
    assert.equal(slow.statusCode, 2, "ERROR");
    assert.match(slow.statusMessage, /^DEADLINE_EXCEEDED: no answer within 500 ms/);
    assert.equal(slow.attributes["fleetlet.code"], "DEADLINE_EXCEEDED");
    assert.equal(slow.attributes["server.address"], agents[1]!.address);
    assert.ok(slow.durationMs >= 495 && slow.durationMs < 800, `the hung host's span lasted ${slow.durationMs} ms`);
    for (const host of ["host-a", "host-c"]) {
      assert.equal(byHost[host]!.statusCode, 0, `${host} has no error`);
      assert.equal(byHost[host]!.attributes["fleetlet.code"], "OK");
      assert.ok(byHost[host]!.durationMs < slow.durationMs, `${host} answered before the hung host's deadline`);
    }
    assert.ok(parent.durationMs >= slow.durationMs, "the fan-out lasts as long as its slowest host");
  });

  it("exports the aggregator's metrics in protobuf by default, with the endpoint's names", async () => {
    const url = metricsUrl(aggregator);
    const startedAt = performance.now();
    const { request, result: scrape } = await receiver.next(
      (r) => r.path === "/v1/metrics" && r.receivedAt > startedAt,
      10_000,
      async () => (await fetch(url)).text(),
    );
    assert.equal(request.contentType, "application/x-protobuf");
    const prometheusNames = new Set(
      [...prometheusSeries(scrape).keys()].map((k) => k.slice(0, k.indexOf("{"))).filter((n) => n !== "target_info"),
    );
    // A counter's OTLP name lacks the _total the endpoint adds; a histogram's has no _count/_sum/_bucket.
    const otlpNames = new Set(otlpProtobufMetricNames(request.body));
    const unmatched = [...prometheusNames].filter(
      (n) => !otlpNames.has(n) && !otlpNames.has(n.replace(/_total$/, "")) && !otlpNames.has(n.replace(/_(count|sum|bucket)$/, "")),
    );
    assert.ok(prometheusNames.size > 0 && otlpNames.size > 0);
    assert.deepEqual(unmatched, [], `OTLP names: ${[...otlpNames].join(", ")}`);
    assert.ok(otlpNames.has("fleetlet_event_loop_delay_p99_seconds"));
  });
});
