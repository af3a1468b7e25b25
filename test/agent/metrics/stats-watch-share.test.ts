import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { Code, ConnectError } from "@connectrpc/connect";
import { MAX_WATCHERS, MAX_WATCHERS_PER_PEER, SharedSampler } from "../../../agent/metrics/shared-sampler.js";

describe("SharedSampler stats-watch slots", () => {
  it("one client gets at most its share; another client still gets a slot; ending a watch frees it", async () => {
    const sampler = new SharedSampler(() => []);
    const stop = new AbortController();
    const open = async (peer: string) => {
      const it = sampler.watch(1000, [], stop.signal, peer)[Symbol.asyncIterator]();
      await it.next(); // the first batch goes out at once: the watch holds its slot now
      return it;
    };
    const held = [];
    for (let i = 0; i < MAX_WATCHERS_PER_PEER; i++) held.push(await open("127.0.0.2"));
    assert.ok(MAX_WATCHERS_PER_PEER < MAX_WATCHERS);
    await assert.rejects(open("127.0.0.2"), (e: unknown) => e instanceof ConnectError && e.code === Code.ResourceExhausted && /stats watches per client/.test(e.rawMessage));
    const other = await open("127.0.0.3");
    await other.return?.(undefined);
    await held[0]!.return?.(undefined);
    held[0] = await open("127.0.0.2");
    stop.abort();
    await Promise.all(held.map((h) => h.return?.(undefined)));
    sampler.close();
  });
});
