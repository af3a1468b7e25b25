import { monitorEventLoopDelay } from "node:perf_hooks";
import type { Meter } from "@opentelemetry/api";
import { MeterProvider } from "@opentelemetry/sdk-metrics";
import { PrometheusExporter } from "@opentelemetry/exporter-prometheus";
import { resourceFromAttributes } from "@opentelemetry/resources";
import type { ListenAddress } from "./listen-address.js";

export interface DaemonMetrics {
  meter: Meter;
  /** The Prometheus endpoint actually bound, or undefined when disabled. */
  url: string | undefined;
  shutdown(): Promise<void>;
}

/**
 * The OpenTelemetry meter of a daemon with its Prometheus endpoint (GET /metrics), plus the
 * event-loop delay every daemon exports (architecture.md: p99 under 20 ms at target loads).
 * `listen` undefined turns the endpoint off; the instruments still work (and cost nothing).
 */
export async function startDaemonMetrics(serviceName: string, listen: ListenAddress | undefined): Promise<DaemonMetrics> {
  let exporter: PrometheusExporter | undefined;
  if (listen) {
    exporter = await new Promise<PrometheusExporter>((resolve, reject) => {
      const e: PrometheusExporter = new PrometheusExporter(
        { host: listen.host, port: listen.port, preventServerStart: true },
      );
      e.startServer().then(() => resolve(e), reject);
    });
  }
  const provider = new MeterProvider({
    resource: resourceFromAttributes({ "service.name": serviceName }),
    readers: exporter ? [exporter] : [],
  });
  const meter = provider.getMeter("fleetlet");

  const loopDelay = monitorEventLoopDelay({ resolution: 10 });
  loopDelay.enable();
  const p99 = meter.createObservableGauge("fleetlet_event_loop_delay_p99_seconds", {
    description: "99th percentile event-loop delay since the previous scrape",
    unit: "s",
  });
  const max = meter.createObservableGauge("fleetlet_event_loop_delay_max_seconds", {
    description: "Largest event-loop delay since the previous scrape",
    unit: "s",
  });
  meter.addBatchObservableCallback(
    (result) => {
      result.observe(p99, loopDelay.percentile(99) / 1e9);
      result.observe(max, loopDelay.max / 1e9);
      loopDelay.reset();
    },
    [p99, max],
  );

  return {
    meter,
    url: listen ? `http://${listen.hostForClients}:${listen.port}/metrics` : undefined,
    async shutdown() {
      loopDelay.disable();
      await provider.shutdown();
      await exporter?.stopServer();
    },
  };
}
