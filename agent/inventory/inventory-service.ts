import type { ServiceImpl } from "@connectrpc/connect";
import { Code, ConnectError } from "@connectrpc/connect";
import { randomBytes } from "node:crypto";
import { clone, create, type DescMessage, type MessageShape, toBinary } from "@bufbuild/protobuf";
import {
  type Instance,
  InstanceSchema,
  InstanceSource,
  InstanceState,
  type InventoryDigest,
  InventoryDigestSchema,
  type InventoryService,
  ListInstancesResponseSchema,
  type Snapshot,
  SnapshotSchema,
} from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { fieldBytes, ListPager } from "../../lib/paging/list-pager.js";
import { invalidArgument, requireId } from "../../lib/rpc/field-error.js";
import type { InstanceRegistry } from "./instance-registry.js";
import { validateInstance, type ValidationOptions } from "./instance-validation.js";
import { watchInventory } from "./inventory-watch.js";

/** InventoryService: the RPC face of the instance registry. */
export function createInventoryService(
  registry: InstanceRegistry,
  options: ValidationOptions,
): ServiceImpl<typeof InventoryService> {
  const find = (id: string) => {
    requireId("instance_id", id);
    const instance = registry.get(id);
    if (!instance) throw new ConnectError(`instance ${JSON.stringify(id)} not found`, Code.NotFound);
    return instance;
  };
  /** Discovered instances follow their process (--discover): read-only unless registered. */
  const findWritable = (id: string) => {
    const instance = find(id);
    if (instance.source === InstanceSource.DISCOVERED) {
      throw new ConnectError(`instance ${JSON.stringify(id)} was discovered on the host and is read-only; RegisterInstance with its id to take it over`, Code.FailedPrecondition);
    }
    return instance;
  };
  const instancePages = new ListPager<Instance, { resourceVersion: bigint; incarnation: string; digest: InventoryDigest }>({
    scope: "fleetlet.agent.v1.InventoryService/ListInstances",
    keyOf: (i) => i.id,
    itemBytes: (i) => encodedBytes(InstanceSchema, i),
  });
  const snapshotPages = new ListPager<Snapshot, undefined>({
    scope: "fleetlet.agent.v1.InventoryService/ListSnapshots",
    keyOf: (s) => s.id,
    itemBytes: (s) => encodedBytes(SnapshotSchema, s),
  });
  return {
    async registerInstance(req) {
      if (req.sourceSnapshotId !== "") requireId("source_snapshot_id", req.sourceSnapshotId);
      const instance = await registry.upsert(validateInstance(req.instance, options), { sourceSnapshotId: req.sourceSnapshotId || undefined });
      return { instance };
    },
    async setInstanceState(req) {
      findWritable(req.instanceId);
      if (req.state === InstanceState.UNSPECIFIED || !(req.state in InstanceState)) throw invalidArgument("state", `must be one of CREATED, RUNNING, STANDBY, STOPPED, ERROR, got ${req.state}`);
      return { instance: await registry.setState(req.instanceId, req.state) };
    },
    async restoreInstance(req) {
      const current = findWritable(req.instanceId);
      requireId("snapshot_id", req.snapshotId);
      if (req.allocatedVcpus < 0) throw invalidArgument("allocated_vcpus", "must be >= 0");
      if (req.allocatedMemoryBytes < 0n) throw invalidArgument("allocated_memory_bytes", "must be >= 0");
      if (req.allocatedStorageBytes < 0n) throw invalidArgument("allocated_storage_bytes", "must be >= 0");
      const next = clone(InstanceSchema, current);
      if (req.allocatedVcpus > 0) next.allocatedVcpus = req.allocatedVcpus;
      if (req.allocatedMemoryBytes > 0n) next.allocatedMemoryBytes = req.allocatedMemoryBytes;
      if (req.allocatedStorageBytes > 0n) next.allocatedStorageBytes = req.allocatedStorageBytes;
      return { instance: await registry.restore(req.instanceId, next, req.snapshotId) };
    },
    async registerSnapshot(req) {
      const s = req.snapshot;
      if (!s) throw invalidArgument("snapshot", "is required");
      requireId("snapshot.id", s.id);
      if (s.instanceId !== "") requireId("snapshot.instance_id", s.instanceId);
      if (s.storageBytes < 0n) throw invalidArgument("snapshot.storage_bytes", "must be >= 0");
      if (s.hypervisor.length > 64) throw invalidArgument("snapshot.hypervisor", "must be at most 64 characters");
      return { snapshot: await registry.registerSnapshot(s) };
    },
    async removeSnapshot(req) {
      requireId("snapshot_id", req.snapshotId);
      return { snapshot: await registry.removeSnapshot(req.snapshotId) };
    },
    listSnapshots(req) {
      // Snapshots have no version of their own: each first page names its state afresh, so a
      // list continues only from its kept state (OUT_OF_RANGE once that expired).
      const page = snapshotPages.page(req, () => ({ version: randomBytes(8).toString("hex"), items: registry.snapshotList(), meta: undefined, metaBytes: 0 }));
      return { snapshots: [...page.items], nextPageToken: page.nextPageToken };
    },
    async deregisterInstance(req) {
      findWritable(req.instanceId);
      return { instance: await registry.remove(req.instanceId) };
    },
    getInstance(req) {
      return { instance: find(req.instanceId) };
    },
    listInstances(req) {
      // The published (durable) state: exactly what a watch from this version builds on. Its
      // sorted array is immutable (a change makes a new one), so a paged list keeps it as is.
      const feed = registry.feed;
      const page = instancePages.page(req, () => {
        const meta = { resourceVersion: BigInt(feed.version), incarnation: feed.incarnation, digest: create(InventoryDigestSchema, feed.digest()) };
        return { version: `${feed.incarnation}.${feed.version}`, items: feed.list(), meta, metaBytes: toBinary(ListInstancesResponseSchema, create(ListInstancesResponseSchema, meta)).length };
      });
      return { instances: [...page.items], ...page.meta, nextPageToken: page.nextPageToken };
    },
    watchInstances(req, context) {
      return watchInventory(registry.feed, req, context.signal);
    },
  };
}

/** Encoded sizes of published (immutable) messages, each computed once. */
const sizes = new WeakMap<object, number>();

/** Bytes a message adds to a list answer as one repeated field entry. */
function encodedBytes<S extends DescMessage>(schema: S, m: MessageShape<S>): number {
  let n = sizes.get(m);
  if (n === undefined) {
    n = fieldBytes(toBinary(schema, m).length);
    sizes.set(m, n);
  }
  return n;
}
