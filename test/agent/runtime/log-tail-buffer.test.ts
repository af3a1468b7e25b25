import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { LogLineSchema } from "../../../gen/fleetlet/agent/v1/runtime_pb.js";
import { LogTailBuffer } from "../../../agent/runtime/log-tail-buffer.js";

describe("LogTailBuffer", () => {
  it("keeps the newest lines within its byte budget and says how many it left out", () => {
    const b = new LogTailBuffer(10_000);
    for (let i = 0; i < 20_000; i++) b.push([create(LogLineSchema, { text: `line ${i}`.padEnd(68, ".") })]);
    const kept = b.lines();
    assert.ok(kept.length > 0 && kept.length <= 100, `${kept.length} kept`);
    assert.equal(kept.at(-1)!.text.startsWith("line 19999"), true, "the newest line is last");
    assert.equal(b.dropped + kept.length, 20_000, "every line is kept or counted as left out");
    assert.match(b.note()!, /the \d+ oldest lines were left out/);
  });
  it("under the budget: everything, no note; one line larger than the budget is still kept", () => {
    const b = new LogTailBuffer(1000);
    b.push([create(LogLineSchema, { text: "a" }), create(LogLineSchema, { text: "b" })]);
    assert.deepEqual(b.lines().map((l) => l.text), ["a", "b"]);
    assert.equal(b.note(), undefined);
    b.push([create(LogLineSchema, { text: "x".repeat(5000) })]);
    assert.deepEqual(b.lines().map((l) => l.text.length), [5000]);
  });
});
