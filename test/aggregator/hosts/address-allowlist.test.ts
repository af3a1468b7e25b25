import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { AddressAllowlist } from "../../../aggregator/hosts/address-allowlist.js";

describe("AddressAllowlist (--add-host-allow)", () => {
  it("admits IPs inside its CIDRs and exact names, nothing else", () => {
    const list = new AddressAllowlist("10.0.0.0/8, 192.168.1.7, fd00::/8, agent-1.example.com");
    for (const host of ["10.1.2.3", "192.168.1.7", "fd00::1", "AGENT-1.example.com"]) assert.equal(list.allows(host), true, host);
    for (const host of ["169.254.169.254", "192.168.1.8", "11.0.0.1", "::1", "agent-2.example.com", "example.com", "localhost"]) assert.equal(list.allows(host), false, host);
  });
  it("refuses entries it cannot read, naming them", () => {
    assert.throws(() => new AddressAllowlist("10.0.0.0/33"), /"10\.0\.0\.0\/33": bad prefix length/);
    assert.throws(() => new AddressAllowlist("not a host!"), /"not a host!" is neither an IP, a CIDR nor a host name/);
    assert.throws(() => new AddressAllowlist(" , "), /the list is empty/);
  });
});
