import type { HrTime } from "@opentelemetry/api";
import { type CollectionResult, type MetricCollectOptions, type PushMetricExporter, PeriodicExportingMetricReader } from "@opentelemetry/sdk-metrics";
import type { OtlpMetricsConfig } from "./otlp-env.js";
import { expositionToScopeMetrics } from "./scrape-exposition-otlp.js";

/**
 * The OTLP export of a daemon's metrics: a periodic reader on the same MeterProvider as the
 * Prometheus endpoint, so both carry the same instruments. Loaded (with its exporter) only when
 * the OTEL_ environment configures a metrics endpoint.
 *
 * Each export does what a scrape does, in the same order: first the scrape exposition (the
 * per-instance series, which also update instruments such as fleetlet_vm_metrics_instances_observed),
 * then the OpenTelemetry instruments, then the exposition's series appended as metric data.
 */
export async function createOtlpMetricReader(config: OtlpMetricsConfig, exposition: () => string): Promise<PeriodicExportingMetricReader> {
  // Only the exporter of the configured wire format is loaded; both read the endpoint, headers
  // and timeout from the OTEL_EXPORTER_OTLP_* environment.
  const exporter: PushMetricExporter =
    config.protocol === "http/json"
      ? new (await import("@opentelemetry/exporter-metrics-otlp-http")).OTLPMetricExporter()
      : new (await import("@opentelemetry/exporter-metrics-otlp-proto")).OTLPMetricExporter();
  const startTime = hrNow();

  class ScrapeFirstReader extends PeriodicExportingMetricReader {
    override async collect(options?: MetricCollectOptions): Promise<CollectionResult> {
      const text = exposition();
      const result = await super.collect(options);
      try {
        const own = expositionToScopeMetrics(text, startTime, hrNow());
        if (own.metrics.length > 0) result.resourceMetrics.scopeMetrics.push(own);
      } catch (e) {
        // The instruments still go out; the reader reports the error through the OTel diag log.
        result.errors.push(e);
      }
      return result;
    }
  }
  return new ScrapeFirstReader({ exporter, exportIntervalMillis: config.intervalMs, exportTimeoutMillis: config.timeoutMs });
}

function hrNow(): HrTime {
  const ms = Date.now();
  return [Math.floor(ms / 1000), (ms % 1000) * 1e6];
}
