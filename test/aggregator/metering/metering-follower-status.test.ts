import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { WatchMeteringEntriesResponseSchema, type WatchMeteringEntriesResponse } from "../../../gen/fleetlet/agent/v1/metering_pb.js";
import type { HostConnection } from "../../../aggregator/hosts/host-connection.js";
import type { HostRegistry } from "../../../aggregator/hosts/host-registry.js";
import { MeteringFollower } from "../../../aggregator/metering/metering-follower.js";
import type { MeteringStore } from "../../../aggregator/metering/metering-store.js";
import { createLogger } from "../../../lib/rpc/logger.js";

// Issue 12 point 16: `get metering` showed LAG 0 while the agent was thousands of entries ahead
// (the store could not merge: the follower only updated what the agent said after a merge
// succeeded) and AGENT-LAST-SEQ 0 for an agent not heard from (SIGSTOPped) — an unknown shown
// as "caught up".

/** One agent stream that yields the given messages, then waits until aborted. */
function hostWith(messages: WatchMeteringEntriesResponse[]) {
  const conn = {
    config: { name: "h1" },
    metering: {
      async *watchMeteringEntries(_req: unknown, opts: { signal: AbortSignal }) {
        for (const m of messages) yield m;
        await new Promise<void>((r) => opts.signal.addEventListener("abort", () => r(), { once: true }));
      },
      acknowledgeMeteringEntries: async () => ({}),
    },
  } as unknown as HostConnection;
  return { list: () => [conn], get: (name: string) => (name === "h1" ? conn : undefined) } as unknown as HostRegistry;
}

const entries = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, k) => ({ seq: BigInt(from + k), line: `{"seq":${from + k}}` }));
const until = async (what: () => boolean, ms: number) => {
  for (const end = performance.now() + ms; !what() && performance.now() < end; ) await new Promise((r) => setTimeout(r, 10));
};

describe("MeteringFollower's status of a host", () => {
  it("a store that cannot merge: the agent's last seq and the lag are shown, not LAG 0", async () => {
    let merges = 0;
    const fullStore = {
      cursor: () => ({ ledgerId: "l1", seq: 10, ledgerChanges: 0 }),
      merge: (_h: string, _l: string, e: { seq: number }[]) => {
        merges++;
        if (e.length > 0) throw new Error("SQLITE_FULL: database or disk is full");
        return [];
      },
      acceptedGaps: () => [],
    } as unknown as MeteringStore;
    const follower = new MeteringFollower(fullStore, hostWith([create(WatchMeteringEntriesResponseSchema, { ledgerId: "l1", lastSeq: 5000n, entries: entries(11, 1010) })]), createLogger("test", "silent"));
    try {
      await until(() => follower.status("h1")?.lastError !== "" && merges > 0, 3000);
      const s = follower.status("h1")!;
      assert.match(s.lastError, /SQLITE_FULL/);
      assert.equal(s.mergedSeq, 10n);
      assert.equal(s.agentLastSeq, 5000n);
      assert.equal(s.lagEntries, 4990n);
      assert.ok(s.agentReportedAt, "when the agent said so");
    } finally {
      await follower.close();
    }
  });

  it("a host not heard from since start: no report time, so its last seq is unknown (not 0 = caught up)", async () => {
    const store = { cursor: () => ({ ledgerId: "l1", seq: 10, ledgerChanges: 0 }), merge: () => [], acceptedGaps: () => [] } as unknown as MeteringStore;
    const silent = hostWith([]);
    const follower = new MeteringFollower(store, silent, createLogger("test", "silent"));
    try {
      await new Promise((r) => setTimeout(r, 200));
      const s = follower.status("h1")!;
      assert.equal(s.agentReportedAt, undefined);
      assert.equal(s.mergedSeq, 10n);
    } finally {
      await follower.close();
    }
  });
});
