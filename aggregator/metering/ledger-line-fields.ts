import { errorMessage } from "../../lib/error-message.js";
/**
 * The fields of an agent's ledger line (metering.md, "Entry") that the metering store keeps in
 * columns of their own for filtering. The line itself is stored verbatim; this only reads it.
 */
export interface LedgerLineFields {
  kind: string;
  /** "" when the line has none (string fields are omitted when empty). */
  vmId: string;
  snapshotId: string;
  /** As written in the line (RFC 3339, nanoseconds, trailing zeros trimmed). */
  emittedAt: string;
}

/**
 * Parses `line` and checks what the store relies on: one JSON object on one line (the feed is
 * exported as JSONL), whose `seq` is the seq it is merged under, with a `kind` and an
 * `emitted_at`. The kind is not checked against today's list: a newer agent's kind is stored
 * and forwarded, not refused (refusing would stall that host's feed). Throws an Error saying
 * what is wrong.
 */
export function ledgerLineFields(line: string, seq: number): LedgerLineFields {
  if (line.includes("\n") || line.includes("\r")) throw new Error("line contains a line break");
  let parsed: unknown;
  try {
    parsed = JSON.parse(line);
  } catch (e) {
    throw new Error(`line is not JSON: ${errorMessage(e)}`);
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) throw new Error("line is not a JSON object");
  const o = parsed as Record<string, unknown>;
  if (o.seq !== seq) throw new Error(`line has seq ${JSON.stringify(o.seq)}, merged as seq ${seq}`);
  const kind = o.kind;
  if (typeof kind !== "string" || kind === "") throw new Error("line has no kind");
  const emittedAt = o.emitted_at;
  if (typeof emittedAt !== "string" || emittedAt === "") throw new Error("line has no emitted_at");
  return { kind, vmId: optionalString(o, "vm_id"), snapshotId: optionalString(o, "snapshot_id"), emittedAt };
}

function optionalString(o: Record<string, unknown>, key: string): string {
  const v = o[key];
  if (v === undefined) return "";
  if (typeof v !== "string") throw new Error(`line has a non-string ${key}`);
  return v;
}
