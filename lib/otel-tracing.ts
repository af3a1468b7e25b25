import type { Tracer } from "@opentelemetry/api";
import { otlpProtocolFor } from "./otlp-env.js";

export interface DaemonTracing {
  /** Flushes the spans not yet exported (bounded) and stops the tracer. */
  shutdown(): Promise<void>;
}

/** How long a stopping daemon waits for its last spans to reach the collector. */
const FLUSH_ON_SHUTDOWN_MS = 2000;

let active: Tracer | undefined;

/**
 * The daemon's tracer when OTLP traces are configured, else undefined: callers skip every span
 * operation then, so a daemon without tracing pays one undefined check per fan-out. One daemon
 * per process, like the OpenTelemetry API's own global tracer provider.
 */
export function daemonTracer(): Tracer | undefined {
  return active;
}

/**
 * Starts OTLP trace export when the OTEL_ environment configures a traces endpoint
 * (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT). The SDK and the exporter of
 * the configured protocol are loaded only then; the exporter and the batch span processor read
 * their other OTEL_ variables (headers, timeout, OTEL_BSP_*) themselves.
 */
export async function startDaemonTracing(serviceName: string): Promise<DaemonTracing> {
  const protocol = otlpProtocolFor(process.env, "TRACES");
  if (!protocol) return { async shutdown() {} };
  const [{ BasicTracerProvider, BatchSpanProcessor }, { resourceFromAttributes }, { OTLPTraceExporter }] = await Promise.all([
    import("@opentelemetry/sdk-trace-base"),
    import("@opentelemetry/resources"),
    protocol === "http/json" ? import("@opentelemetry/exporter-trace-otlp-http") : import("@opentelemetry/exporter-trace-otlp-proto"),
  ]);
  const provider = new BasicTracerProvider({
    resource: resourceFromAttributes({ "service.name": serviceName }),
    spanProcessors: [new BatchSpanProcessor(new OTLPTraceExporter())],
  });
  const tracer = provider.getTracer("fleetlet");
  active = tracer;
  return {
    async shutdown() {
      if (active === tracer) active = undefined;
      let timer: NodeJS.Timeout | undefined;
      // An unreachable collector must not hold the daemon's exit for the exporter's timeout.
      await Promise.race([provider.shutdown(), new Promise<void>((resolve) => (timer = setTimeout(resolve, FLUSH_ON_SHUTDOWN_MS)))]);
      clearTimeout(timer);
    },
  };
}
