import { afterAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import { createClient } from "@connectrpc/connect";
import { ConnectError } from "@connectrpc/connect";
import { InventoryService } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { createGrpcJsTransport } from "../../lib/rpc/grpc-transport.js";
import { type DaemonProcess, runFleetlet, startDaemon } from "../helpers/daemon-process.js";
import { tempDir } from "../helpers/temp-dir.js";
import { standInProcess } from "../helpers/stand-in-process.js";

// The instances' pid: not the agent's, nor the test process (an ancestor of the agent).
const standIn = standInProcess();

// The standby controller's timings and the shortest idle timeout are agent flags (seed 002's
// ControllerOptions), with standby.md's defaults: 2 s reconcile, 5 min sync, 200 ms reconnect,
// 5 s minimum idle timeout.

const cleanup: (() => unknown)[] = [];
afterAll(async () => {
  for (const c of cleanup.reverse()) await c();
});

async function agent(extra: string[]): Promise<{ daemon: DaemonProcess; register(idleTimeout: string): Promise<string> }> {
  const dir = tempDir("standby-flags");
  const daemon = await startDaemon(["agent", "--listen", "127.0.0.1:0", "--metrics-listen", "off", "--state-dir", dir.path, ...extra]);
  const transport = createGrpcJsTransport(daemon.address);
  cleanup.push(() => dir.remove(), () => daemon.stop(), () => transport.close());
  const inventory = createClient(InventoryService, transport);
  return {
    daemon,
    async register(idleTimeout) {
      const r = await inventory.registerInstance({ instance: { id: `vm-${idleTimeout}`, pid: standIn.pid, ip: "10.0.0.2", networkEnabled: true, standbyPolicy: { enabled: true, idleTimeout } } });
      return r.instance!.standbyPolicy!.idleTimeout;
    },
  };
}

const timings = (d: DaemonProcess) => JSON.parse(d.lines.find((l) => l.includes('"msg":"standby timings"')) ?? "{}") as Record<string, unknown>;

describe("standby flags", () => {
  it("defaults: reconcile 2 s, sync 5 min, reconnect 200 ms; an idle timeout under 5 s is refused, naming the field", async () => {
    const a = await agent([]);
    assert.deepEqual([timings(a.daemon).reconcile_ms, timings(a.daemon).sync_ms, timings(a.daemon).reconnect_ms], [2000, 300_000, 200]);
    await assert.rejects(a.register("2s"), (e: unknown) => {
      assert.ok(e instanceof ConnectError);
      assert.match(e.rawMessage, /^instance\.standby_policy\.idle_timeout: "2s" is below the minimum 5s/);
      return true;
    });
    assert.equal(await a.register("5s"), "5s");
  });

  it("--standby-min-idle, --standby-reconcile-interval, --standby-sync-interval, --standby-reconnect-delay", async () => {
    const a = await agent(["--standby-min-idle", "1s", "--standby-reconcile-interval", "3s", "--standby-sync-interval", "1m", "--standby-reconnect-delay", "500ms"]);
    assert.deepEqual([timings(a.daemon).reconcile_ms, timings(a.daemon).sync_ms, timings(a.daemon).reconnect_ms], [3000, 60_000, 500]);
    assert.equal(await a.register("2s"), "2s", "accepted above the configured minimum");
  });

  it("a zero or malformed duration is refused with exit code 2", async () => {
    for (const [flag, value] of [["--standby-sync-interval", "0"], ["--standby-min-idle", "5"], ["--standby-reconnect-delay", "soon"]] as const) {
      const r = await runFleetlet(["agent", flag, value]);
      assert.equal(r.code, 2, `${flag} ${value}: ${r.stderr}`);
      assert.match(r.stderr, new RegExp(flag));
    }
  });
});
