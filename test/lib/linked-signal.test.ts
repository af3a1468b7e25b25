import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { linkedSignal } from "../../lib/linked-signal.js";

describe("linkedSignal", () => {
  it("aborts with a source's reason, times out on its own, and detaches on dispose", async () => {
    const source = new AbortController();
    const a = linkedSignal([source.signal, undefined]);
    source.abort(new Error("stop"));
    assert.equal((a.signal.reason as Error).message, "stop");
    assert.equal(a.timedOut(), false);

    const t = linkedSignal([new AbortController().signal], 20);
    await new Promise((r) => setTimeout(r, 60));
    assert.ok(t.signal.aborted && t.timedOut());
    assert.equal((t.signal.reason as DOMException).name, "TimeoutError");

    const longLived = new AbortController();
    const d = linkedSignal([longLived.signal], 1000);
    d.dispose();
    longLived.abort();
    assert.equal(d.signal.aborted, false, "a disposed link no longer follows its source");
    assert.equal(linkedSignal([longLived.signal]).signal.aborted, true, "an already aborted source aborts at once");
  });
});
