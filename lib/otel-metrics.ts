import http from "node:http";
import { monitorEventLoopDelay } from "node:perf_hooks";
import { createNoopMeter, type Meter } from "@opentelemetry/api";
import type { PrometheusExporter, PrometheusSerializer } from "@opentelemetry/exporter-prometheus";
import type { ListenAddress } from "./listen-address.js";
import { errorMessage } from "./error-message.js";
import { processExposition } from "./process-exposition.js";
import { type DaemonTracing, startDaemonTracing } from "./otel-tracing.js";
import { otlpMetricsConfig } from "./otlp-env.js";
import { isLoopbackHost, plaintextBindProblem } from "./rpc/tls-plaintext-bind.js";
import type { TlsFiles } from "./rpc/tls-credentials.js";
import { createReloadingHttpsServer } from "./rpc/tls-https-server.js";

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

/** How long a stopping daemon waits for its last OTLP metrics export. */
const FLUSH_ON_SHUTDOWN_MS = 2000;

/**
 * The OpenTelemetry meter of a daemon with its Prometheus endpoint (GET /metrics), plus the
 * event-loop delay every daemon exports (architecture.md: p99 under 20 ms at target loads).
 * `listen` undefined turns the endpoint off. When the OTEL_ environment configures an OTLP
 * metrics endpoint, the same meter is also exported over OTLP (otlp-metric-reader.ts), and an
 * OTLP traces endpoint starts the daemon's tracer (otel-tracing.ts). With neither the endpoint
 * nor OTLP metrics the instruments are no-ops (and cost nothing).
 */
export interface MetricsEndpointSecurity {
  /** The daemon's --tls-cert/--tls-key/--tls-ca: the endpoint serves HTTPS with them when off loopback. */
  tls?: TlsFiles;
  /** --insecure: plaintext off loopback allowed (with a warning). */
  insecure?: boolean;
  /** Warnings: plaintext off loopback, rejected certificate files on reload. */
  warn?: (message: string) => void;
}

export async function startDaemonMetrics(serviceName: string, listen: ListenAddress | undefined, security: MetricsEndpointSecurity = {}): Promise<DaemonMetrics> {
  // security.md "Prometheus endpoints stay on loopback by default; serving them off-box needs TLS
  // too (or an explicit flag)": refused before anything is started.
  const https = listen !== undefined && !isLoopbackHost(listen.host) && security.tls?.certFile !== undefined;
  if (listen && !https) {
    const bind = plaintextBindProblem(listen, "--metrics-listen", security.insecure ?? false);
    if (bind.refuse) throw new Error(bind.refuse.replace("give --tls-cert and --tls-key", "give --tls-cert and --tls-key (the endpoint then serves HTTPS)").replace("plaintext gRPC", "plaintext metrics"));
    if (bind.warn) security.warn?.(bind.warn.replace("PLAINTEXT gRPC", "PLAINTEXT metrics"));
  }
  // process.env, not a parameter: the exporters read their other OTEL_ variables from it too.
  const otlp = otlpMetricsConfig(process.env);
  const tracing = await startDaemonTracing(serviceName);
  if (!listen && !otlp) return noopMetrics(tracing);
  // Loaded only when the endpoint or OTLP is on: the SDK and its exporters cost several MB of RSS.
  const [{ MeterProvider }, { resourceFromAttributes }] = await Promise.all([import("@opentelemetry/sdk-metrics"), import("@opentelemetry/resources")]);
  let exposition: ScrapeExposition | undefined;
  // The daemon's own series, then the process's and build info: the same text for a scrape and
  // for an OTLP export (both carry the same series).
  const fullExposition = () => `${exposition?.() ?? ""}${processExposition(serviceName)}`;
  const prometheus = listen ? await import("@opentelemetry/exporter-prometheus") : undefined;
  const exporter = prometheus ? new prometheus.PrometheusExporter({ preventServerStart: true }) : undefined;
  const otlpReader = otlp ? await (await import("./otlp-metric-reader.js")).createOtlpMetricReader(otlp, fullExposition) : undefined;
  const provider = new MeterProvider({
    resource: resourceFromAttributes({ "service.name": serviceName }),
    readers: [...(exporter ? [exporter] : []), ...(otlpReader ? [otlpReader] : [])],
  });
  const meter = provider.getMeter("fleetlet");
  let server: http.Server | undefined;
  let stopTls: (() => void) | undefined;
  let url: string | undefined;
  if (listen && exporter && prometheus) {
    try {
      ({ server, stopTls } = await servePrometheus(listen, exporter, new prometheus.PrometheusSerializer(), fullExposition, https ? security : undefined));
    } catch (e) {
      // The daemon will not start: stop the OTLP timers it would otherwise keep alive.
      await Promise.all([provider.shutdown({ timeoutMillis: 0 }).catch(() => {}), tracing.shutdown()]);
      throw e;
    }
    url = `${https ? "https" : "http"}://${listen.hostForClients}:${(server!.address() as { port: number }).port}/metrics`;
  }

  const loopDelay = monitorEventLoopDelay({ resolution: 10 });
  loopDelay.enable();
  const p99 = meter.createObservableGauge("fleetlet_event_loop_delay_p99_seconds", {
    description: "99th percentile event-loop delay since the previous collection (scrape or OTLP export)",
    unit: "s",
  });
  const max = meter.createObservableGauge("fleetlet_event_loop_delay_max_seconds", {
    description: "Largest event-loop delay since the previous collection (scrape or OTLP export)",
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
      stopTls?.();
      if (server) {
        const s = server;
        await new Promise<void>((resolve) => s.close(() => resolve()));
        s.closeAllConnections();
      }
      // A final OTLP export happens here; an unreachable collector must not hold the exit.
      await Promise.all([provider.shutdown({ timeoutMillis: FLUSH_ON_SHUTDOWN_MS }).catch(() => {}), tracing.shutdown()]);
    },
  };
}

