import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { Code, ConnectError } from "@connectrpc/connect";
import { peerAddress, StreamSlots } from "../../../lib/rpc/stream-slots.js";
import { limitKey } from "../../../lib/rpc/authz/identity.js";

describe("peerAddress", () => {
  it("drops the port of every form grpc-js reports", () => {
    assert.equal(peerAddress("127.0.0.2:5123"), "127.0.0.2");
    assert.equal(peerAddress("[::1]:5123"), "::1");
    assert.equal(peerAddress("::ffff:127.0.0.1:5123"), "::ffff:127.0.0.1");
    assert.equal(peerAddress("unix:/run/x.sock"), "unix:/run/x.sock");
  });
});

describe("StreamSlots", () => {
  it("counts per client key and in all; a release is idempotent", () => {
    const slots = new StreamSlots({ maxStreams: 3, maxStreamsPerPeer: 2 });
    const a1 = slots.acquire("10.0.0.1");
    slots.acquire("10.0.0.1");
    assert.throws(() => slots.acquire("10.0.0.1"), (e: unknown) => e instanceof ConnectError && e.code === Code.ResourceExhausted && /for 10\.0\.0\.1: at most 2 per client/.test(e.rawMessage));
    slots.acquire("10.0.0.2");
    assert.throws(() => slots.acquire("10.0.0.3"), /at most 3 on this server \(--max-watch-streams\)/);
    a1();
    a1();
    assert.equal(slots.open, 2);
    slots.acquire("10.0.0.3");
    assert.throws(() => slots.acquire("10.0.0.4"), /--max-watch-streams\)/);
  });

  it("a client is its identity when it has one, else its address without the port", () => {
    assert.equal(limitKey(undefined, "10.0.0.1:1000"), "10.0.0.1");
    assert.equal(limitKey({ name: "local", via: "local", role: "admin" }, "10.0.0.1:1001"), "10.0.0.1");
    assert.equal(limitKey({ name: "alice", via: "certificate", role: "viewer" }, "10.0.0.1:1000"), "certificate alice");
    assert.equal(limitKey({ name: "alice", via: "token", role: "viewer" }, "10.0.0.9:7"), "token alice");
  });
});
