import { afterEach, beforeEach, describe, it } from "vitest";
import assert from "node:assert/strict";
import { clone, create } from "@bufbuild/protobuf";
import { InstanceKind, InstanceSchema, InstanceSource, InstanceState } from "../../../gen/fleetlet/agent/v1/inventory_pb.js";
import { StandbyPolicySchema } from "../../../gen/fleetlet/agent/v1/standby_pb.js";
import { ContainerSchema, ContainerState, HealthStatus } from "../../../gen/fleetlet/agent/v1/runtime_pb.js";
import { ContainerInstanceSync, instanceOf, shapeOfLimits } from "../../../agent/runtime/container-instances.js";
import { validateInstance } from "../../../agent/inventory/instance-validation.js";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import type { ContainerLimits } from "../../../agent/runtime/container-runtime.js";
import { MeteringLedger } from "../../../agent/metering/ledger.js";
import { InstanceRegistry } from "../../../agent/inventory/instance-registry.js";
import { createDockerDriver } from "../../../agent/standby/drivers/docker-driver.js";
import { createLogger } from "../../../lib/rpc/logger.js";
import { FakeRuntime } from "../../helpers/fake-runtime.js";
import { tempDir } from "../../helpers/temp-dir.js";

// Containers are instances (runtime.md): the sync from runtimes to the inventory, and the
// docker standby driver acting through the runtime.

let dir: ReturnType<typeof tempDir>;
let registry: InstanceRegistry;
let docker: FakeRuntime;
let sync: ContainerInstanceSync;

beforeEach(() => {
  dir = tempDir("ctr-sync");
  registry = InstanceRegistry.open(dir.path);
  docker = new FakeRuntime("docker");
  sync = new ContainerInstanceSync(registry, [docker], createLogger("test", "silent"));
});

afterEach(() => {
  sync.close();
  dir.remove();
});

/** A fake runtime that also reports limits (Docker HostConfig / Kubernetes resources.limits). */
class LimitedRuntime extends FakeRuntime {
  readonly limitsById = new Map<string, ContainerLimits>();
  limits(externalId: string): ContainerLimits | undefined {
    return this.limitsById.get(externalId);
  }
}

describe("container limits → instance shape", () => {
  it("vCPUs are the CPU limit rounded up to whole CPUs, memory the memory limit; no limit = no shape", () => {
    assert.deepEqual(shapeOfLimits({ cpuCores: 1.5, memoryBytes: 256n << 20n }), { vcpus: 2, memoryBytes: 256n << 20n });
    assert.deepEqual(shapeOfLimits({ cpuCores: 1 }), { vcpus: 1, memoryBytes: 0n });
    assert.deepEqual(shapeOfLimits({ cpuCores: 0.25 }), { vcpus: 1, memoryBytes: 0n });
    assert.deepEqual(shapeOfLimits({ cpuCores: 0.1 + 0.2 + 0.7 }), { vcpus: 1, memoryBytes: 0n }, "1.0000000000000002 is one CPU");
    assert.deepEqual(shapeOfLimits({}), { vcpus: 0, memoryBytes: 0n });
    assert.deepEqual(shapeOfLimits(undefined), { vcpus: 0, memoryBytes: 0n });
  });

  it("a container's limits are its instance's shape, metered at start; a limit changed in place is a resize", async () => {
    const ledgerDir = tempDir("ctr-ledger");
    try {
      const ledger = MeteringLedger.open(ledgerDir.path);
      await registry.attachLedger(ledger);
      const rt = new LimitedRuntime("docker");
      const limitedSync = new ContainerInstanceSync(registry, [rt], createLogger("test", "silent"));
      rt.limitsById.set("lim1", { cpuCores: 1.5, memoryBytes: 256n << 20n });
      rt.put({ externalId: "lim1", id: "docker-lim1", state: ContainerState.RUNNING });
      rt.put({ externalId: "free1", id: "docker-free1", state: ContainerState.RUNNING });
      await limitedSync.schedule();
      const lim = registry.get("docker-lim1")!;
      assert.equal(lim.allocatedVcpus, 2);
      assert.equal(lim.allocatedMemoryBytes, 256n << 20n);
      assert.equal(registry.get("docker-free1")!.allocatedVcpus, 0, "no limit: no shape");
      const entries = () => ledger.read(1, 100).map((e) => `${e.kind} ${e.reason} ${e.vmId} ${JSON.stringify(e.shape)}`);
      assert.ok(entries().includes(`vm.compute.start boot docker-lim1 {"cpu":2,"memBytes":268435456}`), entries().join("\n"));
      assert.ok(entries().includes("vm.compute.start boot docker-free1 {}"), "unlimited: metered with no shape");
      const before = ledger.lastSeq;
      // docker update --memory 512m: the runtime reports the new limit with the same container.
      rt.limitsById.set("lim1", { cpuCores: 1.5, memoryBytes: 512n << 20n });
      rt.put({ externalId: "lim1", id: "docker-lim1", state: ContainerState.RUNNING }, "update");
      await limitedSync.schedule();
      assert.equal(registry.get("docker-lim1")!.allocatedMemoryBytes, 512n << 20n);
      const resize = ledger.read(before + 1, 100).filter((e) => e.kind.startsWith("vm.compute")).map((e) => `${e.kind} ${e.reason} ${e.shape.memBytes}`);
      assert.deepEqual(resize, ["vm.compute.stop resize 268435456", "vm.compute.start resize 536870912"]);
      limitedSync.close();
    } finally {
      ledgerDir.remove();
    }
  });
});

