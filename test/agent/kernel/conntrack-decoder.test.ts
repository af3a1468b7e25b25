import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { ConntrackDecodeError, decodeDatagram, dumpRequest, type ConntrackFlow } from "../../../agent/kernel/conntrack-decoder.js";
import { prng } from "../../helpers/random-message.js";
import { repoPath } from "../../helpers/paths.js";

// Bytes captured from a real NETLINK_NETFILTER socket (see test/fixtures/conntrack/README.md):
// a dump of one ESTABLISHED loopback flow, NLMSG_DONE, then the events of a second connection
// to 127.0.0.1:9000 opened and closed.
const FIXTURE = repoPath("test", "fixtures", "conntrack", "loopback-session.hex");
const datagrams = readFileSync(FIXTURE, "utf8").trim().split("\n").map((h) => Buffer.from(h, "hex"));

const flows = (msgs: ReturnType<typeof decodeDatagram>): ConntrackFlow[] => msgs.flatMap((m) => (m.type === "flow" ? [m.flow] : []));

describe("ctnetlink decoder on captured bytes", () => {
  it("decodes the dump: one ESTABLISHED flow to 127.0.0.1:9000, then DONE", () => {
    const dump = decodeDatagram(datagrams[0]!);
    const f = flows(dump);
    assert.equal(f.length, 1);
    assert.equal(f[0]!.kind, "new");
    assert.equal(f[0]!.srcIp, "127.0.0.1");
    assert.equal(f[0]!.dstIp, "127.0.0.1");
    assert.equal(f[0]!.dstPort, 9000);
    assert.equal(f[0]!.tcpState, 3, "ESTABLISHED");
    assert.ok(f[0]!.id !== undefined && f[0]!.id > 0);
    assert.deepEqual(decodeDatagram(datagrams[1]!), [{ type: "done" }]);
  });
  it("decodes the events of a short connection: SYN_SENT first, TIME_WAIT later, all on one tuple", () => {
    const events = datagrams.slice(2).flatMap((d) => flows(decodeDatagram(d)));
    assert.ok(events.length >= 4, `${events.length} events`);
    const tuple = `${events[0]!.srcIp}:${events[0]!.srcPort}>${events[0]!.dstIp}:${events[0]!.dstPort}`;
    for (const e of events) assert.equal(`${e.srcIp}:${e.srcPort}>${e.dstIp}:${e.dstPort}`, tuple);
    assert.equal(events[0]!.tcpState, 1, "the first event of a new connection is SYN_SENT");
    assert.ok(events.some((e) => e.tcpState === 3), "it became ESTABLISHED");
    assert.ok(events.some((e) => e.tcpState === 7), "and went to TIME_WAIT");
    assert.equal(new Set(events.map((e) => e.id)).size, 1, "one conntrack id");
  });
  it("builds the dump request the kernel answered", () => {
    assert.equal(dumpRequest(1).toString("hex"), "1400000001010103010000000000000002000000");
  });
  it("cut at every byte boundary: parses, or says ConntrackDecodeError; never anything else", () => {
    for (const d of datagrams) {
      for (let cut = 0; cut < d.length; cut++) {
        try {
          decodeDatagram(d.subarray(0, cut));
        } catch (e) {
          assert.ok(e instanceof ConntrackDecodeError, `cut ${cut}: ${String(e)}`);
        }
      }
    }
  });
  it("fuzz: random byte flips never throw anything but ConntrackDecodeError", () => {
    const seed = Date.now() % 1e9;
    const rnd = prng(seed);
    for (let i = 0; i < 20_000; i++) {
      const d = Buffer.from(datagrams[Math.floor(rnd() * datagrams.length)]!);
      for (let k = 0; k < 1 + Math.floor(rnd() * 4); k++) d[Math.floor(rnd() * d.length)] = Math.floor(rnd() * 256);
      try {
        for (const m of decodeDatagram(d)) {
          if (m.type === "flow") assert.ok(m.flow.srcPort <= 65535 && m.flow.tcpState <= 255);
        }
      } catch (e) {
        assert.ok(e instanceof ConntrackDecodeError, `seed ${seed}: ${String(e)}`);
      }
    }
  });
});
