import { afterEach, describe, it, vi } from "vitest";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { InstanceEventType, ListInstancesResponseSchema, WatchInstancesResponseSchema } from "../../../gen/fleetlet/agent/v1/inventory_pb.js";
import { HostSyncState } from "../../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import type { HostConnection } from "../../../aggregator/hosts/host-connection.js";
import type { HostRegistry } from "../../../aggregator/hosts/host-registry.js";
import { InventoryFollower } from "../../../aggregator/inventory/inventory-follower.js";
import { MergedView } from "../../../aggregator/inventory/merged-view.js";
import { createLogger } from "../../../lib/rpc/logger.js";

const HOUR = 3_600_000;

/** An agent with an empty inventory at version 7 whose watch sends one bookmark, then is quiet. */
function quietHost() {
  const conn = {
    config: { name: "h1" },
    recordSuccess() {},
    inventory: {
      async listInstances() {
        return create(ListInstancesResponseSchema, { incarnation: "inc-1", resourceVersion: 7n });
      },
      async *watchInstances(_req: unknown, opts: { signal: AbortSignal }) {
        yield create(WatchInstancesResponseSchema, { events: [{ type: InstanceEventType.BOOKMARK, resourceVersion: 7n, incarnation: "inc-1" }] });
        await new Promise<void>((r) => opts.signal.addEventListener("abort", () => r(), { once: true }));
      },
    },
  } as unknown as HostConnection;
  return { list: () => [conn], get: (name: string) => (name === "h1" ? conn : undefined) } as unknown as HostRegistry;
}

const until = async (what: () => boolean, ms: number) => {
  for (const end = performance.now() + ms; !what() && performance.now() < end; ) await new Promise((r) => setTimeout(r, 10));
};

afterEach(() => {
  vi.useRealTimers();
});

describe("InventoryFollower across a wall-clock step", () => {
  it("does not mark a host it heard from a moment ago STALE when the wall clock steps an hour forward", async () => {
    // Only Date is faked: the wall clock jumps, the monotonic clock and the timers do not.
    vi.useFakeTimers({ toFake: ["Date"] });
    const view = new MergedView(undefined);
    const follower = new InventoryFollower(view, quietHost(), createLogger("test", "silent"), { staleAfterMs: 30_000, digestIntervalMs: 60_000 });
    try {
      await until(() => view.host("h1")?.state === HostSyncState.SYNCED, 2000);
      assert.equal(view.host("h1")?.state, HostSyncState.SYNCED);
      const heardAt = Date.now();
      vi.setSystemTime(heardAt + HOUR);
      // The next pass over the hosts (once a second) judges staleness.
      await new Promise((r) => setTimeout(r, 1100));
      assert.equal(HostSyncState[view.host("h1")!.state], "SYNCED", "heard from about a second ago");
      assert.ok(Math.abs(view.host("h1")!.lastSeenMs! - heardAt) < 1000, "last_seen stays the wall time it was heard at");
    } finally {
      await follower.close();
    }
  });

  it("still marks a host STALE once it has been quiet for --stale-after on the monotonic clock", async () => {
    const view = new MergedView(undefined);
    const follower = new InventoryFollower(view, quietHost(), createLogger("test", "silent"), { staleAfterMs: 1500, digestIntervalMs: 60_000 });
    try {
      await until(() => view.host("h1")?.state === HostSyncState.SYNCED, 2000);
      const syncedAt = performance.now();
      await until(() => view.host("h1")?.state === HostSyncState.STALE, 3000);
      assert.equal(HostSyncState[view.host("h1")!.state], "STALE");
      assert.ok(performance.now() - syncedAt >= 1500, "not before --stale-after");
    } finally {
      await follower.close();
    }
  });
});
