import { afterEach, describe, it } from "vitest";
import assert from "node:assert/strict";
import { Code, ConnectError } from "@connectrpc/connect";
import { HostOrigin } from "../../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { HostRegistry } from "../../../aggregator/hosts/host-registry.js";
import { tempDir } from "../../helpers/temp-dir.js";

let dir: ReturnType<typeof tempDir> | undefined;
let hosts: HostRegistry | undefined;

afterEach(() => {
  for (const h of hosts?.list() ?? []) h.close();
  dir?.remove();
  hosts = undefined;
  dir = undefined;
});

describe("HostRegistry cap", () => {
  it("AddHost past --max-hosts gets RESOURCE_EXHAUSTED naming the flag; re-adding a host is still fine", () => {
    dir = tempDir("host-limits");
    hosts = new HostRegistry(dir.path, { initialMs: 100, maxMs: 100 }, 2);
    hosts.load([{ name: "configured", address: "127.0.0.1:1", origin: HostOrigin.FLAG, perHostTimeoutMs: undefined }]);
    hosts.add({ name: "h1", address: "127.0.0.1:2", origin: HostOrigin.API, perHostTimeoutMs: undefined });
    assert.throws(
      () => hosts!.add({ name: "h2", address: "127.0.0.1:3", origin: HostOrigin.API, perHostTimeoutMs: undefined }),
      (e: unknown) => e instanceof ConnectError && e.code === Code.ResourceExhausted && /maximum of 2 hosts \(--max-hosts\)/.test(e.rawMessage),
    );
    assert.deepEqual(hosts.list().map((h) => h.config.name), ["configured", "h1"]);
    hosts.add({ name: "h1", address: "127.0.0.1:2", origin: HostOrigin.API, perHostTimeoutMs: undefined });
  });
});
