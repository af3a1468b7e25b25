/**
 * The ledger half of P7's first figure: `appenders` concurrent callers, each appending one entry
 * at a time and waiting for it to be durable before the next, the way lifecycle transitions
 * arrive in the agent. Measured through MeteringLedger itself (group commit, fdatasync).
 */
import type { MeteringLedger } from "../../agent/metering/ledger.js";
import type { LedgerEntryInput } from "../../agent/metering/ledger-entry.js";

export interface AppendRun {
  entries: number;
  syncs: number;
  seconds: number;
  /** Per append call, from the call to its resolution. */
  latenciesMs: number[];
  /** Lines the run wrote (a sample), for the raw reference to write the same bytes. */
  sampleLines: string[];
}

const KINDS = ["vm.compute.start", "vm.compute.stop", "vm.storage.start", "vm.storage.stop"] as const;

/** An entry like the lifecycle writes: the size of metering.md's example. */
export function benchEntry(caller: number, n: number): LedgerEntryInput {
  return {
    kind: KINDS[n % KINDS.length]!,
    vmId: `vm-${String(caller).padStart(4, "0")}`,
    reason: n % 2 === 0 ? "boot" : "stop-user",
    hypervisor: "cloud-hypervisor",
    shape: { cpu: 4, memBytes: 4 * 2 ** 30, storageBytes: 20 * 2 ** 30 },
    emittedAtNs: BigInt(Date.now()) * 1_000_000n + BigInt(n % 1_000_000),
  };
}

/** Runs the callers for `warmupMs` (not counted), then `durationMs` (counted). */
export async function measureLedgerAppends(ledger: MeteringLedger, appenders: number, warmupMs: number, durationMs: number): Promise<AppendRun> {
  const end = performance.now() + warmupMs + durationMs;
  // The measured window opens when the counters are read, wherever the warm-up ended.
  let window: { at: number; syncs: number; seq: number } | undefined;
  const openWindow = () => (window = { at: performance.now(), syncs: ledger.syncs, seq: ledger.lastSeq });
  let timer: NodeJS.Timeout | undefined;
  if (warmupMs > 0) timer = setTimeout(openWindow, warmupMs);
  else openWindow();
  const latenciesMs: number[] = [];
  await Promise.all(
    Array.from({ length: appenders }, async (_, caller) => {
      for (let n = 0; performance.now() < end; n++) {
        const t0 = performance.now();
        await ledger.append([benchEntry(caller, n)]);
        if (window && t0 >= window.at) latenciesMs.push(performance.now() - t0);
      }
    }),
  );
  clearTimeout(timer);
  const w = window ?? openWindow();
  const sampleLines = ledger.read(Math.max(1, ledger.lastSeq - 999), 1000).map((e) => e.line);
  return { entries: ledger.lastSeq - w.seq, syncs: ledger.syncs - w.syncs, seconds: (performance.now() - w.at) / 1000, latenciesMs, sampleLines };
}
