import { afterAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { ConntrackFlow } from "../../../agent/kernel/conntrack-decoder.js";
import { createTrackingCheck } from "../../../agent/standby/tracking-check.js";
import { tempDir } from "../../helpers/temp-dir.js";

// The tracking check tells a conntrack that reads but tracks nothing (no rule uses it in the
// namespace: every instance would look idle) from one that works. The kernel's part is played by
// the socket table: a "tracking" dump lists the loopback connections open right now, as the
// conntrack table would; a "blind" one lists nothing.

const dir = tempDir("tracking-check");
afterAll(() => dir.remove());

function sysctls(name: string, values: Record<string, string>): string {
  const d = join(dir.path, name);
  mkdirSync(d, { recursive: true });
  for (const [k, v] of Object.entries(values)) writeFileSync(join(d, k), `${v}\n`);
  return d;
}

/** ESTABLISHED IPv4 loopback TCP connections from /proc/net/tcp, as conntrack flows. */
function loopbackConnections(): ConntrackFlow[] {
  const port = (hex: string) => parseInt(hex.split(":")[1]!, 16);
  return readFileSync("/proc/net/tcp", "latin1")
    .trim()
    .split("\n")
    .slice(1)
    .map((l) => l.trim().split(/\s+/))
    .filter((f) => f[3] === "01" && f[1]!.startsWith("0100007F:") && f[2]!.startsWith("0100007F:"))
    .map((f) => ({ kind: "new" as const, id: undefined, srcIp: "127.0.0.1", srcPort: port(f[1]!), dstIp: "127.0.0.1", dstPort: port(f[2]!), tcpState: 3 }));
}

const tracking = { dump: async () => loopbackConnections() };
const blind = { dump: async (): Promise<ConntrackFlow[]> => [] };

describe("tracking check", () => {
  it("conntrack that tracks: the probe connection is in the dump → no reason", async () => {
    const sys = sysctls("ok", { nf_conntrack_count: "3", nf_conntrack_events: "2" });
    assert.equal(await createTrackingCheck(tracking, { procSysNetfilter: sys })(), undefined);
  });

  it("conntrack that reads but tracks nothing: the reason names the probe, the sysctls and how to enable it", async () => {
    const sys = sysctls("blind", { nf_conntrack_count: "0", nf_conntrack_events: "2" });
    const reason = await createTrackingCheck(blind, { procSysNetfilter: sys })();
    assert.match(reason ?? "", /^conntrack is not tracking flows in the agent's network namespace: a probe connection over loopback was not in the table while open/);
    assert.match(reason ?? "", /\(nf_conntrack loaded, nf_conntrack_events=2\)/);
    assert.equal(await createTrackingCheck(blind, { procSysNetfilter: sys })(), reason, "the same reason at every check (watches compare statuses)");
    assert.match(reason ?? "", /iptables -A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT/);
  });

  it("nf_conntrack not loaded in the namespace (no nf_conntrack_count)", async () => {
    const sys = sysctls("absent", {});
    const reason = await createTrackingCheck(tracking, { procSysNetfilter: sys })();
    assert.match(reason ?? "", /nf_conntrack is not loaded in the agent's network namespace \(no .*nf_conntrack_count\)/);
  });

  it("events switched off (net.netfilter.nf_conntrack_events=0): nothing would wake an instance", async () => {
    const sys = sysctls("noevents", { nf_conntrack_count: "3", nf_conntrack_events: "0" });
    const reason = await createTrackingCheck(tracking, { procSysNetfilter: sys })();
    assert.match(reason ?? "", /nf_conntrack_events=0/);
  });

  it("a dump that fails or hangs is an error of the check, not a verdict", async () => {
    const sys = sysctls("fails", { nf_conntrack_count: "3", nf_conntrack_events: "1" });
    await assert.rejects(createTrackingCheck({ dump: () => Promise.reject(new Error("EPERM")) }, { procSysNetfilter: sys })(), /tracking probe: EPERM/);
    await assert.rejects(createTrackingCheck({ dump: () => new Promise(() => undefined) }, { procSysNetfilter: sys, timeoutMs: 200 })(), /tracking probe: no answer within 200 ms/);
    rmSync(sys, { recursive: true });
  });
});
