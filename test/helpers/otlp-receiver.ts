import http from "node:http";
import { performance } from "node:perf_hooks";

/** One export request as it arrived. */
export interface OtlpRequest {
  /** /v1/metrics or /v1/traces. */
  path: string;
  contentType: string;
  body: Buffer;
  /** performance.now() when the whole body was in. */
  receivedAt: number;
}

/**
 * A minimal OTLP/HTTP receiver (what a collector's otlphttp receiver does): accepts POST
 * /v1/metrics and /v1/traces, keeps every request and answers success in the request's encoding
 * (an empty Export*ServiceResponse: `{}` in JSON, zero bytes in protobuf).
 */
export interface OtlpReceiver {
  /** Base URL for OTEL_EXPORTER_OTLP_ENDPOINT. */
  url: string;
  requests: OtlpRequest[];
  /**
   * Resolves with the first request (already in or still to come) matching `match`; `onArrival`
   * runs as it arrives, before the receiver answers, so a test can take a scrape at that moment.
   */
  next<T = void>(match: (r: OtlpRequest) => boolean, timeoutMs: number, onArrival?: (r: OtlpRequest) => Promise<T>): Promise<{ request: OtlpRequest; result: T }>;
  close(): Promise<void>;
}

export async function startOtlpReceiver(): Promise<OtlpReceiver> {
  const requests: OtlpRequest[] = [];
  const waiters = new Set<(r: OtlpRequest) => Promise<void> | undefined>();
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const path = (req.url ?? "").split("?")[0]!;
      const contentType = req.headers["content-type"] ?? "";
      if (req.method !== "POST" || (path !== "/v1/metrics" && path !== "/v1/traces")) {
        res.writeHead(404).end();
        return;
      }
      const request = { path, contentType, body: Buffer.concat(chunks), receivedAt: performance.now() };
      requests.push(request);
      const pending = [...waiters].map((w) => w(request)).filter((p) => p !== undefined);
      void Promise.allSettled(pending).then(() => {
        const json = contentType.startsWith("application/json");
        res.writeHead(200, { "content-type": json ? "application/json" : "application/x-protobuf" }).end(json ? "{}" : "");
      });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as { port: number }).port;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    next<T>(match: (r: OtlpRequest) => boolean, timeoutMs: number, onArrival?: (r: OtlpRequest) => Promise<T>) {
      return new Promise<{ request: OtlpRequest; result: T }>((resolve, reject) => {
        const settle = (request: OtlpRequest) => {
          waiters.delete(waiter);
          clearTimeout(timer);
          const work = onArrival ? onArrival(request) : Promise.resolve(undefined as T);
          return work.then(
            (result) => resolve({ request, result }),
            (e: unknown) => reject(e),
          );
        };
        const waiter = (r: OtlpRequest) => (match(r) ? settle(r) : undefined);
        const timer = setTimeout(() => {
          waiters.delete(waiter);
          reject(new Error(`no matching OTLP request within ${timeoutMs} ms (${requests.length} received: ${requests.map((r) => r.path).join(", ")})`));
        }, timeoutMs);
        const already = requests.find(match);
        if (already) void settle(already);
        else waiters.add(waiter);
      });
    },
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

// ---- OTLP/JSON (the http/json protocol) as plain series -------------------------------------

interface JsonAnyValue {
  stringValue?: string;
  intValue?: number | string;
  doubleValue?: number;
  boolValue?: boolean;
}
interface JsonKeyValue {
  key: string;
  value: JsonAnyValue;
}
interface JsonNumberPoint {
  attributes?: JsonKeyValue[];
  asDouble?: number;
  asInt?: number | string;
  startTimeUnixNano?: string | number;
  timeUnixNano?: string | number;
}
interface JsonHistogramPoint {
  attributes?: JsonKeyValue[];
  count: number | string;
  sum?: number;
  bucketCounts: (number | string)[];
  explicitBounds: number[];
}
export interface JsonMetric {
  name: string;
  unit?: string;
  gauge?: { dataPoints: JsonNumberPoint[] };
  sum?: { dataPoints: JsonNumberPoint[]; isMonotonic?: boolean; aggregationTemporality?: number };
  histogram?: { dataPoints: JsonHistogramPoint[] };
}
interface JsonMetricsRequest {
  resourceMetrics: { resource?: { attributes?: JsonKeyValue[] }; scopeMetrics: { scope?: { name?: string }; metrics: JsonMetric[] }[] }[];
}

function anyValue(v: JsonAnyValue): string {
  if (v.stringValue !== undefined) return v.stringValue;
  if (v.intValue !== undefined) return String(v.intValue);
  if (v.doubleValue !== undefined) return String(v.doubleValue);
  if (v.boolValue !== undefined) return String(v.boolValue);
  return "";
}

function attributes(kvs: JsonKeyValue[] | undefined): Record<string, string> {
  return Object.fromEntries((kvs ?? []).map((kv) => [kv.key, anyValue(kv.value)]));
}

/** A series as a Prometheus scrape names it: `name{a="x",b="y"}` with labels sorted. */
export function seriesKey(name: string, labels: Record<string, string>): string {
  const inner = Object.keys(labels)
    .sort()
    .map((k) => `${k}=${JSON.stringify(labels[k])}`)
    .join(",");
  return `${name}{${inner}}`;
}

/**
 * The series a Prometheus scrape of the same data would show, by the OpenTelemetry → Prometheus
 * rules the endpoint's serializer applies: monotonic sums get `_total` unless they end with it,
 * histograms become _count/_sum/_bucket{le} (cumulative buckets), and a named instrumentation
 * scope becomes the otel_scope_name label.
 */
