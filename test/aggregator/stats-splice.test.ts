import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { ListInstanceStatsResponseSchema as AgentResponse } from "../../gen/fleetlet/agent/v1/metrics_pb.js";
import { ListInstanceStatsResponseSchema as FleetResponse } from "../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { agentStatEntries, hostStatEntries, WireFormatError } from "../../aggregator/stats-splice.js";
import { prng, randomMessage } from "../helpers/random-message.js";

describe("splicing agent answers into the fleet answer", () => {
  it("equals decoding each stat and adding the host, for random answers", () => {
    const seed = Date.now() % 1e9;
    const rnd = prng(seed);
    for (let round = 0; round < 200; round++) {
      const agents = Array.from({ length: 1 + Math.floor(rnd() * 3) }, () => randomMessage(AgentResponse, rnd));
      const hosts = agents.map((_, i) => `host-${i}-é`);
      const spliced = Buffer.concat([
        ...agents.map((a, i) => hostStatEntries(hosts[i]!, agentStatEntries(toBinary(AgentResponse, a)))),
        Buffer.from(toBinary(FleetResponse, create(FleetResponse, { hostResults: [{ host: "host-0-é", code: "OK" }] }))),
      ]);
      const got = fromBinary(FleetResponse, spliced);
      const want = agents.flatMap((a, i) => a.stats.map((s) => ({ ...s, host: hosts[i] })));
      assert.equal(got.stats.length, want.length, `seed ${seed}`);
      got.stats.forEach((s, k) => {
        const w = want[k]!;
        assert.equal(s.host, w.host);
        assert.equal(s.instanceId, w.instanceId);
        assert.equal(s.cpuUsec, w.cpuUsec);
        assert.equal(s.netRxBytes, w.netRxBytes);
        assert.deepEqual(s.unavailable, w.unavailable);
        assert.deepEqual(s.sampledAt?.seconds, w.sampledAt?.seconds);
      });
      assert.equal(got.hostResults[0]?.code, "OK");
    }
  });
  it("refuses a truncated or malformed answer instead of passing garbage on", () => {
    const good = toBinary(AgentResponse, create(AgentResponse, { stats: [{ instanceId: "a" }] }));
    assert.throws(() => agentStatEntries(good.subarray(0, good.length - 1)), WireFormatError);
    assert.throws(() => agentStatEntries(Uint8Array.from([0x0b])), /unsupported wire type 3/);
    assert.throws(() => agentStatEntries(Uint8Array.from([0x0a, 0xff])), WireFormatError);
    // A well-formed outer answer whose stat is broken inside (field 2 runs past the entry).
    assert.throws(() => agentStatEntries(Uint8Array.from([0x0a, 0x02, 0x12, 0x05])), /length 5 runs past the end/);
    // ... or whose sampled_at Timestamp is broken.
    assert.throws(() => agentStatEntries(Uint8Array.from([0x0a, 0x03, 0x1a, 0x01, 0x08])), /truncated varint/);
  });
});
