import { afterAll, beforeAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import { InstanceState, type Instance } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { InstanceRegistry } from "../../agent/inventory/instance-registry.js";
import { MeteringLedger } from "../../agent/metering/ledger.js";
import type { LedgerEntry } from "../../agent/metering/ledger-entry.js";
import { ContainerInstanceSync } from "../../agent/runtime/container-instances.js";
import type { ContainerRuntime } from "../../agent/runtime/container-runtime.js";
import { createDockerRuntime } from "../../agent/runtime/docker/docker-runtime.js";
import { createLogger } from "../../lib/rpc/logger.js";
import { TEST_IMAGE, TestDockerd, dockerdSkipReason } from "../helpers/dockerd.js";
import { mustRunInCi } from "../helpers/root.js";
import { tempDir } from "../helpers/temp-dir.js";

// Containers are metered with the limits they run under (issue 12 point 8): a real dockerd, the
// Docker runtime, the inventory sync, the registry and a real ledger. `docker run --cpus
// --memory` gives the instance its shape and the ledger's compute.start carries it; `docker
// update` (the engine's "update" event) is a resize; a container without limits has no shape.

const skip = mustRunInCi(dockerdSkipReason());

describe.skipIf(skip)("container shapes from the engine's limits (real dockerd)", () => {
  let d: TestDockerd;
  let rt: ContainerRuntime;
  let registry: InstanceRegistry;
  let ledger: MeteringLedger;
  let sync: ContainerInstanceSync;
  const state = tempDir("docker-shapes");
  const run = (...args: string[]) => d.docker("run", "-d", "--network", "none", ...args);

  beforeAll(async () => {
    d = await TestDockerd.start();
    registry = InstanceRegistry.open(state.path);
    ledger = MeteringLedger.open(`${state.path}/ledger`);
    await registry.attachLedger(ledger);
    rt = createDockerRuntime({ host: d.host });
    sync = new ContainerInstanceSync(registry, [rt], createLogger("test", "silent"));
    await rt.start();
  });

  afterAll(async () => {
    sync?.close();
    await rt?.close();
    await d?.stop();
    state.remove();
  });

  async function instanceUntil(id: string, what: string, pred: (i: Instance) => boolean): Promise<Instance> {
    const end = Date.now() + 20_000;
    for (;;) {
      const i = registry.get(id);
      if (i && pred(i)) return i;
      if (Date.now() > end) throw new Error(`instance ${id}: no ${what} in 20 s (now ${JSON.stringify(i && { vcpus: i.allocatedVcpus, mem: String(i.allocatedMemoryBytes), state: i.state })})`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  const entriesOf = (id: string, from = 1): LedgerEntry[] => ledger.read(from, 10_000).filter((e) => e.vmId === id);

  it("docker run --cpus 1.5 --memory 256m: 2 vCPUs (rounded up), 256 MiB, and compute.start carries that shape", async () => {
    const full = run("--name", "shaped", "--cpus", "1.5", "--memory", "256m", TEST_IMAGE, "sleep", "3600");
    const id = `docker-${full.slice(0, 12)}`;
    const i = await instanceUntil(id, "running instance", (x) => x.state === InstanceState.RUNNING);
    assert.equal(i.allocatedVcpus, 2);
    assert.equal(i.allocatedMemoryBytes, 256n * 1024n * 1024n);
    const start = entriesOf(id).find((e) => e.kind === "vm.compute.start");
    assert.ok(start, `no compute.start for ${id}: ${entriesOf(id).map((e) => e.line).join("\n")}`);
    assert.deepEqual(start.shape, { cpu: 2, memBytes: 268435456 });
    assert.match(start.line, /"shape":\{"cpu":2,"mem_bytes":268435456\}/);
  });

  it("docker update --memory 512m on the running container: one resize pair (old shape, new shape), same emitted_at", async () => {
    const full = d.docker("inspect", "-f", "{{.Id}}", "shaped");
    const id = `docker-${full.slice(0, 12)}`;
    const before = ledger.lastSeq;
    d.docker("update", "--memory", "512m", "--memory-swap", "1g", "shaped");
    const i = await instanceUntil(id, "new memory limit", (x) => x.allocatedMemoryBytes === 512n * 1024n * 1024n);
    assert.equal(i.allocatedVcpus, 2);
    for (let n = 0; n < 100 && entriesOf(id, before + 1).length < 4; n++) await new Promise((r) => setTimeout(r, 50));
    const resize = entriesOf(id, before + 1);
    assert.deepEqual(
      resize.map((e) => `${e.kind} ${e.reason} ${e.shape.memBytes}`),
      [
        "vm.compute.stop resize 268435456",
        "vm.storage.stop resize 268435456",
        "vm.storage.start resize 536870912",
        "vm.compute.start resize 536870912",
      ],
    );
    assert.equal(new Set(resize.map((e) => e.emittedAtNs)).size, 1, "one step, one emitted_at");
    // --cpus too (the engine caps it at the host's CPUs): a second resize, now of vCPUs.
    const mark = ledger.lastSeq;
    d.docker("update", "--cpus", "0.5", "shaped");
    await instanceUntil(id, "new CPU limit", (x) => x.allocatedVcpus === 1);
    for (let n = 0; n < 100 && entriesOf(id, mark + 1).length < 4; n++) await new Promise((r) => setTimeout(r, 50));
    const cpus = entriesOf(id, mark + 1).filter((e) => e.kind.startsWith("vm.compute"));
    assert.deepEqual(cpus.map((e) => `${e.kind} ${e.reason} ${e.shape.cpu}`), ["vm.compute.stop resize 2", "vm.compute.start resize 1"]);
    d.docker("rm", "-f", "shaped");
  });

  it("a container without limits has no shape (metered as {}); --cpu-quota/--cpu-period count as a CPU limit", async () => {
    const free = run("--name", "free", TEST_IMAGE, "sleep", "3600");
    const freeId = `docker-${free.slice(0, 12)}`;
    const i = await instanceUntil(freeId, "running instance", (x) => x.state === InstanceState.RUNNING);
    assert.equal(i.allocatedVcpus, 0);
    assert.equal(i.allocatedMemoryBytes, 0n);
    await instanceUntil(freeId, "ledger entries", () => entriesOf(freeId).some((e) => e.kind === "vm.compute.start"));
    assert.match(entriesOf(freeId).find((e) => e.kind === "vm.compute.start")!.line, /"shape":\{\}/);
    const quota = run("--name", "quota", "--cpu-quota", "50000", "--cpu-period", "100000", TEST_IMAGE, "sleep", "3600");
    const q = await instanceUntil(`docker-${quota.slice(0, 12)}`, "running instance", (x) => x.state === InstanceState.RUNNING);
    assert.equal(q.allocatedVcpus, 1, "half a CPU rounds up to one");
    d.docker("rm", "-f", "free", "quota");
  });
});
