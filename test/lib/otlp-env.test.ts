import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { OtlpConfigError, otlpMetricsConfig, otlpProtocolFor } from "../../lib/otlp-env.js";

describe("OTLP configuration from the OTEL_ environment", () => {
  it("is off for a signal without an endpoint, whatever else is set", () => {
    assert.equal(otlpMetricsConfig({}), undefined);
    assert.equal(otlpMetricsConfig({ OTEL_EXPORTER_OTLP_PROTOCOL: "grpc", OTEL_METRIC_EXPORT_INTERVAL: "x" }), undefined, "not read at all");
    assert.equal(otlpProtocolFor({ OTEL_EXPORTER_OTLP_ENDPOINT: "  " }, "TRACES"), undefined, "blank is unset");
    assert.equal(otlpProtocolFor({ OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: "http://c:4318/v1/metrics" }, "TRACES"), undefined, "the other signal's endpoint");
  });

  it("takes either the shared or the signal's endpoint, http/protobuf by default", () => {
    assert.deepEqual(otlpMetricsConfig({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318" }), { protocol: "http/protobuf", intervalMs: 60_000, timeoutMs: 30_000 });
    assert.equal(otlpProtocolFor({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "http://c:4318/v1/traces" }, "TRACES"), "http/protobuf");
  });

  it("lets the signal's protocol win over the shared one", () => {
    const env = { OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318", OTEL_EXPORTER_OTLP_PROTOCOL: "http/json", OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: "http/protobuf" };
    assert.equal(otlpProtocolFor(env, "METRICS"), "http/json");
    assert.equal(otlpProtocolFor(env, "TRACES"), "http/protobuf");
  });

  it("refuses grpc and unknown protocols, naming the variable", () => {
    assert.throws(() => otlpProtocolFor({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4317", OTEL_EXPORTER_OTLP_PROTOCOL: "grpc" }, "METRICS"), (e: unknown) => {
      assert.ok(e instanceof OtlpConfigError);
      assert.match(e.message, /^OTEL_EXPORTER_OTLP_PROTOCOL="grpc" is not supported: use http\/protobuf \(the default\) or http\/json/);
      return true;
    });
    assert.throws(
      () => otlpProtocolFor({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318", OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: "http/xml" }, "TRACES"),
      /^OtlpConfigError: OTEL_EXPORTER_OTLP_TRACES_PROTOCOL="http\/xml" is not supported/,
    );
  });

  it("reads the export interval and caps the timeout at it", () => {
    const base = { OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: "http://c:4318/v1/metrics" };
    assert.deepEqual(otlpMetricsConfig({ ...base, OTEL_METRIC_EXPORT_INTERVAL: "10000" }), { protocol: "http/protobuf", intervalMs: 10_000, timeoutMs: 10_000 });
    assert.deepEqual(otlpMetricsConfig({ ...base, OTEL_METRIC_EXPORT_INTERVAL: "10000", OTEL_METRIC_EXPORT_TIMEOUT: "2500" })?.timeoutMs, 2500);
    for (const bad of ["0", "-5", "5s", "1.5", "1e3"]) {
      assert.throws(() => otlpMetricsConfig({ ...base, OTEL_METRIC_EXPORT_INTERVAL: bad }), new RegExp(`^OtlpConfigError: OTEL_METRIC_EXPORT_INTERVAL="${bad.replace(".", "\\.")}" must be a positive whole number of milliseconds$`));
    }
    assert.throws(() => otlpMetricsConfig({ ...base, OTEL_METRIC_EXPORT_TIMEOUT: "soon" }), /OTEL_METRIC_EXPORT_TIMEOUT="soon"/);
  });
});
