import { crc32 } from "node:zlib";

/**
 * The checksum of one stored row of `metering_entries` (migration 3's `row_crc`): CRC-32 over
 * every column but itself, NUL-separated, so a flipped byte in the stored line or in any column
 * parsed from it (a vm_id, a host) is found when the row is read, instead of being served to
 * billing. The same function backs the SQL function the migration fills old rows with.
 */
export function storedEntryChecksum(
  fleetSeq: number | bigint,
  host: string,
  ledgerId: string,
  seq: number | bigint,
  line: string,
  kind: string,
  vmId: string,
  snapshotId: string,
  emittedAt: string,
  mergedAtMs: number | bigint,
): number {
  return crc32(`${fleetSeq}\0${host}\0${ledgerId}\0${seq}\0${line}\0${kind}\0${vmId}\0${snapshotId}\0${emittedAt}\0${mergedAtMs}`);
}

/** The SQL function name migration 3 calls (registered on every metering store connection). */
export const STORED_ENTRY_CHECKSUM_SQL = "fleetlet_entry_crc";
