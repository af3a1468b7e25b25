import { afterEach, describe, it, vi } from "vitest";
import assert from "node:assert/strict";
import { Readable } from "node:stream";
import type { KubeApiClient } from "../../../../agent/runtime/kubernetes/kube-api-client.js";
import { PodListWatch } from "../../../../agent/runtime/kubernetes/pod-list-watch.js";

afterEach(() => {
  vi.useRealTimers();
});

describe("PodListWatch across wall-clock steps", () => {
  it("backs off from watches that end at once although the wall clock steps an hour forward during each", async () => {
    // Only Date is faked: the wall clock jumps, the monotonic clock and the timers do not.
    vi.useFakeTimers({ toFake: ["Date"] });
    const client = {
      async getJson() {
        return { items: [], metadata: { resourceVersion: "1" } };
      },
      async open() {
        await new Promise((r) => setImmediate(r)); // a request's round trip
        vi.setSystemTime(Date.now() + 3_600_000);
        return Readable.from([]); // the API server ends the watch at once
      },
    } as unknown as KubeApiClient;
    const silent = { debug() {}, info() {}, warn() {}, error() {} };
    const watch = new PodListWatch({
      client,
      logger: silent as never,
      handler: { apply: async () => {}, connected() {}, disconnected() {}, failed() {} },
      backoff: { initialMs: 100, maxMs: 10_000 },
    });
    await watch.start();
    await new Promise((r) => setTimeout(r, 700));
    await watch.close();
    // Watches at about 0, 100, 300 and 700 ms: each quick end doubles the wait.
    assert.ok(watch.counters.watches <= 5, `${watch.counters.watches} watches in 700 ms`);
  });
});
