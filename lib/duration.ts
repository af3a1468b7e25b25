import { parseGoDuration } from "./go-duration.js";

/**
 * A flag's duration ("500ms", "2s", "1m30s", "1.5h") in milliseconds: the same Go syntax as
 * standby policies (go-duration.ts), one parser for both. A bare number other than 0 is
 * refused: a unit is always required.
 */
export function parseDurationMs(value: string): number {
  try {
    return parseGoDuration(value.trim()) / 1e6;
  } catch {
    throw new Error(`${JSON.stringify(value)} is not a duration (e.g. 500ms, 2s, 1m30s)`);
  }
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
