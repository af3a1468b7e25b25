import { getEventListeners } from "node:events";
import { setTimeout as sleep } from "node:timers/promises";
import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { raceAbort, sleepUnlessAborted } from "../../lib/abort-race.js";

describe("raceAbort", () => {
  it("settles like the work when the signal does not abort, and removes its listener", async () => {
    const ac = new AbortController();
    assert.equal(await raceAbort(sleep(5).then(() => "done"), ac.signal), "done");
    await assert.rejects(raceAbort(Promise.reject(new Error("work failed")), ac.signal), /^Error: work failed$/);
    assert.equal(await raceAbort(7, ac.signal), 7, "a plain value");
    assert.equal(getEventListeners(ac.signal, "abort").length, 0);
  });

  it("rejects with the signal's reason as soon as it aborts, long before the work ends", async () => {
    const ac = new AbortController();
    const t0 = Date.now();
    setTimeout(() => ac.abort(new Error("client went away")), 10);
    await assert.rejects(raceAbort(sleep(2000), ac.signal), /^Error: client went away$/);
    assert.ok(Date.now() - t0 < 1000);
  });

  it("rejects at once for a signal already aborted, with the caller's own error when asked", async () => {
    const ac = new AbortController();
    ac.abort(new Error("gone"));
    await assert.rejects(raceAbort(sleep(2000), ac.signal), /^Error: gone$/);
    const abortError = () => Object.assign(new Error("aborted"), { name: "AbortError" });
    await assert.rejects(raceAbort(sleep(2000), ac.signal, abortError), { name: "AbortError", message: "aborted" });
  });

  it("without a signal is the work itself", async () => {
    assert.equal(await raceAbort(Promise.resolve(3), undefined), 3);
  });

  it("leaves no listener on a long-lived signal after many races", async () => {
    const longLived = new AbortController();
    for (let i = 0; i < 200; i++) await raceAbort(Promise.resolve(i), longLived.signal);
    assert.equal(getEventListeners(longLived.signal, "abort").length, 0);
  });
});

describe("sleepUnlessAborted", () => {
  it("waits the whole time, or ends early and quietly on abort, leaving no listener", async () => {
    const ac = new AbortController();
    let t0 = Date.now();
    await sleepUnlessAborted(30, ac.signal);
    assert.ok(Date.now() - t0 >= 25);
    assert.equal(getEventListeners(ac.signal, "abort").length, 0);

    t0 = Date.now();
    setTimeout(() => ac.abort(), 10);
    await sleepUnlessAborted(5000, ac.signal);
    assert.ok(Date.now() - t0 < 1000);
    t0 = Date.now();
    await sleepUnlessAborted(5000, ac.signal);
    assert.ok(Date.now() - t0 < 50, "an aborted signal does not wait at all");
  });
});
