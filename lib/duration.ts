/**
 * Go-style duration strings ("500ms", "2s", "1m30s", "1h") to milliseconds, the form every
 * interval and timeout flag takes. A bare number is refused: a unit is always required.
 */
const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

export function parseDurationMs(value: string): number {
  const text = value.trim();
  if (text === "" || !/^(\d+(\.\d+)?(ms|s|m|h))+$/.test(text)) {
    throw new Error(`${JSON.stringify(value)} is not a duration (e.g. 500ms, 2s, 1m30s)`);
  }
  let total = 0;
  for (const m of text.matchAll(/(\d+(?:\.\d+)?)(ms|s|m|h)/g)) {
    total += Number(m[1]) * (UNIT_MS[m[2] ?? ""] ?? 0);
  }
  return total;
}

/** Milliseconds back to the shortest readable duration string ("2s", "1m30s", "250ms"). */
export function formatDurationMs(ms: number): string {
  if (ms === 0) return "0s";
  if (ms % 1000 !== 0) return `${ms}ms`;
  let s = ms / 1000;
  const h = Math.floor(s / 3600);
  s -= h * 3600;
  const m = Math.floor(s / 60);
  s -= m * 60;
  return `${h ? `${h}h` : ""}${m ? `${m}m` : ""}${s ? `${s}s` : ""}`;
}
