import { afterEach, beforeEach, describe, it } from "vitest";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { InstanceSchema, InstanceState, InventoryService, SnapshotSchema } from "../../../gen/fleetlet/agent/v1/inventory_pb.js";
import { InstanceRegistry } from "../../../agent/inventory/instance-registry.js";
import { createInventoryService } from "../../../agent/inventory/inventory-service.js";
import { validateInstance } from "../../../agent/inventory/instance-validation.js";
import { inventoryDigest } from "../../../lib/inventory-digest.js";
import { parseHostPort } from "../../../lib/listen-address.js";
import { readAllPages } from "../../../lib/paging/read-all-pages.js";
import { startGrpcServer, type RunningGrpcServer } from "../../../lib/rpc/grpc-server.js";
import { createGrpcJsTransport } from "../../../lib/rpc/grpc-transport.js";
import { createLogger } from "../../../lib/rpc/logger.js";
import { serviceRegistration } from "../../../lib/rpc/service-adapter.js";
import { tempDir } from "../../helpers/temp-dir.js";

const validation = { tapPrefix: "fl-" };
let dir: ReturnType<typeof tempDir>;
let registry: InstanceRegistry;
let server: RunningGrpcServer;
let transport: ReturnType<typeof createGrpcJsTransport>;
let client: Client<typeof InventoryService>;

beforeEach(async () => {
  dir = tempDir("inventory-paging");
  registry = InstanceRegistry.open(dir.path);
  server = await startGrpcServer({
    listen: parseHostPort("127.0.0.1:0"),
    logger: createLogger("test", "silent"),
    services: [serviceRegistration(InventoryService, createInventoryService(registry, validation))],
  });
  transport = createGrpcJsTransport(server.address);
  client = createClient(InventoryService, transport);
});

afterEach(async () => {
  transport.close();
  await server.close(1000);
  registry.close();
  dir.remove();
});

const put = (id: string, extra: object = {}) => registry.upsert(validateInstance(create(InstanceSchema, { id, state: InstanceState.RUNNING, allocatedVcpus: 1, ...extra }), validation));
const ids = (n: number) => Array.from({ length: n }, (_, k) => `vm-${String(k).padStart(3, "0")}`);
const rejectsWith = (c: Code, text: RegExp) => (e: unknown) => e instanceof ConnectError && e.code === c && text.test(e.rawMessage);

describe("InventoryService.ListInstances pages", () => {
  it("gives every instance of the first page's version exactly once while instances come, go and change between pages", async () => {
    for (const id of ids(60)) await put(id);
    const before = (await client.listInstances({ pageSize: 10_000 })).instances.map((i) => `${i.id}@${i.resourceVersion}`);
    let n = 0;
    const pages = await readAllPages(async (pageToken) => {
      const page = await client.listInstances({ pageSize: 7, pageToken });
      n++;
      // Between pages: added before and after the cursor, removed before it is given, changed.
      await put(`vm-${String(n * 7 - 2).padStart(3, "0")}a`);
      await put(`vm-zz-${n}`);
      if (registry.get(`vm-${String(n * 7 + 9).padStart(3, "0")}`)) await registry.remove(`vm-${String(n * 7 + 9).padStart(3, "0")}`);
      const changed = `vm-${String(n * 7 + 1).padStart(3, "0")}`;
      if (registry.get(changed)) await registry.setState(changed, InstanceState.STOPPED);
      return page;
    });
    assert.equal(pages.length, 9);
    const listed = pages.flatMap((p) => p.instances);
    assert.deepEqual(listed.map((i) => `${i.id}@${i.resourceVersion}`), before);
    // Every page carries the list's version, incarnation and digest: that of all pages together.
    const first = pages[0]!;
    assert.ok(pages.every((p) => p.resourceVersion === first.resourceVersion && p.incarnation === first.incarnation && p.digest?.hash === first.digest?.hash));
    assert.deepEqual({ count: first.digest!.count, hash: first.digest!.hash }, inventoryDigest(listed));
    assert.ok(registry.feed.version > Number(first.resourceVersion), "the inventory moved on meanwhile");
  });

  it("without page_size gives the first 1000 and a token, and a page's digest still says the whole list", async () => {
    await Promise.all(Array.from({ length: 1005 }, (_, k) => put(`vm-${String(k).padStart(4, "0")}`)));
    const first = await client.listInstances({});
    assert.equal(first.instances.length, 1000);
    assert.notEqual(first.nextPageToken, "");
    // A client that does not follow next_page_token can tell it has part of the list.
    assert.equal(first.digest?.count, 1005);
    const second = await client.listInstances({ pageToken: first.nextPageToken });
    assert.deepEqual(second.instances.map((i) => i.id), ["vm-1000", "vm-1001", "vm-1002", "vm-1003", "vm-1004"]);
    assert.equal(second.nextPageToken, "");
  });

  it("answers OUT_OF_RANGE for a list whose version changed and is no longer kept, INVALID_ARGUMENT for bad paging fields", async () => {
    for (const id of ids(20)) await put(id);
    // Five lists begun at five versions: only four are kept, the oldest is dropped.
    const tokens: string[] = [];
    for (let k = 0; k < 5; k++) {
      tokens.push((await client.listInstances({ pageSize: 5 })).nextPageToken);
      await put(`vm-new-${k}`);
    }
    await assert.rejects(client.listInstances({ pageSize: 5, pageToken: tokens[0]! }), rejectsWith(Code.OutOfRange, /^page_token: the list changed since its first page .*list again without page_token/));
    assert.equal((await client.listInstances({ pageSize: 5, pageToken: tokens[1]! })).instances.length, 5);
    await assert.rejects(client.listInstances({ pageSize: -1 }), rejectsWith(Code.InvalidArgument, /^page_size: must be >= 0/));
    await assert.rejects(client.listInstances({ pageToken: "garbage!" }), rejectsWith(Code.InvalidArgument, /^page_token: is not a page token/));
    const snapshotToken = await (async () => {
      for (const id of ids(3)) await registry.registerSnapshot(create(SnapshotSchema, { id: `s-${id}`, instanceId: id }));
      return (await client.listSnapshots({ pageSize: 1 })).nextPageToken;
    })();
    await assert.rejects(client.listInstances({ pageToken: snapshotToken }), rejectsWith(Code.InvalidArgument, /^page_token: is a token of another list/));
  });
});

describe("InventoryService.ListSnapshots pages", () => {
  it("gives every snapshot of the first page's state exactly once while snapshots come and go", async () => {
    for (const id of ids(25)) await registry.registerSnapshot(create(SnapshotSchema, { id: `snap-${id}`, instanceId: id, storageBytes: 1n }));
    const before = registry.snapshotList().map((s) => s.id);
    let n = 0;
    const pages = await readAllPages(async (pageToken) => {
      const page = await client.listSnapshots({ pageSize: 10, pageToken });
      n++;
      await registry.registerSnapshot(create(SnapshotSchema, { id: `snap-a${n}`, storageBytes: 1n }));
      const gone = `snap-vm-${String(n * 10 + 2).padStart(3, "0")}`;
      if (registry.snapshotList().some((s) => s.id === gone)) await registry.removeSnapshot(gone);
      return page;
    });
    assert.equal(pages.length, 3);
    assert.deepEqual(pages.flatMap((p) => p.snapshots.map((s) => s.id)), before);
    await assert.rejects(client.listSnapshots({ pageSize: -5 }), rejectsWith(Code.InvalidArgument, /^page_size: must be >= 0/));
  });
});
