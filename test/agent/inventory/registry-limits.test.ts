import { afterEach, describe, it } from "vitest";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { InstanceSchema, InstanceState, SnapshotSchema } from "../../../gen/fleetlet/agent/v1/inventory_pb.js";
import { createClient } from "@connectrpc/connect";
import { InventoryService } from "../../../gen/fleetlet/agent/v1/inventory_pb.js";
import { InstanceRegistry } from "../../../agent/inventory/instance-registry.js";
import { createInventoryService } from "../../../agent/inventory/inventory-service.js";
import { parseHostPort } from "../../../lib/listen-address.js";
import { startGrpcServer } from "../../../lib/rpc/grpc-server.js";
import { createGrpcJsTransport } from "../../../lib/rpc/grpc-transport.js";
import { createLogger } from "../../../lib/rpc/logger.js";
import { serviceRegistration } from "../../../lib/rpc/service-adapter.js";
import { tempDir } from "../../helpers/temp-dir.js";

let dir: ReturnType<typeof tempDir> | undefined;
let registry: InstanceRegistry | undefined;

afterEach(() => {
  registry?.close();
  dir?.remove();
  registry = undefined;
  dir = undefined;
});

function open(limits: Parameters<typeof InstanceRegistry.open>[2]): InstanceRegistry {
  dir = tempDir("registry-limits");
  registry = InstanceRegistry.open(dir.path, undefined, limits);
  return registry;
}

const instance = (id: string, pid?: number) => create(InstanceSchema, { id, state: InstanceState.RUNNING, allocatedVcpus: 1, pid });
const exhausted = (flag: string) => (e: unknown) => e instanceof ConnectError && e.code === Code.ResourceExhausted && e.rawMessage.includes(flag);

describe("InstanceRegistry caps", () => {
  it("refuses a new instance past --max-instances; changing a stored one still works", async () => {
    const r = open({ limits: { maxInstances: 2 } });
    await r.upsert(instance("a"));
    await r.upsert(instance("b"));
    await assert.rejects(r.upsert(instance("c")), exhausted("maximum of 2 instances (--max-instances)"));
    assert.equal(r.size, 2);
    const changed = instance("a");
    changed.allocatedVcpus = 4;
    assert.equal((await r.upsert(changed)).allocatedVcpus, 4);
    await r.remove("b");
    await r.upsert(instance("c"));
  });

  it("refuses a new snapshot past --max-snapshots", async () => {
    const r = open({ limits: { maxSnapshots: 1 } });
    await r.registerSnapshot(create(SnapshotSchema, { id: "s1", storageBytes: 1n }));
    await assert.rejects(r.registerSnapshot(create(SnapshotSchema, { id: "s2", storageBytes: 1n })), exhausted("maximum of 1 snapshots (--max-snapshots)"));
    assert.equal(r.snapshotList().length, 1);
  });

  it("refuses more instances on one pid than --max-instances-per-pid (each keeps 4 fds)", async () => {
    const r = open({ limits: { maxInstancesPerPid: 2 } });
    await r.upsert(instance("a", process.pid));
    await r.upsert(instance("b", process.pid));
    await assert.rejects(r.upsert(instance("c", process.pid)), exhausted(`pid ${process.pid} already has the maximum of 2 instances (--max-instances-per-pid)`));
    // Another pid, and instances without one, are not affected.
    await r.upsert(instance("c", process.ppid));
    await r.upsert(instance("d"));
    assert.equal(r.size, 4);
  });

  it("RegisterInstance past the cap answers RESOURCE_EXHAUSTED naming --max-instances", async () => {
    const r = open({ limits: { maxInstances: 1 } });
    const server = await startGrpcServer({
      listen: parseHostPort("127.0.0.1:0"),
      logger: createLogger("test", "silent"),
      services: [serviceRegistration(InventoryService, createInventoryService(r, { tapPrefix: "fl-" }))],
    });
    const transport = createGrpcJsTransport(server.address);
    try {
      const client = createClient(InventoryService, transport);
      await client.registerInstance({ instance: instance("a") });
      await assert.rejects(client.registerInstance({ instance: instance("b") }), exhausted("(--max-instances)"));
    } finally {
      transport.close();
      await server.close(500);
    }
  });
});
