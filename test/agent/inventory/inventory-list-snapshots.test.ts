import { afterEach, beforeEach, describe, it } from "vitest";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { create } from "@bufbuild/protobuf";
import { InstanceSchema, ListInstancesRequestSchema, RegisterSnapshotRequestSchema, SnapshotSchema, type ListInstancesResponse, type RegisterSnapshotResponse } from "../../../gen/fleetlet/agent/v1/inventory_pb.js";
import { InstanceRegistry } from "../../../agent/inventory/instance-registry.js";
import { createInventoryService } from "../../../agent/inventory/inventory-service.js";
import { validateInstance } from "../../../agent/inventory/instance-validation.js";
import { inventoryDigest } from "../../../lib/inventory-digest.js";
import { tempDir } from "../../helpers/temp-dir.js";

// ListInstances with include_snapshots: the snapshots in the same list as the instances, at the
// same resource_version, paged after them, with a digest over both; without it, the answer a
// client from before snapshots always had.

const validation = { tapPrefix: "fl-" };
let dir: ReturnType<typeof tempDir>;
let registry: InstanceRegistry;
beforeEach(() => {
  dir = tempDir("inventory-list-snapshots");
  registry = InstanceRegistry.open(dir.path);
});
afterEach(() => {
  registry.close();
  dir.remove();
});

function listAll(service: ReturnType<typeof createInventoryService>, req: object): ListInstancesResponse[] {
  const pages: ListInstancesResponse[] = [];
  let pageToken = "";
  do {
    const page = service.listInstances!(create(ListInstancesRequestSchema, { ...req, pageToken }), {} as never) as ListInstancesResponse;
    pages.push(page);
    pageToken = page.nextPageToken;
  } while (pageToken !== "");
  return pages;
}

describe("InventoryService.ListInstances with include_snapshots", () => {
  it("pages instances then snapshots, each once, all pages of one version, the digest over both", async () => {
    const service = createInventoryService(registry, validation);
    for (let k = 0; k < 5; k++) await registry.upsert(validateInstance(create(InstanceSchema, { id: `vm-${k}` }), validation));
    for (let k = 0; k < 4; k++) await registry.registerSnapshot(create(SnapshotSchema, { id: `snap-${k}`, instanceId: `vm-${k}`, storageBytes: 1n }));
    const pages = listAll(service, { pageSize: 3, includeSnapshots: true });
    assert.equal(pages.length, 3);
    assert.deepEqual(
      pages.map((p) => [...p.instances.map((i) => i.id), ...p.snapshots.map((s) => s.id)]),
      [["vm-0", "vm-1", "vm-2"], ["vm-3", "vm-4", "snap-0"], ["snap-1", "snap-2", "snap-3"]],
    );
    assert.ok(pages.every((p) => p.resourceVersion === 9n && p.incarnation === registry.incarnation));
    const instances = pages.flatMap((p) => p.instances);
    const snapshots = pages.flatMap((p) => p.snapshots);
    assert.deepEqual(snapshots.map((s) => s.resourceVersion), [6n, 7n, 8n, 9n], "each snapshot with the version of its change");
    assert.deepEqual({ count: pages[0]!.digest!.count, hash: pages[0]!.digest!.hash }, inventoryDigest(instances, snapshots));
    // Without the flag: instances only, the instances-only digest, as before snapshots.
    const old = listAll(service, { pageSize: 3 });
    assert.deepEqual(old.flatMap((p) => p.instances.map((i) => i.id)), ["vm-0", "vm-1", "vm-2", "vm-3", "vm-4"]);
    assert.ok(old.every((p) => p.snapshots.length === 0));
    assert.deepEqual({ count: old[0]!.digest!.count, hash: old[0]!.digest!.hash }, inventoryDigest(instances));
    // The agent says which fleetlet it is.
    const pkg = JSON.parse(readFileSync(new URL("../../../package.json", import.meta.url), "utf8")) as { version: string };
    assert.equal(old[0]!.agentVersion, pkg.version);
  });

  it("RegisterSnapshot ignores a resource_version sent by the client: the agent numbers the change", async () => {
    const service = createInventoryService(registry, validation);
    const res = (await service.registerSnapshot!(create(RegisterSnapshotRequestSchema, { snapshot: { id: "s", resourceVersion: 999n } }), {} as never)) as RegisterSnapshotResponse;
    assert.equal(res.snapshot!.resourceVersion, 1n);
    assert.equal(registry.resourceVersion, 1n);
  });
});
