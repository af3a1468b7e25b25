/**
 * Which OpenTelemetry OTLP exports the standard OTEL_ environment asks for. Only the choices we
 * make ourselves are read here (is a signal on, which wire format, how often metrics go out);
 * the exporters read the rest of their OTEL_EXPORTER_OTLP_* variables (endpoint URLs, headers,
 * timeout, compression, certificates) themselves, exactly as the specification describes.
 */

export type OtlpSignal = "METRICS" | "TRACES";

/** The OTLP/HTTP encodings the JS exporters speak. grpc would need another exporter family. */
export type OtlpProtocol = "http/protobuf" | "http/json";

export interface OtlpMetricsConfig {
  protocol: OtlpProtocol;
  /** OTEL_METRIC_EXPORT_INTERVAL: time between two exports, ms. */
  intervalMs: number;
  /** OTEL_METRIC_EXPORT_TIMEOUT, at most the interval: how long one collection + export may take, ms. */
  timeoutMs: number;
}

export type Env = Readonly<Record<string, string | undefined>>;

const DEFAULT_INTERVAL_MS = 60_000;
const DEFAULT_TIMEOUT_MS = 30_000;

/** A misconfigured OTEL_ variable: the daemon refuses to start, naming it. */
export class OtlpConfigError extends Error {
  override name = "OtlpConfigError";
}

function value(env: Env, name: string): string | undefined {
  const v = env[name]?.trim();
  return v === undefined || v === "" ? undefined : v;
}

/**
 * The protocol of a signal's OTLP export, or undefined when no endpoint is configured for it
 * (OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT). The signal-specific
 * protocol variable wins over OTEL_EXPORTER_OTLP_PROTOCOL; the default is http/protobuf, as the
 * specification says.
 */
export function otlpProtocolFor(env: Env, signal: OtlpSignal): OtlpProtocol | undefined {
  if (value(env, `OTEL_EXPORTER_OTLP_${signal}_ENDPOINT`) === undefined && value(env, "OTEL_EXPORTER_OTLP_ENDPOINT") === undefined) return undefined;
  const specific = `OTEL_EXPORTER_OTLP_${signal}_PROTOCOL`;
  const name = value(env, specific) !== undefined ? specific : "OTEL_EXPORTER_OTLP_PROTOCOL";
  const protocol = value(env, name) ?? "http/protobuf";
  if (protocol === "http/protobuf" || protocol === "http/json") return protocol;
  throw new OtlpConfigError(
    `${name}=${JSON.stringify(protocol.slice(0, 40))} is not supported: use http/protobuf (the default) or http/json${protocol === "grpc" ? " (OTLP/gRPC is not built in; a collector can take OTLP/HTTP)" : ""}`,
  );
}

function positiveMs(env: Env, name: string, fallback: number): number {
  const raw = value(env, name);
  if (raw === undefined) return fallback;
  if (!/^\d+$/.test(raw) || Number(raw) <= 0 || !Number.isSafeInteger(Number(raw))) {
    throw new OtlpConfigError(`${name}=${JSON.stringify(raw.slice(0, 40))} must be a positive whole number of milliseconds`);
  }
  return Number(raw);
}

/** The metrics export, or undefined when no metrics endpoint is configured. */
export function otlpMetricsConfig(env: Env): OtlpMetricsConfig | undefined {
  const protocol = otlpProtocolFor(env, "METRICS");
  if (!protocol) return undefined;
  const intervalMs = positiveMs(env, "OTEL_METRIC_EXPORT_INTERVAL", DEFAULT_INTERVAL_MS);
  // The SDK refuses a timeout longer than the interval; a short interval caps the default.
  const timeoutMs = Math.min(positiveMs(env, "OTEL_METRIC_EXPORT_TIMEOUT", DEFAULT_TIMEOUT_MS), intervalMs);
  return { protocol, intervalMs, timeoutMs };
}
