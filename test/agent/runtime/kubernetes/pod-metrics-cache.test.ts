import { afterEach, describe, it, vi } from "vitest";
import assert from "node:assert/strict";
import type { KubeApiClient } from "../../../../agent/runtime/kubernetes/kube-api-client.js";
import { PodMetricsCache } from "../../../../agent/runtime/kubernetes/pod-metrics-cache.js";

/** metrics.k8s.io answering one pod whose CPU figure changes with every list. */
function metricsApi() {
  let lists = 0;
  const client = {
    async getJson() {
      lists++;
      return { items: [{ metadata: { namespace: "ns", name: "web" }, containers: [{ name: "c", usage: { cpu: `${lists}m` } }] }] };
    },
  } as unknown as KubeApiClient;
  return client;
}

afterEach(() => {
  vi.useRealTimers();
});

describe("PodMetricsCache across a wall-clock step", () => {
  it("refetches once the snapshot is older than max age, although the wall clock stepped back an hour", async () => {
    // Only Date is faked: the wall clock jumps back, the monotonic clock and the timers do not.
    vi.useFakeTimers({ toFake: ["Date"] });
    const cache = new PodMetricsCache(metricsApi(), { maxAgeMs: 50 });
    assert.equal((await cache.get("ns", "web")).metrics?.containers[0]?.cpu, "1m");
    assert.equal((await cache.get("ns", "web")).metrics?.containers[0]?.cpu, "1m", "shared within max age");
    vi.setSystemTime(Date.now() - 3_600_000);
    await new Promise((r) => setTimeout(r, 80));
    assert.equal((await cache.get("ns", "web")).metrics?.containers[0]?.cpu, "2m", "80 ms old: fetched again");
    assert.equal(cache.fetches, 2);
  });
});
