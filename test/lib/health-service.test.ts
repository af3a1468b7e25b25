import { getEventListeners } from "node:events";
import { createHandlerContext } from "@connectrpc/connect";
import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { Health } from "../../gen/grpc/health/v1/health_pb.js";
import { createHealthRegistry, ServingStatus } from "../../lib/rpc/health-service.js";

function contextWith(signal: AbortSignal) {
  return createHandlerContext({
    service: Health,
    method: Health.method.watch,
    protocolName: "test",
    requestMethod: "POST",
    url: "http://localhost/grpc.health.v1.Health/Watch",
    requestSignal: signal,
  });
}

describe("health Watch", () => {
  it("sends the current status, then each change, and SERVICE_UNKNOWN for a name never set", async () => {
    const health = createHealthRegistry();
    health.set("svc", ServingStatus.SERVING);
    const ac = new AbortController();
    const stream = health.impl.watch({ service: "svc" } as never, contextWith(ac.signal))[Symbol.asyncIterator]();
    assert.equal((await stream.next()).value?.status, ServingStatus.SERVING);
    health.set("svc", ServingStatus.SERVING); // no change: nothing sent
    // Changed while the client was not reading (the stream sits at its last yield): not lost.
    health.set("svc", ServingStatus.NOT_SERVING);
    assert.equal((await stream.next()).value?.status, ServingStatus.NOT_SERVING);
    // Changed while the stream waits.
    const waiting = stream.next();
    health.set("svc", ServingStatus.SERVING);
    assert.equal((await waiting).value?.status, ServingStatus.SERVING);
    ac.abort();
    assert.equal((await stream.next()).done, true);

    const unknown = health.impl.watch({ service: "nope" } as never, contextWith(new AbortController().signal))[Symbol.asyncIterator]();
    assert.equal((await unknown.next()).value?.status, ServingStatus.SERVICE_UNKNOWN);
    await unknown.return?.(undefined);
  });

  it("keeps one abort listener per stream however many times the status changes", async () => {
    const health = createHealthRegistry();
    const ac = new AbortController();
    const context = contextWith(ac.signal);
    const listeners = () => getEventListeners(context.signal, "abort").length;
    const before = listeners(); // the context's own
    const stream = health.impl.watch({ service: "svc" } as never, context)[Symbol.asyncIterator]();
    assert.equal((await stream.next()).value?.status, ServingStatus.SERVICE_UNKNOWN);
    for (let i = 0; i < 500; i++) {
      const status = i % 2 === 0 ? ServingStatus.SERVING : ServingStatus.NOT_SERVING;
      const next = stream.next(); // the stream waits for the change
      health.set("svc", status);
      assert.equal((await next).value?.status, status);
    }
    // Was one more listener per wait: `{ once: true }` only removes it when the signal aborts.
    assert.equal(listeners(), before + 1);
    ac.abort();
    assert.equal((await stream.next()).done, true);
  });
});
