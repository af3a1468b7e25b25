import { afterEach, beforeEach, describe, it } from "vitest";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { chmodSync, copyFileSync, linkSync } from "node:fs";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { InstanceSchema, InstanceSource, InstanceState, SetInstanceStateRequestSchema, DeregisterInstanceRequestSchema } from "../../../gen/fleetlet/agent/v1/inventory_pb.js";
import { InstanceRegistry } from "../../../agent/inventory/instance-registry.js";
import { createInventoryService } from "../../../agent/inventory/inventory-service.js";
import { validateInstance } from "../../../agent/inventory/instance-validation.js";
import { startDiscovery } from "../../../agent/discovery/discovery-sync.js";
import { createLogger } from "../../../lib/rpc/logger.js";
import { tempDir } from "../../helpers/temp-dir.js";

// --discover on the real /proc: a real process whose executable is named firecracker (node under
// that name, "--id NAME") becomes a read-only instance and leaves with its process.

let dir: ReturnType<typeof tempDir>;
const children: ChildProcess[] = [];
beforeEach(() => (dir = tempDir("discovery")));
afterEach(() => {
  for (const c of children.splice(0)) c.kill("SIGKILL");
  dir.remove();
});

/** A node binary whose file is named firecracker (a hard link, or a copy on another filesystem). */
function firecrackerBinary(): string {
  const path = join(dir.path, "firecracker");
  try {
    linkSync(process.execPath, path);
  } catch {
    copyFileSync(process.execPath, path);
    chmodSync(path, 0o755);
  }
  return path;
}

function fakeFirecracker(name: string): ChildProcess {
  const child = spawn(firecrackerBinary(), ["-e", "setInterval(() => {}, 1000)", "--", "--id", name], { stdio: "ignore" });
  children.push(child);
  return child;
}

/** Only argv[0] says firecracker: the executable is node. */
function lyingFirecracker(name: string): ChildProcess {
  const child = spawn(process.execPath, ["-e", "setInterval(() => {}, 1000)", "--", "--id", name], { argv0: "firecracker", stdio: "ignore" });
  children.push(child);
  return child;
}

const logger = createLogger("test", "silent");
const validation = { tapPrefix: "fl-" };
const ctx = {} as Parameters<ReturnType<typeof createInventoryService>["setInstanceState"]>[1];

describe("--discover", () => {
  it("a hypervisor process becomes a read-only DISCOVERED instance, and goes when its process does", async () => {
    const registry = InstanceRegistry.open(dir.path);
    const child = fakeFirecracker("disc-test-vm");
    await new Promise((r) => setTimeout(r, 200)); // its cmdline is readable once exec'd
    const discovery = startDiscovery(registry, logger, validation, "/proc", 60_000);
    try {
      await discovery.sweep();
      const i = registry.get("fc-disc-test-vm");
      assert.ok(i, "discovered");
      assert.deepEqual([i.source, i.state, i.pid, i.hypervisor, i.labels["fleetlet.dev/discovered"]], [InstanceSource.DISCOVERED, InstanceState.RUNNING, child.pid, "firecracker", "true"]);
      const service = createInventoryService(registry, validation);
      const readOnly = (e: unknown) => e instanceof ConnectError && e.code === Code.FailedPrecondition && /discovered on the host and is read-only/.test(e.rawMessage);
      await assert.rejects(Promise.resolve().then(() => service.setInstanceState(create(SetInstanceStateRequestSchema, { instanceId: i.id, state: InstanceState.STOPPED }), ctx)), readOnly);
      await assert.rejects(Promise.resolve().then(() => service.deregisterInstance(create(DeregisterInstanceRequestSchema, { instanceId: i.id }), ctx)), readOnly);
      // A second sweep with nothing new writes nothing.
      const v = registry.resourceVersion;
      await discovery.sweep();
      assert.equal(registry.resourceVersion, v);
      child.kill("SIGKILL");
      await new Promise((r) => child.once("exit", r));
      await discovery.sweep();
      assert.equal(registry.get("fc-disc-test-vm"), undefined, "removed with its process");
    } finally {
      discovery.stop();
    }
  });

  it("a process whose command line says firecracker but whose executable is not is not discovered", async () => {
    const registry = InstanceRegistry.open(dir.path);
    lyingFirecracker("disc-liar");
    await new Promise((r) => setTimeout(r, 200));
    const discovery = startDiscovery(registry, logger, validation, "/proc", 60_000);
    try {
      await discovery.sweep();
      assert.equal(registry.get("fc-disc-liar"), undefined);
    } finally {
      discovery.stop();
    }
  });

  it("a registered instance with the same id wins: discovery leaves it alone", async () => {
    const registry = InstanceRegistry.open(dir.path);
    fakeFirecracker("disc-taken");
    await new Promise((r) => setTimeout(r, 200));
    await registry.upsert(validateInstance(create(InstanceSchema, { id: "fc-disc-taken", name: "mine", state: InstanceState.STOPPED }), validation));
    const discovery = startDiscovery(registry, logger, validation, "/proc", 60_000);
    try {
      await discovery.sweep();
      const i = registry.get("fc-disc-taken")!;
      assert.deepEqual([i.source, i.name, i.state], [InstanceSource.REGISTERED, "mine", InstanceState.STOPPED]);
    } finally {
      discovery.stop();
    }
  });
});