export function otlpJsonToSeries(body: Buffer): { series: Map<string, number>; metrics: Map<string, JsonMetric> } {
  const request = JSON.parse(body.toString("utf8")) as JsonMetricsRequest;
  const series = new Map<string, number>();
  const metrics = new Map<string, JsonMetric>();
  for (const rm of request.resourceMetrics) {
    for (const sm of rm.scopeMetrics) {
      const scope: Record<string, string> = sm.scope?.name ? { otel_scope_name: sm.scope.name } : {};
      for (const m of sm.metrics) {
        metrics.set(m.name, m);
        const labelsOf = (p: { attributes?: JsonKeyValue[] }) => ({ ...attributes(p.attributes), ...scope });
        const numberOf = (p: JsonNumberPoint) => Number(p.asDouble ?? p.asInt ?? Number.NaN);
        if (m.gauge) for (const p of m.gauge.dataPoints) series.set(seriesKey(m.name, labelsOf(p)), numberOf(p));
        if (m.sum) {
          const name = m.sum.isMonotonic && !m.name.endsWith("_total") ? `${m.name}_total` : m.name;
          for (const p of m.sum.dataPoints) series.set(seriesKey(name, labelsOf(p)), numberOf(p));
        }
        if (m.histogram) {
          for (const p of m.histogram.dataPoints) {
            const labels = labelsOf(p);
            series.set(seriesKey(`${m.name}_count`, labels), Number(p.count));
            series.set(seriesKey(`${m.name}_sum`, labels), Number(p.sum ?? 0));
            let cumulative = 0;
            for (const [i, c] of p.bucketCounts.entries()) {
              cumulative += Number(c);
              const le = i < p.explicitBounds.length ? String(p.explicitBounds[i]) : "+Inf";
              series.set(seriesKey(`${m.name}_bucket`, { ...labels, le }), cumulative);
            }
          }
        }
      }
    }
  }
  return { series, metrics };
}

/** Every sample of a Prometheus text exposition, by seriesKey. */
export function prometheusSeries(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) throw new Error(`not a Prometheus sample: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[l[1]!] = l[2]!.replace(/\\(.)/g, (_, c: string) => (c === "n" ? "\n" : c));
    }
    const v = m[3]!;
    out.set(seriesKey(m[1]!, labels), v === "+Inf" ? Number.POSITIVE_INFINITY : v === "-Inf" ? Number.NEGATIVE_INFINITY : Number(v));
  }
  return out;
}

export interface JsonSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  kind: number;
  startTimeUnixNano: string | number;
  endTimeUnixNano: string | number;
  attributes?: JsonKeyValue[];
  status?: { code?: number; message?: string };
}

export interface ReceivedSpan {
  traceId: string;
  spanId: string;
  parentSpanId: string;
  name: string;
  durationMs: number;
  attributes: Record<string, string>;
  /** 0 unset, 1 OK, 2 ERROR. */
  statusCode: number;
  statusMessage: string;
  serviceName: string;
}

/** The spans of OTLP/JSON trace export requests. */
export function otlpJsonSpans(bodies: Buffer[]): ReceivedSpan[] {
  const out: ReceivedSpan[] = [];
  for (const body of bodies) {
    const request = JSON.parse(body.toString("utf8")) as {
      resourceSpans: { resource?: { attributes?: JsonKeyValue[] }; scopeSpans: { spans: JsonSpan[] }[] }[];
    };
    for (const rs of request.resourceSpans) {
      const serviceName = attributes(rs.resource?.attributes)["service.name"] ?? "";
      for (const ss of rs.scopeSpans) {
        for (const s of ss.spans) {
          out.push({
            traceId: s.traceId,
            spanId: s.spanId,
            parentSpanId: s.parentSpanId ?? "",
            name: s.name,
            durationMs: Number(BigInt(s.endTimeUnixNano) - BigInt(s.startTimeUnixNano)) / 1e6,
            attributes: attributes(s.attributes),
            statusCode: s.status?.code ?? 0,
            statusMessage: s.status?.message ?? "",
            serviceName,
          });
        }
      }
    }
  }
  return out;
}

// ---- OTLP/protobuf: just enough of the wire format to list metric names ---------------------

/** The length-delimited fields numbered `field` of a protobuf message. */
function lengthDelimited(buf: Buffer, field: number): Buffer[] {
  const out: Buffer[] = [];
  let at = 0;
  const varint = () => {
    let v = 0n;
    for (let shift = 0n; ; shift += 7n) {
      const b = buf[at++];
      if (b === undefined) throw new Error("truncated varint");
      v |= BigInt(b & 0x7f) << shift;
      if ((b & 0x80) === 0) return v;
    }
  };
  while (at < buf.length) {
    const key = Number(varint());
    const wire = key & 7;
    if (wire === 0) varint();
    else if (wire === 1) at += 8;
    else if (wire === 5) at += 4;
    else if (wire === 2) {
      const len = Number(varint());
      if ((key >>> 3) === field) out.push(buf.subarray(at, at + len));
      at += len;
    } else throw new Error(`unexpected wire type ${wire}`);
    if (at > buf.length) throw new Error("truncated message");
  }
  return out;
}

/**
 * Metric names of an ExportMetricsServiceRequest in protobuf (opentelemetry-proto:
 * resource_metrics = 1, ResourceMetrics.scope_metrics = 2, ScopeMetrics.metrics = 2,
 * Metric.name = 1).
 */
export function otlpProtobufMetricNames(body: Buffer): string[] {
  return lengthDelimited(body, 1)
    .flatMap((rm) => lengthDelimited(rm, 2))
    .flatMap((sm) => lengthDelimited(sm, 2))
    .flatMap((m) => lengthDelimited(m, 1).map((n) => n.toString("utf8")));
}
