/**
 * A child process that writes a metering ledger, for the crash tests (run as
 * `node dist/test/helpers/ledger-writer-process.js MODE DIR`):
 *
 * - `loop [SEGMENT_BYTES]`: opens the ledger, prints `open <lastSeq> <tornLinesRepaired>`, then appenders
 *   append 1..3 entries per call forever; after each append resolves it prints
 *   `ack <seq> <vm_id>` for every entry (written to stdout before the next append, reportSync,
 *   so a line printed is a line the parent gets even after SIGKILL). The parent kills it.
 * - `fill`: meant to run under `ulimit -f`: appends 10-entry batches until one fails (the file
 *   size limit hits in the middle of its write), then one small entry, and prints a JSON result.
 */
import { MeteringLedger } from "../../agent/metering/ledger.js";
import { reportSync } from "./sync-report.js";
import type { LedgerEntryInput } from "../../agent/metering/ledger-entry.js";
import { errorMessage } from "../../lib/error-message.js";

export const LOOP_APPENDERS = 32;
/** Long enough that a batch spans pages and a kill can land inside its write. */
const PADDING = "x".repeat(200);

export interface FillResult {
  lastSeqBeforeFailure: number;
  failure: string;
  lastSeqAfterFailure: number;
  smallEntrySeq: number;
}

export const loopEntry = (vmId: string): LedgerEntryInput => ({
  kind: "vm.compute.start",
  vmId,
  reason: "boot",
  hypervisor: `crash-test-${PADDING}`,
  shape: { cpu: 2, memBytes: 1 << 30 },
  emittedAtNs: BigInt(Date.now()) * 1_000_000n,
});

async function loop(dir: string, segmentBytes: number | undefined): Promise<void> {
  const ledger = MeteringLedger.open(dir, { segmentBytes });
  reportSync(`open ${ledger.lastSeq} ${ledger.tornLinesRepaired}`);
  await Promise.all(
    Array.from({ length: LOOP_APPENDERS }, async (_, w) => {
      for (let n = 0; ; n++) {
        const count = 1 + ((w + n) % 3);
        const entries = Array.from({ length: count }, (_, i) => loopEntry(`p${process.pid}-w${w}-n${n}-${i}`));
        const done = await ledger.append(entries);
        reportSync(done.map((e) => `ack ${e.seq} ${e.vmId}\n`).join(""));
      }
    }),
  );
}

async function fill(dir: string): Promise<void> {
  const ledger = MeteringLedger.open(dir);
  let failure: string | undefined;
  let lastSeqBeforeFailure = 0;
  for (let n = 0; failure === undefined; n++) {
    lastSeqBeforeFailure = ledger.lastSeq;
    try {
      await ledger.append(Array.from({ length: 10 }, (_, i) => loopEntry(`fill-${n}-${i}`)));
    } catch (e) {
      failure = errorMessage(e);
    }
  }
  const lastSeqAfterFailure = ledger.lastSeq;
  const [small] = await ledger.append([{ kind: "vm.compute.stop", vmId: "small", shape: {}, emittedAtNs: 0n }]);
  await ledger.close();
  const result: FillResult = { lastSeqBeforeFailure, failure, lastSeqAfterFailure, smallEntrySeq: small!.seq };
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

const [mode, dir, segmentBytes] = process.argv.slice(2);
if (process.argv[1]?.endsWith("ledger-writer-process.js") && dir !== undefined) {
  (mode === "loop" ? loop(dir, segmentBytes === undefined ? undefined : Number(segmentBytes)) : mode === "fill" ? fill(dir) : Promise.reject(new Error(`unknown mode ${String(mode)}`))).catch((e: unknown) => {
    process.stderr.write(`${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    process.exit(1);
  });
}
