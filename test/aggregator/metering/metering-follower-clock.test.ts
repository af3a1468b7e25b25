import { afterEach, describe, it, vi } from "vitest";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { WatchMeteringEntriesResponseSchema, type WatchMeteringEntriesResponse } from "../../../gen/fleetlet/agent/v1/metering_pb.js";
import type { HostConnection } from "../../../aggregator/hosts/host-connection.js";
import type { HostRegistry } from "../../../aggregator/hosts/host-registry.js";
import { MeteringFollower } from "../../../aggregator/metering/metering-follower.js";
import type { MeteringStore } from "../../../aggregator/metering/metering-store.js";
import { createLogger } from "../../../lib/rpc/logger.js";

const HOUR = 3_600_000;

/** An agent's metering feed the test pushes messages into, and the acknowledgements it got. */
function fakeHost() {
  const pending: WatchMeteringEntriesResponse[] = [];
  let wake: (() => void) | undefined;
  const acks: bigint[] = [];
  const conn = {
    config: { name: "h1" },
    metering: {
      async *watchMeteringEntries(_req: unknown, opts: { signal: AbortSignal }) {
        while (!opts.signal.aborted) {
          const m = pending.shift();
          if (m) yield m;
          else await new Promise<void>((r) => {
            wake = r;
            opts.signal.addEventListener("abort", () => r(), { once: true });
          });
        }
      },
      async acknowledgeMeteringEntries(req: { seq: bigint }) {
        acks.push(req.seq);
        return {};
      },
    },
  } as unknown as HostConnection;
  const push = (seq: number, lastSeq: number) => {
    pending.push(create(WatchMeteringEntriesResponseSchema, { ledgerId: "l1", lastSeq: BigInt(lastSeq), entries: [{ seq: BigInt(seq), line: `{"seq":${seq}}` }] }));
    wake?.();
  };
  const hosts = { list: () => [conn], get: (name: string) => (name === "h1" ? conn : undefined) } as unknown as HostRegistry;
  return { hosts, push, acks };
}

/** Only what the follower asks of the store: no cursor yet, every entry merged. */
const store = {
  cursor: () => undefined,
  merge: (_host: string, _ledger: string, entries: { seq: number }[]) => entries,
  acceptedGaps: () => [],
} as unknown as MeteringStore;

const until = async (what: () => boolean, ms: number) => {
  for (const end = performance.now() + ms; !what() && performance.now() < end; ) await new Promise((r) => setTimeout(r, 10));
};

afterEach(() => {
  vi.useRealTimers();
});

describe("MeteringFollower across a wall-clock step", () => {
  it("keeps acknowledging at its pace and reports a sane lag when the wall clock steps back an hour", async () => {
    // Only Date is faked: the wall clock jumps back, the monotonic clock and the timers do not.
    vi.useFakeTimers({ toFake: ["Date"] });
    const host = fakeHost();
    const follower = new MeteringFollower(store, host.hosts, createLogger("test", "silent"));
    try {
      host.push(1, 2);
      await until(() => host.acks.length === 1, 2000);
      assert.deepEqual(host.acks, [1n], "the first merge is acknowledged at once");
      vi.setSystemTime(Date.now() - HOUR);
      host.push(2, 3);
      await until(() => host.acks.length === 2, 2000);
      assert.deepEqual(host.acks, [1n, 2n], "the trailing acknowledgement comes within its second, not an hour later");
      const lag = follower.status("h1")!.lagSeconds;
      assert.ok(lag >= 0 && lag < 10, `lag_seconds ${lag}`);
    } finally {
      await follower.close();
    }
  });
});
