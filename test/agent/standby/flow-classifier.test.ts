import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { isActiveInbound, isActiveTcpState, type Flow } from "../../../agent/standby/flow-classifier.js";
import { parseCidr } from "../../../agent/standby/standby-policy.js";

describe("classifier", () => {
  it("check 2: states 0, 7, 8 are inactive; 1-6 and 9-13 active (by number)", () => {
    assert.deepEqual([0, 7, 8].map(isActiveTcpState), [false, false, false]);
    for (const s of [1, 2, 3, 4, 5, 6, 9, 10, 11, 12, 13]) assert.equal(isActiveTcpState(s), true, String(s));
  });
  it("check 1: six flows, two active inbound", () => {
    const ip = "192.168.100.10";
    const target = { ip, ignoreDestinationPorts: new Set([22]), ignoreSourceCidrs: [parseCidr("10.0.0.0/8")!] };
    const ESTABLISHED = 3;
    const flows: Flow[] = [
      { srcIp: "1.2.3.4", srcPort: 40000, dstIp: ip, dstPort: 8080, tcpState: ESTABLISHED },
      { srcIp: ip, srcPort: 40001, dstIp: "8.8.8.8", dstPort: 443, tcpState: ESTABLISHED },
      { srcIp: "10.1.2.3", srcPort: 40002, dstIp: ip, dstPort: 8080, tcpState: ESTABLISHED },
      { srcIp: "5.6.7.8", srcPort: 40003, dstIp: ip, dstPort: 22, tcpState: ESTABLISHED },
      { srcIp: "9.9.9.9", srcPort: 40004, dstIp: ip, dstPort: 8080, tcpState: 7 },
      { srcIp: "7.7.7.7", srcPort: 40005, dstIp: ip, dstPort: 8080, tcpState: 1 },
    ];
    const active = flows.filter((f) => isActiveInbound(f, target));
    assert.deepEqual(active.map((f) => f.srcIp), ["1.2.3.4", "7.7.7.7"]);
  });
});
