import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { discoverHypervisors, parseHypervisorCommandLine } from "../../../agent/discovery/hypervisor-discovery.js";
import { tempDir } from "../../helpers/temp-dir.js";

describe("hypervisor command lines", () => {
  it("cloud-hypervisor: vcpus, memory, tap and a name from the API socket", () => {
    const h = parseHypervisorCommandLine(100, [
      "/usr/bin/cloud-hypervisor", "--api-socket", "path=/run/vms/web-1.sock", "--cpus", "boot=4,max=8",
      "--memory", "size=2048M,shared=on", "--net", "tap=tap-web1,mac=aa:bb:cc:dd:ee:ff",
    ]);
    assert.deepEqual(h, { pid: 100, hypervisor: "cloud-hypervisor", id: "ch-web-1", name: "web-1", vcpus: 4, memoryBytes: 2048n << 20n, tapDevice: "tap-web1" });
  });
  it("qemu: -name guest=, -smp, -m with a unit, -netdev tap,ifname=", () => {
    const h = parseHypervisorCommandLine(7, [
      "qemu-system-x86_64", "-name", "guest=db,debug-threads=on", "-smp", "2,sockets=1", "-m", "4G",
      "-netdev", "tap,id=n0,ifname=vnet3,script=no",
    ]);
    assert.deepEqual(h, { pid: 7, hypervisor: "qemu", id: "qemu-db", name: "db", vcpus: 2, memoryBytes: 4n << 30n, tapDevice: "vnet3" });
  });
  it("firecracker: the --id, nothing guessed", () => {
    assert.deepEqual(parseHypervisorCommandLine(9, ["firecracker", "--id", "fc 01", "--api-sock", "/x"]), {
      pid: 9, hypervisor: "firecracker", id: "fc-fc-01", name: "fc-01",
    });
  });
  it("anything else is not a hypervisor; a bare hypervisor is named by its pid", () => {
    assert.equal(parseHypervisorCommandLine(1, ["/usr/bin/node", "qemu-system-x86_64"]), undefined);
    assert.equal(parseHypervisorCommandLine(5, ["cloud-hypervisor"])?.id, "ch-pid5");
  });
  it("scans a /proc tree and skips what is not a process", () => {
    const d = tempDir("discovery");
    for (const [pid, argv] of [["12", ["firecracker", "--id", "a"]], ["13", ["bash"]], ["self", ["x"]]] as const) {
      mkdirSync(join(d.path, pid));
      writeFileSync(join(d.path, pid, "cmdline"), `${argv.join("\0")}\0`);
    }
    const found = discoverHypervisors(d.path);
    d.remove();
    assert.deepEqual(found.map((h) => [h.pid, h.id]), [[12, "fc-a"]]);
  });
});
