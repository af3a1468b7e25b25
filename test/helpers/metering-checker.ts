import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";

/** One agent's ledger as on disk: its lines, in seq order (metering.md: gapless from 1). */
export function agentLedgerLines(stateDir: string): string[] {
  const dir = join(stateDir, "metering");
  return readdirSync(dir)
    .filter((f) => f.endsWith(".jsonl"))
    .sort()
    .flatMap((f) => readFileSync(join(dir, f), "utf8").split("\n").filter(Boolean));
}

export interface FleetRow {
  fleetSeq: number;
  host: string;
  seq: number;
  line: string;
}

/**
 * metering.md check 5: every agent's ledger (as retained: from its first line's seq) equals its
 * slice of the merged feed exactly — no entry lost, none duplicated, none altered — and
 * fleet_seq is gapless from 1. Returns the problems found (empty = consistent).
 */
export function checkFleetFeed(ledgers: Map<string, string[]>, feed: FleetRow[]): string[] {
  const problems: string[] = [];
  feed.forEach((r, i) => {
    if (r.fleetSeq !== i + 1) problems.push(`fleet_seq ${r.fleetSeq} at position ${i + 1} (gap or disorder)`);
  });
  const byHost = new Map<string, FleetRow[]>();
  for (const r of feed) {
    if (!ledgers.has(r.host)) problems.push(`fleet_seq ${r.fleetSeq}: unknown host ${r.host}`);
    (byHost.get(r.host) ?? byHost.set(r.host, []).get(r.host)!).push(r);
  }
  for (const [host, lines] of ledgers) {
    const slice = byHost.get(host) ?? [];
    if (slice.length !== lines.length) problems.push(`${host}: ledger has ${lines.length} entries, feed has ${slice.length}`);
    // A ledger whose oldest segments were retained away (an accepted gap) starts later than 1.
    const base = lines.length > 0 ? (JSON.parse(lines[0]!) as { seq: number }).seq : 1;
    const seen = new Set<number>();
    for (const r of slice) {
      if (seen.has(r.seq)) problems.push(`${host}: seq ${r.seq} merged twice`);
      seen.add(r.seq);
      if (lines[r.seq - base] !== r.line) problems.push(`${host}: seq ${r.seq} differs from the ledger`);
    }
    for (let s = base; s < base + lines.length; s++) if (!seen.has(s)) problems.push(`${host}: seq ${s} lost`);
  }
  return problems.slice(0, 20);
}
