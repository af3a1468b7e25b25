/**
 * A ledger file that cannot be read as written: the agent stops rather than skip or overwrite
 * data (metering.md "The ledger file"). `offset` is the byte offset of the bad line (0 for a
 * problem with the file as a whole).
 */
export class LedgerCorruptError extends Error {
  override name = "LedgerCorruptError";

  constructor(
    readonly file: string,
    readonly offset: number,
    reason: string,
  ) {
    super(`${file}: at byte offset ${offset}: ${reason}`);
  }
}
