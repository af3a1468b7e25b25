import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { StandbyPolicySchema } from "../../../gen/fleetlet/agent/v1/standby_pb.js";
import { formatGoDuration, parseGoDuration } from "../../../lib/go-duration.js";
import { cidrContains, normalizeStandbyPolicy, parseCidr } from "../../../agent/standby/standby-policy.js";

const norm = (p: MessageInitShape<typeof StandbyPolicySchema>) => normalizeStandbyPolicy(create(StandbyPolicySchema, p), "policy");

function rejects(p: MessageInitShape<typeof StandbyPolicySchema>, field: string, quoted?: string): void {
  assert.throws(
    () => norm(p),
    (e: unknown) => {
      assert.ok(e instanceof ConnectError && e.code === Code.InvalidArgument, String(e));
      assert.ok(e.rawMessage.startsWith(`${field}: `), e.rawMessage);
      if (quoted !== undefined) assert.ok(e.rawMessage.includes(JSON.stringify(quoted)), `${e.rawMessage} quotes ${quoted}`);
      return true;
    },
  );
}

describe("Go durations", () => {
  it("canonical forms of standby.md", () => {
    for (const [input, canonical] of [["300s", "5m0s"], ["90m", "1h30m0s"], ["1500ms", "1.5s"], ["45s", "45s"], ["2h", "2h0m0s"], ["1.5h", "1h30m0s"], ["1h30m", "1h30m0s"]]) {
      assert.equal(formatGoDuration(parseGoDuration(input!)), canonical, input);
    }
  });
  it("formats like Go below a second and for zero", () => {
    assert.equal(formatGoDuration(0), "0s");
    assert.equal(formatGoDuration(500e6), "500ms");
    assert.equal(formatGoDuration(1500), "1.5µs");
    assert.equal(formatGoDuration(-90e9), "-1m30s");
  });
  it("refuses what Go refuses", () => {
    for (const bad of ["", "300", "5 min", "5x", ".s", "1h-5m"]) assert.throws(() => parseGoDuration(bad), Error, bad);
    assert.equal(parseGoDuration("0"), 0);
    assert.equal(parseGoDuration("-5m"), -300e9);
  });
});

describe("normalizeStandbyPolicy", () => {
  it("check 3: canonical timeout, masked/deduplicated/sorted CIDRs, sorted unique ports", () => {
    const p = norm({ enabled: true, idleTimeout: "300s", ignoreSourceCidrs: ["10.0.0.0/8", " 10.0.0.0/8 ", "192.168.1.1/24"], ignoreDestinationPorts: [9000, 22, 9000] });
    assert.equal(p.idleTimeout, "5m0s");
    assert.deepEqual(p.ignoreSourceCidrs, ["10.0.0.0/8", "192.168.1.0/24"]);
    assert.deepEqual(p.ignoreDestinationPorts, [22, 9000]);
  });
  it("check 4: rejections name the field and quote the value", () => {
    rejects({ enabled: true, idleTimeout: "0s" }, "policy.idle_timeout", "0s");
    rejects({ enabled: true, idleTimeout: "-5m" }, "policy.idle_timeout", "-5m");
    rejects({ enabled: true, idleTimeout: "" }, "policy.idle_timeout");
    rejects({ enabled: true, idleTimeout: "300" }, "policy.idle_timeout", "300");
    rejects({ enabled: true, idleTimeout: "5 min" }, "policy.idle_timeout", "5 min");
    rejects({ enabled: true, idleTimeout: "1s" }, "policy.idle_timeout", "1s");
    rejects({ enabled: true, idleTimeout: "31d" }, "policy.idle_timeout");
    rejects({ enabled: true, idleTimeout: "800h" }, "policy.idle_timeout", "800h");
    rejects({ enabled: true, idleTimeout: "5m", ignoreDestinationPorts: [22, 0] }, "policy.ignore_destination_ports[1]");
    rejects({ enabled: true, idleTimeout: "5m", ignoreSourceCidrs: ["10.0.0.1"] }, "policy.ignore_source_cidrs[0]", "10.0.0.1");
    rejects({ enabled: true, idleTimeout: "5m", ignoreSourceCidrs: ["010.0.0.0/8"] }, "policy.ignore_source_cidrs[0]", "010.0.0.0/8");
    rejects({ enabled: true, idleTimeout: "5m", ignoreSourceCidrs: ["10.0.0.0/33"] }, "policy.ignore_source_cidrs[0]", "10.0.0.0/33");
    rejects({ enabled: true, idleTimeout: "5m", ignoreSourceCidrs: ["10.0.0.0/08"] }, "policy.ignore_source_cidrs[0]");
    rejects({ enabled: true, idleTimeout: "5m", ignoreSourceCidrs: ["fe80::1%eth0/64"] }, "policy.ignore_source_cidrs[0]");
    rejects({ enabled: true, idleTimeout: "5m", driver: "magic" }, "policy.driver", "magic");
  });
  it("a disabled policy keeps (validated) settings so enabling restores them", () => {
    const p = norm({ enabled: false, idleTimeout: " 90m ", ignoreDestinationPorts: [22] });
    assert.equal(p.enabled, false);
    assert.equal(p.idleTimeout, "1h30m0s");
    assert.deepEqual(p.ignoreDestinationPorts, [22]);
    assert.equal(norm({ enabled: false }).idleTimeout, "", "no timeout needed while disabled");
  });
  it("IPv6 networks are masked and written in RFC 5952 form", () => {
    assert.deepEqual(norm({ idleTimeout: "5m", ignoreSourceCidrs: ["FD00:0:0:0:1::7/64", "::ffff:10.1.2.3/120"] }).ignoreSourceCidrs, ["::ffff:a01:200/120", "fd00::/64"].sort());
  });
});

describe("CIDRs", () => {
  it("contains by prefix, per family", () => {
    const ten = parseCidr("10.0.0.0/8")!;
    assert.ok(cidrContains(ten, "10.255.1.2"));
    assert.ok(!cidrContains(ten, "11.0.0.1"));
    assert.ok(!cidrContains(ten, "::1"));
    const v6 = parseCidr("fd00::/8")!;
    assert.ok(cidrContains(v6, "fd12::1"));
    assert.ok(!cidrContains(v6, "fe80::1"));
    assert.ok(cidrContains(parseCidr("0.0.0.0/0")!, "1.2.3.4"));
  });
});