/**
 * The endpoint is off: instruments from the OpenTelemetry API's no-op meter (nothing is recorded
 * or collected), so neither the SDK nor the exporter is loaded.
 */
function noopMetrics(tracing: DaemonTracing): DaemonMetrics {
  return {
    meter: createNoopMeter(),
    url: undefined,
    setScrapeExposition() {},
    shutdown: () => tracing.shutdown(),
  };
}

/** GET /metrics: the scrape exposition first (see ScrapeExposition), then the instruments. */
async function servePrometheus(
  listen: ListenAddress,
  exporter: PrometheusExporter,
  serializer: PrometheusSerializer,
  exposition: () => string,
  tls: MetricsEndpointSecurity | undefined,
): Promise<{ server: http.Server; stopTls?: () => void }> {
  const handler = (req: http.IncomingMessage, res: http.ServerResponse) => {
    if (req.method !== "GET" || (req.url ?? "").split("?")[0] !== "/metrics") {
      res.writeHead(404).end("not found: GET /metrics\n");
      return;
    }
    void (async () => {
      try {
        const own = exposition();
        const { resourceMetrics } = await exporter.collect();
        res.writeHead(200, { "content-type": "text/plain; version=0.0.4; charset=utf-8" });
        // `# UNIT` is OpenMetrics, not text format 0.0.4 (what the content type says): dropped.
        res.end((serializer.serialize(resourceMetrics) + own).replace(/^# UNIT .*\n/gm, ""));
      } catch (e) {
        res.writeHead(500).end(`# collection failed: ${errorMessage(e)}\n`);
      }
    })();
  };
  const secured = tls?.tls ? createReloadingHttpsServer(tls.tls, handler, (problem) => tls.warn?.(`metrics endpoint: ${problem}`)) : undefined;
  const server: http.Server = secured ? (secured.server as unknown as http.Server) : http.createServer(handler);
  try {
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(listen.port, listen.host, () => resolve());
    });
  } catch (e) {
    secured?.stop();
    throw e;
  }
  return { server, stopTls: secured?.stop };
}

/** Escapes a label value for the Prometheus text format. */
export function promLabel(value: string): string {
  return value.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, '\\"');
}
