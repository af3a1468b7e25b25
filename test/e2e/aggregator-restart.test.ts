import { afterAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import { startDaemon, type DaemonProcess } from "../helpers/daemon-process.js";
import { fleetClient } from "../helpers/clients.js";
import { tempDir } from "../helpers/temp-dir.js";
import { HostOrigin } from "../../gen/fleetlet/aggregator/v1/fleet_pb.js";

// Hosts added through AddHost survive an aggregator killed with SIGKILL; configured hosts come
// from the flags again; RemoveHost is durable too.

const state = tempDir("agg-restart");
let agg: DaemonProcess | undefined;
const start = () => startDaemon(["aggregator", "--listen", "127.0.0.1:0", "--state-dir", state.path, "--metrics-listen", "off", "--hosts", "cfg=127.0.0.1:1"]);

afterAll(async () => {
  await agg?.stop();
  state.remove();
});

describe("aggregator restart", () => {
  it("keeps AddHost's hosts across SIGKILL, and RemoveHost's removals", async () => {
    agg = await start();
    let c = fleetClient(agg.address);
    await c.fleet.addHost({ name: "api-1", address: "127.0.0.1:2", perHostTimeout: { seconds: 3n, nanos: 0 } });
    await c.fleet.addHost({ name: "api-2", address: "127.0.0.1:3" });
    c.close();
    agg.child.kill("SIGKILL");
    await agg.exited;
    agg = await start();
    c = fleetClient(agg.address);
    let hosts = (await c.fleet.listHosts({})).hosts;
    assert.deepEqual(hosts.map((h) => [h.name, h.address, HostOrigin[h.origin]]), [
      ["api-1", "127.0.0.1:2", "API"],
      ["api-2", "127.0.0.1:3", "API"],
      ["cfg", "127.0.0.1:1", "FLAG"],
    ]);
    assert.equal(hosts[0]!.perHostTimeout?.seconds, 3n);
    await c.fleet.removeHost({ name: "api-1" });
    // Adding the same name with another address is refused; with the same address it is idempotent.
    await assert.rejects(c.fleet.addHost({ name: "api-2", address: "127.0.0.1:4" }), /already exists with address 127\.0\.0\.1:3/);
    await c.fleet.addHost({ name: "api-2", address: "127.0.0.1:3" });
    c.close();
    agg.child.kill("SIGKILL");
    await agg.exited;
    agg = await start();
    c = fleetClient(agg.address);
    hosts = (await c.fleet.listHosts({})).hosts;
    c.close();
    assert.deepEqual(hosts.map((h) => h.name), ["api-2", "cfg"]);
  });
});
