import { afterAll, beforeAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import { Code, ConnectError } from "@connectrpc/connect";
import { fleetClient } from "../helpers/clients.js";
import { runFleetlet, startDaemon, type DaemonProcess } from "../helpers/daemon-process.js";
import { tempDir } from "../helpers/temp-dir.js";

// Issue 13: AddHost could point the aggregator at any address (169.254.169.254:80, dialled
// forever). With --add-host-allow, only the listed addresses may be added; the hosts of
// --hosts stay the operator's.

const dir = tempDir("add-host-allow");
let aggregator: DaemonProcess;

beforeAll(async () => {
  aggregator = await startDaemon(["aggregator", "--listen", "127.0.0.1:0", "--state-dir", dir.path, "--metrics-listen", "off", "--add-host-allow", "127.0.0.0/8", "--hosts", "configured=192.0.2.1:7701"]);
});

afterAll(async () => {
  await aggregator?.stop();
  dir.remove();
});

/** The error a call ended with; a call that succeeded fails the test. */
async function codeOf(p: Promise<unknown>): Promise<{ code: Code; message: string }> {
  try {
    await p;
  } catch (e) {
    const err = ConnectError.from(e);
    return { code: err.code, message: err.rawMessage };
  }
  assert.fail("the call succeeded");
}

describe("AddHost with --add-host-allow", () => {
  it("refuses an address outside the list (also as a dry run), admits one inside, and keeps --hosts", async () => {
    const c = fleetClient(aggregator.address);
    try {
      for (const dryRun of [true, false]) {
        const r = await codeOf(c.fleet.addHost({ name: "meta", address: "169.254.169.254:80", dryRun }));
        assert.equal(r.code, Code.PermissionDenied, r.message);
        assert.match(r.message, /address: 169\.254\.169\.254 is outside --add-host-allow \(127\.0\.0\.0\/8\)/);
      }
      const added = await c.fleet.addHost({ name: "local", address: "127.0.0.1:1" });
      assert.equal(added.host?.address, "127.0.0.1:1");
      const names = (await c.fleet.listHosts({})).hosts.map((h) => h.name).sort();
      assert.deepEqual(names, ["configured", "local"]);
    } finally {
      c.close();
    }
  });

  it("a list it cannot read stops the aggregator at start with one line", async () => {
    const r = await runFleetlet(["aggregator", "--listen", "127.0.0.1:0", "--state-dir", dir.path, "--metrics-listen", "off", "--add-host-allow", "10.0.0.0/40"]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /--add-host-allow.*"10\.0\.0\.0\/40": bad prefix length/);
  });
});
