import { existsSync, readFileSync, readdirSync, unlinkSync } from "node:fs";
import { join } from "node:path";
import { writeFileAtomic, writeFileAtomicSync } from "../../lib/atomic-file.js";
import { LedgerCorruptError } from "./ledger-corrupt-error.js";
import { errorMessage } from "../../lib/error-message.js";

/**
 * `ledger.json` next to the segments: the ledger's identity (created with it, so a consumer
 * can tell a replaced ledger from a continued one) and the consumer's acknowledgement cursor
 * (what retention may drop). Small, rewritten atomically (temp file, fsync, rename, fsync dir).
 * Format 2 also says every segment has its checksum file (ledger-segment.ts): a segment
 * without one is then corruption, not a segment from before checksums (format 1).
 */
export interface LedgerMeta {
  ledgerId: string;
  acknowledgedSeq: number;
  /** Format 2: every segment has its .crc file. Written metas are always format 2. */
  checksummed?: boolean;
}

export const META_FILE = "ledger.json";
const FORMAT = 2;
const LEDGER_ID_RE = /^[0-9a-f]{16}$/;

const encode = (meta: LedgerMeta) => `${JSON.stringify({ format: FORMAT, ledger_id: meta.ledgerId, acknowledged_seq: meta.acknowledgedSeq })}\n`;

/** The stored meta, or undefined when the ledger was never created here. */
export function readLedgerMeta(dir: string): LedgerMeta | undefined {
  // Temp files of a rewrite interrupted by a crash: the target still holds the last good state.
  for (const name of readdirSync(dir)) {
    if (name.startsWith(`.${META_FILE}.tmp-`)) unlinkSync(join(dir, name));
  }
  const path = join(dir, META_FILE);
  if (!existsSync(path)) return undefined;
  let doc: unknown;
  try {
    doc = JSON.parse(readFileSync(path, "utf8"));
  } catch (e) {
    throw new LedgerCorruptError(path, 0, `not valid JSON (${errorMessage(e)})`);
  }
  const d = doc as { format?: unknown; ledger_id?: unknown; acknowledged_seq?: unknown } | null;
  if (typeof d !== "object" || d === null || (d.format !== 1 && d.format !== FORMAT)) throw new LedgerCorruptError(path, 0, `unknown format ${JSON.stringify(d?.format)}`);
  if (typeof d.ledger_id !== "string" || !LEDGER_ID_RE.test(d.ledger_id)) throw new LedgerCorruptError(path, 0, "ledger_id is not 16 hex digits");
  const ack = d.acknowledged_seq;
  if (typeof ack !== "number" || !Number.isSafeInteger(ack) || ack < 0) throw new LedgerCorruptError(path, 0, "acknowledged_seq is not an integer >= 0");
  return { ledgerId: d.ledger_id, acknowledgedSeq: ack, checksummed: d.format === FORMAT };
}

export function writeLedgerMetaSync(dir: string, meta: LedgerMeta): void {
  writeFileAtomicSync(join(dir, META_FILE), encode(meta));
}

/** Off the event loop; the caller keeps at most one in flight (one temp file name per pid). */
export function writeLedgerMeta(dir: string, meta: LedgerMeta): Promise<void> {
  return writeFileAtomic(join(dir, META_FILE), encode(meta));
}
