import { afterEach, describe, it } from "vitest";
import assert from "node:assert/strict";
import { Code, ConnectError } from "@connectrpc/connect";
import { HostOrigin } from "../../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { HostRegistry } from "../../../aggregator/hosts/host-registry.js";
import { tempDir } from "../../helpers/temp-dir.js";

let dir: ReturnType<typeof tempDir> | undefined;
let hosts: HostRegistry | undefined;

afterEach(() => {
  hosts?.close();
  dir?.remove();
  hosts = undefined;
  dir = undefined;
});

describe("HostRegistry: configured hosts", () => {
  it("RemoveHost of a --hosts / --hosts-file host is FAILED_PRECONDITION naming the flag; API hosts go", () => {
    dir = tempDir("host-configured");
    hosts = new HostRegistry(dir.path, { initialMs: 100, maxMs: 100 });
    hosts.load([
      { name: "from-flag", address: "127.0.0.1:1", origin: HostOrigin.FLAG, perHostTimeoutMs: undefined },
      { name: "from-file", address: "127.0.0.1:2", origin: HostOrigin.FILE, perHostTimeoutMs: undefined },
    ]);
    hosts.add({ name: "api", address: "127.0.0.1:3", origin: HostOrigin.API, perHostTimeoutMs: undefined });
    for (const [name, flag] of [["from-flag", "--hosts"], ["from-file", "--hosts-file"]] as const) {
      assert.throws(
        () => hosts!.remove(name),
        (e: unknown) => e instanceof ConnectError && e.code === Code.FailedPrecondition && e.rawMessage.includes(`configured by ${flag}`),
      );
    }
    hosts.remove("api");
    assert.deepEqual(hosts.list().map((h) => h.config.name), ["from-file", "from-flag"]);
  });
});
