import http from "node:http";
import { monitorEventLoopDelay } from "node:perf_hooks";
import type { Meter } from "@opentelemetry/api";
import { MeterProvider } from "@opentelemetry/sdk-metrics";
import { PrometheusExporter, PrometheusSerializer } from "@opentelemetry/exporter-prometheus";
import { resourceFromAttributes } from "@opentelemetry/resources";
import type { ListenAddress } from "./listen-address.js";

/**
 * Series written straight in the Prometheus text format, produced fresh at each scrape.
 * For per-instance series only: the OpenTelemetry JS SDK keeps reporting every attribute set an
 * asynchronous instrument ever observed (cumulative temporality keeps its history,
 * sdk-metrics TemporalMetricProcessor), so a deregistered instance, or a failed collection,
 * would keep its last values forever. Called before the OpenTelemetry instruments are collected
 * in the same scrape, so their callbacks can use what it computed.
 */
export type ScrapeExposition = () => string;

export interface DaemonMetrics {
  meter: Meter;
  /** The Prometheus endpoint actually bound, or undefined when disabled. */
  url: string | undefined;
  setScrapeExposition(fn: ScrapeExposition): void;
  shutdown(): Promise<void>;
}

/**
 * The OpenTelemetry meter of a daemon with its Prometheus endpoint (GET /metrics), plus the
 * event-loop delay every daemon exports (architecture.md: p99 under 20 ms at target loads).
 * `listen` undefined turns the endpoint off; the instruments still work (and cost nothing).
 */
export async function startDaemonMetrics(serviceName: string, listen: ListenAddress | undefined): Promise<DaemonMetrics> {
  const exporter = listen ? new PrometheusExporter({ preventServerStart: true }) : undefined;
  const provider = new MeterProvider({
    resource: resourceFromAttributes({ "service.name": serviceName }),
    readers: exporter ? [exporter] : [],
  });
  const meter = provider.getMeter("fleetlet");
  let exposition: ScrapeExposition | undefined;
  const serializer = new PrometheusSerializer();

  let server: http.Server | undefined;
  let url: string | undefined;
  if (listen && exporter) {
    server = http.createServer((req, res) => {
      if (req.method !== "GET" || (req.url ?? "").split("?")[0] !== "/metrics") {
        res.writeHead(404).end("not found: GET /metrics\n");
        return;
      }
      void (async () => {
        try {
          const own = exposition?.() ?? "";
          const { resourceMetrics } = await exporter.collect();
          res.writeHead(200, { "content-type": "text/plain; version=0.0.4; charset=utf-8" });
          res.end(serializer.serialize(resourceMetrics) + own);
        } catch (e) {
          res.writeHead(500).end(`# collection failed: ${(e as Error).message}\n`);
        }
      })();
    });
    await new Promise<void>((resolve, reject) => {
      server!.once("error", reject);
      server!.listen(listen.port, listen.host, () => resolve());
    });
    const port = (server.address() as { port: number }).port;
    url = `http://${listen.hostForClients}:${port}/metrics`;
  }

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
    url,
    setScrapeExposition(fn) {
      exposition = fn;
    },
    async shutdown() {
      loopDelay.disable();
      await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
      server?.closeAllConnections();
      await provider.shutdown();
    },
  };
}

/** Escapes a label value for the Prometheus text format. */
export function promLabel(value: string): string {
  return value.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, '\\"');
}
