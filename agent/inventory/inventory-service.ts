import type { ServiceImpl } from "@connectrpc/connect";
import { Code, ConnectError } from "@connectrpc/connect";
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
import { fleetletVersion } from "../../lib/fleetlet-version.js";
import { fieldBytes, ListPager } from "../../lib/paging/list-pager.js";
import { invalidArgument, requireId } from "../../lib/rpc/field-error.js";
import type { InstanceRegistry } from "./instance-registry.js";
import { checkInstancePid, validateInstance, type ValidationOptions } from "./instance-validation.js";
import { watchInventory } from "./inventory-watch.js";

/** One entry of a list with include_snapshots: the instances, then the snapshots. */
type ListedItem = { instance: Instance; snapshot?: undefined } | { snapshot: Snapshot; instance?: undefined };

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
      throw new ConnectError(`instance ${JSON.stringify(id)} was discovered on the host and is read-only`, Code.FailedPrecondition);
    }
    return instance;
  };
  // Keys: every instance ("i/<id>") sorts before every snapshot ("s/<id>").
  const instancePages = new ListPager<ListedItem, { resourceVersion: bigint; incarnation: string; digest: InventoryDigest; agentVersion: string }>({
    scope: "fleetlet.agent.v1.InventoryService/ListInstances",
    keyOf: (x) => (x.instance ? `i/${x.instance.id}` : `s/${x.snapshot.id}`),
    itemBytes: (x) => (x.instance ? encodedBytes(InstanceSchema, x.instance) : encodedBytes(SnapshotSchema, x.snapshot)),
  });
  /** The feed's lists as list items, made once per version (they are immutable). */
  let listed: { version: number; instances: readonly ListedItem[]; all?: readonly ListedItem[] } | undefined;
  const listedItems = (withSnapshots: boolean): readonly ListedItem[] => {
    const feed = registry.feed;
    if (listed?.version !== feed.version) listed = { version: feed.version, instances: feed.list().map((instance) => ({ instance })) };
    if (!withSnapshots) return listed.instances;
    return (listed.all ??= [...listed.instances, ...feed.listSnapshots().map((snapshot) => ({ snapshot }))]);
  };
  const snapshotPages = new ListPager<Snapshot, undefined>({
    scope: "fleetlet.agent.v1.InventoryService/ListSnapshots",
    keyOf: (s) => s.id,
    itemBytes: (s) => encodedBytes(SnapshotSchema, s),
  });
  return {
    async registerInstance(req) {
      if (req.sourceSnapshotId !== "") requireId("source_snapshot_id", req.sourceSnapshotId);
      const checked = validateInstance(req.instance, options);
      // Runtime containers and discovered processes belong to what found them: a registration
      // under their id would take over their identity (and the drivers acting on them).
      const existing = registry.get(checked.id);
      if (existing && (existing.source === InstanceSource.RUNTIME || existing.source === InstanceSource.DISCOVERED)) {
        throw new ConnectError(`instance.id: ${JSON.stringify(checked.id)} is a ${InstanceSource[existing.source]} instance and cannot be registered over`, Code.FailedPrecondition);
      }
      const facts = checkInstancePid(checked, options);
      const instance = await registry.upsert(checked, { sourceSnapshotId: req.sourceSnapshotId || undefined });
      options.processGroups?.note(instance.id, instance.pid, instance.pidStartTime, facts);
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
      // resource_version is output only: the agent numbers the change.
      const input = clone(SnapshotSchema, s);
      input.resourceVersion = 0n;
      return { snapshot: await registry.registerSnapshot(input) };
    },
    async removeSnapshot(req) {
      requireId("snapshot_id", req.snapshotId);
      return { snapshot: await registry.removeSnapshot(req.snapshotId) };
    },
    getHostInfo() {
      if (!options.hostInfo) throw new ConnectError("host facts are not available from this agent", Code.Unimplemented);
      return { host: options.hostInfo() };
    },
    listSnapshots(req) {
      // The published (durable) snapshots, versioned with the instances: a list continues
      // from its kept state, or from the live one while nothing changed.
      const feed = registry.feed;
      const page = snapshotPages.page(req, () => ({ version: `${feed.incarnation}.${feed.version}`, items: feed.listSnapshots(), meta: undefined, metaBytes: 0 }));
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
      // With include_snapshots the snapshots follow the instances in the same list, at the same
      // version, and the digest covers both (a list of another shape: another filter).
      const feed = registry.feed;
      const withSnapshots = req.includeSnapshots;
      const page = instancePages.page(
        req,
        () => {
          const meta = { resourceVersion: BigInt(feed.version), incarnation: feed.incarnation, digest: create(InventoryDigestSchema, feed.digest(withSnapshots)), agentVersion: fleetletVersion() };
          return { version: `${feed.incarnation}.${feed.version}`, items: listedItems(withSnapshots), meta, metaBytes: toBinary(ListInstancesResponseSchema, create(ListInstancesResponseSchema, meta)).length };
        },
        withSnapshots ? "snapshots" : "",
      );
      const instances: Instance[] = [];
      const snapshots: Snapshot[] = [];
      for (const x of page.items) {
        if (x.instance) instances.push(x.instance);
        else snapshots.push(x.snapshot);
      }
      return { instances, snapshots, ...page.meta, nextPageToken: page.nextPageToken };
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
