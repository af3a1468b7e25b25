/**
 * Plain aligned columns, kubectl style: upper-case headers, two spaces between columns,
 * no borders, so the output greps and pastes cleanly.
 */
/** Set once per command from its flags (`--no-headers`). */
export const tableOptions = { headers: true };

export function formatTable(headers: string[], rows: string[][]): string {
  const widths = (tableOptions.headers ? [headers, ...rows] : rows).reduce<number[]>((w, r) => headers.map((_, i) => Math.max(w[i] ?? 0, visibleLength(r[i] ?? ""))), []);
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c + " ".repeat(Math.max(0, (widths[i] ?? 0) - visibleLength(c)))))
      .join("  ")
      .trimEnd();
  return (tableOptions.headers ? [line(headers), ...rows.map(line)] : rows.map(line)).join("\n");
}

/** 1536 → "1.5Ki"; binary units as kubectl and free(1) -h use. */
export function formatBytes(value: bigint | number | undefined): string {
  if (value === undefined) return "-";
  let n = Number(value);
  const units = ["", "Ki", "Mi", "Gi", "Ti", "Pi"];
  let u = 0;
  while (n >= 1024 && u < units.length - 1) {
    n /= 1024;
    u++;
  }
  return u === 0 ? `${n}` : `${n < 10 ? n.toFixed(1) : Math.round(n)}${units[u]}`;
}

export function formatAge(fromMs: number | undefined, nowMs = Date.now()): string {
  if (fromMs === undefined) return "never";
  const s = Math.max(0, Math.round((nowMs - fromMs) / 1000));
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.round(s / 60)}m`;
  return `${Math.round(s / 3600)}h`;
}

export function formatPercent(ratio: number | undefined): string {
  return ratio === undefined ? "-" : `${(ratio * 100).toFixed(1)}%`;
}

/** A cell's width on the terminal: its colour codes (SGR escapes) take none. */
function visibleLength(cell: string): number {
  return cell.replace(/\x1b\[[0-9;]*m/g, "").length;
}
