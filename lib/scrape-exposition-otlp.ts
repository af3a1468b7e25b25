import { type HrTime, ValueType } from "@opentelemetry/api";
import { AggregationTemporality, DataPointType, type DataPoint, type MetricData, type ScopeMetrics } from "@opentelemetry/sdk-metrics";

/**
 * The scrape exposition (ScrapeExposition in otel-metrics.ts: the per-instance series, written
 * in the Prometheus text format at each scrape) as OpenTelemetry metric data, so the OTLP export
 * carries the same series, names, labels and values as GET /metrics. Loaded only with the OTLP
 * export (it pulls in sdk-metrics).
 *
 * Reads the subset of the text format the exposition writes: `# HELP`, `# TYPE` (counter or
 * gauge), `# UNIT`, and samples `name{label="value",...} number`. Anything else is an error (a
 * collection error of that export), so a new kind of series cannot be dropped silently.
 *
 * Names stay as Prometheus shows them (fleetlet_vm_cpu_seconds_total): a backend that turns OTLP
 * into Prometheus names adds `_total` only to counters that lack it. The scope is unnamed, so
 * such a backend adds no otel_scope_name label, which the endpoint does not show either.
 */
export function expositionToScopeMetrics(text: string, startTime: HrTime, endTime: HrTime): ScopeMetrics {
  const families = new Map<string, { type?: "counter" | "gauge"; help: string; unit: string; points: DataPoint<number>[] }>();
  const family = (name: string) => {
    let f = families.get(name);
    if (!f) {
      f = { help: "", unit: "", points: [] };
      families.set(name, f);
    }
    return f;
  };
  for (const [i, line] of text.split("\n").entries()) {
    if (line.trim() === "") continue;
    const meta = /^# (HELP|TYPE|UNIT) ([a-zA-Z_:][a-zA-Z0-9_:]*) ?(.*)$/.exec(line);
    if (meta) {
      const [, kind, name, rest] = meta as unknown as [string, string, string, string];
      const f = family(name);
      if (kind === "HELP") f.help = rest;
      else if (kind === "UNIT") f.unit = UCUM[rest] ?? rest;
      else if (rest === "counter" || rest === "gauge") f.type = rest;
      else throw new Error(`scrape exposition line ${i + 1}: type ${JSON.stringify(rest)} is not exported over OTLP`);
      continue;
    }
    if (line.startsWith("#")) continue;
    const sample = parseSample(line);
    if (!sample) throw new Error(`scrape exposition line ${i + 1}: not a sample: ${JSON.stringify(line.slice(0, 80))}`);
    const f = families.get(sample.name);
    if (!f?.type) throw new Error(`scrape exposition line ${i + 1}: ${sample.name} has no # TYPE before its samples`);
    f.points.push({ startTime, endTime, attributes: sample.labels, value: sample.value });
  }
  const metrics: MetricData[] = [];
  for (const [name, f] of families) {
    if (f.points.length === 0 || !f.type) continue;
    const descriptor = { name, description: f.help, unit: f.unit, valueType: ValueType.DOUBLE };
    // Values read at each scrape from the beginning of the instance's process: cumulative.
    const aggregationTemporality = AggregationTemporality.CUMULATIVE;
    metrics.push(
      f.type === "counter"
        ? { descriptor, aggregationTemporality, dataPointType: DataPointType.SUM, isMonotonic: true, dataPoints: f.points }
        : { descriptor, aggregationTemporality, dataPointType: DataPointType.GAUGE, dataPoints: f.points },
    );
  }
  return { scope: { name: "" }, metrics };
}

/** Prometheus unit words → the UCUM units OpenTelemetry uses (metrics.md's table). */
const UCUM: Record<string, string> = { seconds: "s", bytes: "By" };

function parseSample(line: string): { name: string; labels: Record<string, string>; value: number } | undefined {
  const head = /^([a-zA-Z_:][a-zA-Z0-9_:]*)/.exec(line);
  if (!head) return undefined;
  const name = head[1]!;
  let at = name.length;
  const labels: Record<string, string> = {};
  if (line[at] === "{") {
    at++;
    while (line[at] !== "}") {
      const key = /^([a-zA-Z_][a-zA-Z0-9_]*)="/.exec(line.slice(at));
      if (!key) return undefined;
      at += key[0].length;
      let v = "";
      for (;;) {
        const c = line[at++];
        if (c === undefined) return undefined;
        if (c === '"') break;
        if (c === "\\") {
          const e = line[at++];
          if (e === "n") v += "\n";
          else if (e === "\\" || e === '"') v += e;
          else return undefined;
        } else v += c;
      }
      labels[key[1]!] = v;
      if (line[at] === ",") at++;
      else if (line[at] !== "}") return undefined;
    }
    at++;
  }
  const rest = line.slice(at).trim().split(/\s+/);
  if (rest.length < 1 || rest.length > 2 || rest[0] === "") return undefined;
  const value = parseValue(rest[0]!);
  return value === undefined ? undefined : { name, labels, value };
}

function parseValue(s: string): number | undefined {
  if (s === "+Inf" || s === "Inf") return Number.POSITIVE_INFINITY;
  if (s === "-Inf") return Number.NEGATIVE_INFINITY;
  if (s === "NaN") return Number.NaN;
  const n = Number(s);
  return s.trim() === "" || Number.isNaN(n) ? undefined : n;
}
