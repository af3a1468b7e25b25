import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { Code, ConnectError } from "@connectrpc/connect";
import { fanOut } from "../../aggregator/fan-out.js";
import type { HostConnection } from "../../aggregator/hosts/host-connection.js";

// fanOut on stand-in hosts: the scheduling and reporting logic alone (the e2e test covers real
// agents over gRPC).

function host(name: string, perHostTimeoutMs?: number) {
  const seen: string[] = [];
  return {
    config: { name, address: "127.0.0.1:1", origin: 0, perHostTimeoutMs },
    recordSuccess: () => seen.push("ok"),
    recordFailure: (code: string) => seen.push(code),
    seen,
  } as unknown as HostConnection & { seen: string[] };
}

const sleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((res, rej) => {
    const t = setTimeout(res, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(t);
      rej(signal.reason);
    });
  });

describe("fanOut", () => {
  it("keeps at most `concurrency` calls in flight and reports every host in order", async () => {
    const hosts = Array.from({ length: 6 }, (_, i) => host(`h${i}`));
    let inFlight = 0;
    let maxInFlight = 0;
    const started = Date.now();
    const out = await fanOut(
      hosts,
      async (h, signal) => {
        inFlight++;
        maxInFlight = Math.max(maxInFlight, inFlight);
        await sleep(100, signal);
        inFlight--;
        return h.config.name;
      },
      { concurrency: 2, timeoutMsFor: () => 1000 },
    );
    assert.equal(maxInFlight, 2);
    assert.ok(Date.now() - started >= 290, "three waves of 100 ms");
    assert.deepEqual(out.map((o) => [o.host, o.code, o.value]), hosts.map((h) => [h.config.name, "OK", h.config.name]));
  });

  it("a hung host costs its own deadline (per host), reported as DEADLINE_EXCEEDED; the others are not held", async () => {
    const fast = host("fast");
    const hung = host("hung", 150);
    const started = Date.now();
    const out = await fanOut(
      [fast, hung],
      async (h, signal) => {
        if (h === hung) await new Promise((_, rej) => signal.addEventListener("abort", () => rej(signal.reason)));
        return 1;
      },
      { concurrency: 10, timeoutMsFor: (h) => h.config.perHostTimeoutMs ?? 2000 },
    );
    const elapsed = Date.now() - started;
    assert.equal(out[0]!.code, "OK");
    assert.equal(out[1]!.code, "DEADLINE_EXCEEDED");
    assert.match(out[1]!.message, /^no answer within 150 ms/);
    assert.ok(out[1]!.latencyMs >= 149 && elapsed < 400, `elapsed ${elapsed} ms`);
    assert.deepEqual(hung.seen, ["DEADLINE_EXCEEDED"]);
  });

  it("reports a host's error code and message; never throws for one host's failure", async () => {
    const out = await fanOut(
      [host("a"), host("b")],
      async (h) => {
        if (h.config.name === "b") throw new ConnectError("connect ECONNREFUSED 127.0.0.1:1", Code.Unavailable);
        return 0;
      },
      { concurrency: 4, timeoutMsFor: () => 1000 },
    );
    assert.deepEqual(out.map((o) => [o.host, o.code, o.message]), [["a", "OK", ""], ["b", "UNAVAILABLE", "connect ECONNREFUSED 127.0.0.1:1"]]);
  });

  it("the caller's cancellation cancels every outstanding call", async () => {
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 50);
    const out = await fanOut(
      [host("a"), host("b")],
      async (_h, signal) => {
        await new Promise((_, rej) => signal.addEventListener("abort", () => rej(signal.reason)));
      },
      { concurrency: 4, timeoutMsFor: () => 5000, signal: ac.signal },
    );
    assert.deepEqual(out.map((o) => o.code), ["CANCELLED", "CANCELLED"]);
  });
  it("hosts still waiting for a slot when the caller cancels are not called at all", async () => {
    const ac = new AbortController();
    const called: string[] = [];
    const hosts = [host("a"), host("b"), host("c"), host("d")];
    setTimeout(() => ac.abort(), 50);
    const started = Date.now();
    const out = await fanOut(
      hosts,
      async (h, signal) => {
        called.push(h.config.name);
        await new Promise((_, rej) => signal.addEventListener("abort", () => rej(signal.reason)));
      },
      { concurrency: 1, timeoutMsFor: () => 1000, signal: ac.signal },
    );
    assert.ok(Date.now() - started < 500, "no host waited for its deadline");
    assert.deepEqual(called, ["a"]);
    assert.deepEqual(out.map((o) => o.code), ["CANCELLED", "CANCELLED", "CANCELLED", "CANCELLED"]);
    assert.deepEqual(hosts.map((h) => h.seen), [[], [], [], []], "a cancellation is not the host's failure");
  });
});