describe("ContainerInstanceSync", () => {
  it("adds, updates and removes container instances as the runtime's list changes", async () => {
    docker.put({ externalId: "abc123", id: "docker-abc123", name: "web", state: ContainerState.RUNNING, pid: 4242, ip: "172.17.0.2", hostInterface: "veth1234", labels: { app: "web" } });
    docker.put({ externalId: "def456", id: "docker-def456", name: "job", state: ContainerState.EXITED });
    await sync.schedule();
    const web = registry.get("docker-abc123")!;
    assert.equal(web.kind, InstanceKind.CONTAINER);
    assert.equal(web.source, InstanceSource.RUNTIME);
    assert.equal(web.state, InstanceState.RUNNING);
    assert.equal(web.runtimeRef, "docker/abc123");
    assert.deepEqual([web.name, web.pid, web.ip, web.tapDevice, web.networkEnabled, web.labels.app], ["web", 4242, "172.17.0.2", "veth1234", true, "web"]);
    assert.equal(registry.get("docker-def456")!.state, InstanceState.STOPPED);

    docker.put({ externalId: "abc123", id: "docker-abc123", name: "web", state: ContainerState.PAUSED, pid: 4242 });
    docker.drop("def456");
    await sync.schedule();
    assert.equal(registry.get("docker-abc123")!.state, InstanceState.STANDBY, "paused = standby");
    assert.equal(registry.get("docker-def456"), undefined, "removed container = removed instance");

    // Durable: a reopened registry has the same instances.
    assert.equal(InstanceRegistry.open(dir.path).get("docker-abc123")?.runtimeRef, "docker/abc123");
  });

  it("a runtime that is down keeps its instances; a standby policy set by a user survives updates", async () => {
    docker.put({ externalId: "k1", id: "docker-k1", state: ContainerState.RUNNING });
    await sync.schedule();
    const withPolicy = clone(InstanceSchema, registry.get("docker-k1")!);
    withPolicy.standbyPolicy = create(StandbyPolicySchema, { enabled: true, idleTimeout: "5m", driver: "docker" });
    await registry.upsert(withPolicy);
    docker.goDown();
    docker.known.clear();
    await sync.schedule();
    assert.ok(registry.get("docker-k1"), "unreachable is not removed");
    docker.put({ externalId: "k1", id: "docker-k1", state: ContainerState.RUNNING, pid: 99 });
    docker.comeBack();
    await sync.schedule();
    const k1 = registry.get("docker-k1")!;
    assert.equal(k1.pid, 99);
    assert.equal(k1.standbyPolicy?.idleTimeout, "5m");
  });

  it("never takes over a registered instance with the same id", async () => {
    await registry.upsert(create(InstanceSchema, { id: "docker-x1", kind: InstanceKind.VM, source: InstanceSource.REGISTERED, name: "mine" }));
    docker.put({ externalId: "x1", id: "docker-x1", state: ContainerState.RUNNING });
    await sync.schedule();
    assert.equal(registry.get("docker-x1")!.name, "mine");
    assert.equal(registry.get("docker-x1")!.source, InstanceSource.REGISTERED);
  });

  it("the docker driver pauses and unpauses the instance's container through the runtime", async () => {
    docker.put({ externalId: "p1", id: "docker-p1", state: ContainerState.RUNNING });
    const driver = createDockerDriver(() => docker);
    const target = { id: "docker-p1", pid: undefined, ip: "", kind: InstanceKind.CONTAINER, runtimeRef: "docker/p1", source: InstanceSource.RUNTIME };
    await driver.standby(target);
    await driver.wake(target);
    assert.deepEqual([docker.paused, docker.unpaused], [["p1"], ["p1"]]);
    await assert.rejects(driver.standby({ ...target, runtimeRef: "kubernetes/ns/p" }), /is not a Docker container/);
    await assert.rejects(createDockerDriver(() => undefined).standby(target), /not configured on this agent/);
    await assert.rejects(driver.standby({ ...target, runtimeRef: "docker/missing" }), /docker driver: pause docker\/missing: container missing not found/);
  });
});

describe("a container's health on its instance (policies)", () => {
  it("health and since when: kept while the health stays, reset when it changes; a registration cannot set them", () => {
    let now = 1_000_000;
    const container = (status: HealthStatus) => create(ContainerSchema, { id: "docker-abc", runtime: "docker", externalId: "abc", name: "web", state: ContainerState.RUNNING, health: { hasHealthcheck: true, status } });
    const first = instanceOf("docker", container(HealthStatus.STARTING), undefined, "", undefined, () => now);
    assert.equal(first.health, HealthStatus.STARTING);
    assert.equal(timestampMs(first.healthSince!), 1_000_000);
    now += 5000;
    const same = instanceOf("docker", container(HealthStatus.STARTING), first, "", undefined, () => now);
    assert.equal(timestampMs(same.healthSince!), 1_000_000, "still starting: since unchanged");
    const unhealthy = instanceOf("docker", container(HealthStatus.UNHEALTHY), same, "", undefined, () => now);
    assert.deepEqual([unhealthy.health, timestampMs(unhealthy.healthSince!)], [HealthStatus.UNHEALTHY, 1_005_000]);
    const registered = validateInstance(create(InstanceSchema, { id: "vm", health: HealthStatus.UNHEALTHY, healthSince: { seconds: 1n, nanos: 0 } }), { tapPrefix: "fl-" });
    assert.deepEqual([registered.health, registered.healthSince], [HealthStatus.UNSPECIFIED, undefined]);
  });
});
