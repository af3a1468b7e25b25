import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { once } from "node:events";
import { ConntrackProcessSource } from "../../agent/kernel/conntrack-process-source.js";
import { repoPath } from "../helpers/paths.js";

// The agent keeps the netlink binding in a reader process of its own (it can abort on socket
// overflows). A reader that dies costs lost events — reported, then a new reader and an
// 'overflow' so the controller resyncs — never the agent.

const skip = process.getuid?.() !== 0 ? "needs root (CAP_NET_ADMIN) to read conntrack" : false;

describe.skipIf(skip)("ConntrackProcessSource", () => {
  it("survives its reader being killed: error, new reader, overflow (resync), dumps work again", async () => {
    // The reader is compiled next to the agent's JavaScript (scripts/setup.sh), not beside this source.
    const source = new ConntrackProcessSource({ readerPath: repoPath("dist", "agent", "kernel", "conntrack-reader") });
    try {
      await source.start();
      const first = source.readerPid!;
      assert.ok(first > 0);
      assert.ok(Array.isArray(await source.dump()));
      const errored = once(source, "error");
      // Not events.once: that rejects on the 'error' that comes first.
      const overflowed = new Promise<void>((r) => source.once("overflow", () => r()));
      process.kill(first, "SIGKILL");
      const [err] = (await errored) as [Error];
      assert.match(err.message, /conntrack reader died \(SIGKILL\)/);
      await overflowed;
      assert.ok(source.readerPid !== undefined && source.readerPid !== first, "a new reader");
      assert.ok(Array.isArray(await source.dump()), "dumps work through the new reader");
      assert.equal(source.counters.restarts, 1);
      assert.equal(source.counters.overflows, 1);
    } finally {
      source.close();
    }
  });
});
