import http from "node:http";
import { monitorEventLoopDelay } from "node:perf_hooks";
import { createNoopMeter, type Meter } from "@opentelemetry/api";
import type { ListenAddress } from "./listen-address.js";
import { errorMessage } from "./error-message.js";

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
 * `listen` undefined turns the endpoint off; the instruments are then no-ops (and cost nothing).
 */
export async function startDaemonMetrics(serviceName: string, listen: ListenAddress | undefined): Promise<DaemonMetrics> {
  if (!listen) return noopMetrics();
  // Loaded only when the endpoint is on: the SDK and its exporter cost several MB of RSS.
  const [{ MeterProvider }, { PrometheusExporter, PrometheusSerializer }, { resourceFromAttributes }] = await Promise.all([
    import("@opentelemetry/sdk-metrics"),
    import("@opentelemetry/exporter-prometheus"),
    import("@opentelemetry/resources"),
  ]);
  const exporter = new PrometheusExporter({ preventServerStart: true });
  const provider = new MeterProvider({
    resource: resourceFromAttributes({ "service.name": serviceName }),
    readers: [exporter],
  });
  const meter = provider.getMeter("fleetlet");
  let exposition: ScrapeExposition | undefined;
  const serializer = new PrometheusSerializer();

  const server = http.createServer((req, res) => {
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
        res.writeHead(500).end(`# collection failed: ${errorMessage(e)}\n`);
      }
    })();
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(listen.port, listen.host, () => resolve());
  });
  const port = (server.address() as { port: number }).port;
  const url = `http://${listen.hostForClients}:${port}/metrics`;

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
      await new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
      await provider.shutdown();
    },
  };
}

/**
 * The endpoint is off: instruments from the OpenTelemetry API's no-op meter (nothing is recorded
 * or collected), so neither the SDK nor the exporter is loaded.
 */
function noopMetrics(): DaemonMetrics {
  return {
    meter: createNoopMeter(),
    url: undefined,
    setScrapeExposition() {},
    async shutdown() {},
  };
}

/** Escapes a label value for the Prometheus text format. */
export function promLabel(value: string): string {
  return value.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, '\\"');
}
