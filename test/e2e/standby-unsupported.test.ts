import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { FLEETLET_BIN } from "../helpers/daemon-process.js";
import { agentClients } from "../helpers/clients.js";
import { tempDir } from "../helpers/temp-dir.js";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { StandbyService, StandbyState } from "../../gen/fleetlet/agent/v1/standby_pb.js";
import { createGrpcJsTransport } from "../../lib/rpc/grpc-transport.js";
import { standInProcess } from "../helpers/stand-in-process.js";

// The instances' pid: not the agent's, nor the test process (an ancestor of the agent).
const standIn = standInProcess();

// Without CAP_NET_ADMIN the conntrack table cannot be read: standby says UNSUPPORTED with the
// reason, and the rest of the agent works.

const skip = process.getuid?.() !== 0 ? "needs root to start the agent with a capability taken away" : false;

describe.skipIf(skip)("an agent without CAP_NET_ADMIN", () => {
  it("reports UNSUPPORTED with the reason, and registers and measures as usual", async () => {
    const d = tempDir("unpriv");
    // Still root (so it can read the checkout wherever it lives), but with CAP_NET_ADMIN out of
    // the bounding set: the conntrack table cannot be read.
    const child = spawn("setpriv", ["--bounding-set=-net_admin", "--inh-caps=-net_admin", process.execPath, FLEETLET_BIN, "agent", "--listen", "127.0.0.1:0", "--state-dir", `${d.path}/agent`, "--metrics-listen", "off"], { stdio: ["ignore", "pipe", "pipe"] });
    try {
      const address = await new Promise<string>((res, rej) => {
        const t = setTimeout(() => rej(new Error("agent not serving")), 15_000);
        let err = "";
        child.stderr!.on("data", (b: Buffer) => (err += b.toString()));
        child.once("exit", (code) => rej(new Error(`agent exited ${code}: ${err}`)));
        createInterface({ input: child.stdout! }).on("line", (l) => {
          if (!l.includes('"agent serving"')) return;
          clearTimeout(t);
          res((JSON.parse(l) as { address: string }).address);
        });
      });
      const c = agentClients(address);
      const t = createGrpcJsTransport(address);
      try {
        await c.inventory.registerInstance({ instance: { id: "u-1", pid: standIn.pid, ip: "10.0.0.1", networkEnabled: true, standbyPolicy: { enabled: true, idleTimeout: "5m" } } });
        const s = (await createClient(StandbyService, t).getStandbyStatus({ instanceId: "u-1" })).status!;
        assert.equal(s.status, StandbyState.UNSUPPORTED);
        assert.equal(s.supported, false);
        assert.match(s.unsupportedReason, /^conntrack unavailable: .*CAP_NET_ADMIN/);
        // Nothing that would change standby pretends to work (seed 002 edge cases).
        const sb = createClient(StandbyService, t);
        for (const [what, call] of [
          ["SetStandbyPolicy", () => sb.setStandbyPolicy({ instanceId: "u-1", policy: { enabled: true, idleTimeout: "10m" } })],
          ["HoldStandby", () => sb.holdStandby({ instanceId: "u-1", duration: { seconds: 60n } })],
          ["ResetIdle", () => sb.resetIdle({ instanceId: "u-1" })],
        ] as const) {
          await assert.rejects(call(), (e: unknown) => {
            assert.ok(e instanceof ConnectError, what);
            assert.equal(e.code, Code.FailedPrecondition, what);
            assert.match(e.rawMessage, new RegExp(`^${what}: standby is not supported on this agent: conntrack unavailable: `));
            return true;
          });
        }
        const stats = (await c.metrics.getInstanceStats({ instanceId: "u-1" })).stats!;
        assert.ok(stats.cpuUsec !== undefined, "metrics still work");
      } finally {
        c.close();
        t.close();
      }
    } finally {
      child.kill("SIGTERM");
      await new Promise((r) => (child.exitCode !== null ? r(null) : child.once("exit", r)));
      d.remove();
    }
  });
});
