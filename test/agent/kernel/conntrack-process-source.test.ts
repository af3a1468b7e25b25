import { afterAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import { chmodSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ConntrackProcessSource, type ObservedFlow } from "../../../agent/kernel/conntrack-process-source.js";
import { monotonicMs } from "../../../lib/monotonic-clock.js";
import { repoPath } from "../../helpers/paths.js";
import { tempDir } from "../../helpers/temp-dir.js";

// The source's own work, without root: a stand-in reader speaks the real reader's frame protocol
// (native/conntrack-reader.c) and answers each dump request with the captured events of a
// loopback connection (test/fixtures/conntrack), written at once, then NLMSG_DONE.

const events = readFileSync(repoPath("test", "fixtures", "conntrack", "loopback-session.hex"), "utf8").trim().split("\n").slice(2);
const dir = tempDir("fake-conntrack-reader");
afterAll(() => dir.remove());

const reader = join(dir.path, "fake-reader");
writeFileSync(
  reader,
  `#!${process.execPath}
const EVENTS = ${JSON.stringify(events)}.map((h) => Buffer.from(h, "hex"));
const frame = (kind, body) => { const h = Buffer.alloc(8); h.writeUInt32LE(kind, 0); h.writeUInt32LE(body.length, 4); return Buffer.concat([h, body]); };
const ready = Buffer.alloc(4); ready.writeUInt32LE(1 << 20, 0);
process.stdout.write(frame(1, ready));
let input = Buffer.alloc(0);
process.stdin.on("data", (b) => {
  input = Buffer.concat([input, b]);
  while (input.length >= 4 && input.length >= 4 + input.readUInt32LE(0)) {
    const req = input.subarray(4, 4 + input.readUInt32LE(0));
    input = input.subarray(4 + req.length);
    const done = Buffer.alloc(20); done.writeUInt32LE(20, 0); done.writeUInt16LE(3, 4); done.writeUInt16LE(2, 6); done.writeUInt32LE(req.readUInt32LE(8), 8);
    process.stdout.write(Buffer.concat([...EVENTS.map((e) => frame(2, e)), frame(3, done)]));
  }
});
`,
);
chmodSync(reader, 0o755);

describe("ConntrackProcessSource (stand-in reader)", () => {
  it("each flow event carries when its bytes arrived (ObservedAt), not when it was decoded or handled", async () => {
    const source = new ConntrackProcessSource({ readerPath: reader });
    const seen: { flow: ObservedFlow; handledAt: number }[] = [];
    source.on("flow", (flow: ObservedFlow) => {
      seen.push({ flow, handledAt: monotonicMs() });
      // A slow listener: the events behind it wait, their ObservedAt must not move.
      const until = monotonicMs() + 30;
      while (monotonicMs() < until);
    });
    try {
      const before = monotonicMs();
      await source.start(); // its dump brings the events
      await new Promise((r) => setTimeout(r, 50));
      assert.ok(seen.length >= 4, `${seen.length} events`);
      for (const { flow, handledAt } of seen) {
        assert.equal(typeof flow.observedAt, "number");
        assert.ok(flow.observedAt >= before && flow.observedAt <= handledAt, `observed ${flow.observedAt}, handled ${handledAt}`);
      }
      const last = seen[seen.length - 1]!;
      assert.ok(last.handledAt - last.flow.observedAt >= 30 * (seen.length - 1) - 1, `the last was handled ${last.handledAt - last.flow.observedAt} ms after it arrived`);
    } finally {
      source.close();
    }
  });

  it("dropAllEvents (fault injection) drops every event, new and destroy, and counts them; dumps still work", async () => {
    const source = new ConntrackProcessSource({ readerPath: reader, dropAllEvents: true });
    let flows = 0;
    source.on("flow", () => flows++);
    try {
      await source.start();
      assert.ok(Array.isArray(await source.dump()));
      await new Promise((r) => setTimeout(r, 50));
      assert.equal(flows, 0);
      assert.equal(source.counters.events.new + source.counters.events.destroy, 0);
      assert.equal(source.counters.injectedDrops, 2 * events.length, "every event of both dumps' answers");
    } finally {
      source.close();
    }
  });
});
