import { afterAll, beforeAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import { startDaemonMetrics } from "../../lib/otel-metrics.js";
import { otlpJsonToSeries, seriesKey, startOtlpReceiver, type OtlpReceiver } from "../helpers/otlp-receiver.js";

// OTLP without the Prometheus endpoint (--metrics-listen off): the instruments are real and the
// scrape exposition goes out too; shutdown sends a last export. (Each test file runs in its own
// process, so setting OTEL_ variables here touches nothing else.)

let receiver: OtlpReceiver;

beforeAll(async () => {
  receiver = await startOtlpReceiver();
  process.env.OTEL_EXPORTER_OTLP_METRICS_ENDPOINT = `${receiver.url}/v1/metrics`;
  process.env.OTEL_EXPORTER_OTLP_PROTOCOL = "http/json";
  process.env.OTEL_METRIC_EXPORT_INTERVAL = "60000";
});

afterAll(async () => {
  delete process.env.OTEL_EXPORTER_OTLP_METRICS_ENDPOINT;
  delete process.env.OTEL_EXPORTER_OTLP_PROTOCOL;
  delete process.env.OTEL_METRIC_EXPORT_INTERVAL;
  await receiver.close();
});

describe("OTLP metrics with the Prometheus endpoint off", () => {
  it("exports the instruments and the scrape exposition, last of all at shutdown", async () => {
    const metrics = await startDaemonMetrics("otlp-only", undefined);
    assert.equal(metrics.url, undefined, "no endpoint");
    const counter = metrics.meter.createCounter("test_things", { description: "things" });
    counter.add(3, { kind: "a" });
    let calls = 0;
    metrics.setScrapeExposition(() => {
      calls++;
      return '# HELP test_vm_bytes b\n# TYPE test_vm_bytes gauge\ntest_vm_bytes{instance_id="i-1"} 42\n';
    });
    assert.equal(receiver.requests.length, 0, "the interval (60 s) has not passed");
    // Shutdown flushes: the one export of this test.
    await metrics.shutdown();
    const { request } = await receiver.next((r) => r.path === "/v1/metrics", 5000);
    const { series } = otlpJsonToSeries(request.body);
    assert.equal(series.get(seriesKey("test_things_total", { kind: "a", otel_scope_name: "fleetlet" })), 3);
    assert.equal(series.get(seriesKey("test_vm_bytes", { instance_id: "i-1" })), 42);
    assert.ok(series.has(seriesKey("fleetlet_event_loop_delay_p99_seconds", { otel_scope_name: "fleetlet" })));
    assert.equal(calls, 1, "one exposition per collection");
  });
});
