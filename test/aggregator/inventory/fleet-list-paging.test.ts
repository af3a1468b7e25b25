import { afterEach, beforeEach, describe, it } from "vitest";
import assert from "node:assert/strict";
import { create, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { InstanceKind, InstanceSchema, InstanceState, type Instance } from "../../../gen/fleetlet/agent/v1/inventory_pb.js";
import { FleetService, ListInstancesResponseSchema } from "../../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { createFleetService } from "../../../aggregator/fleet-service.js";
import type { HostRegistry } from "../../../aggregator/hosts/host-registry.js";
import { MergedView } from "../../../aggregator/inventory/merged-view.js";
import { parseHostPort } from "../../../lib/listen-address.js";
import { PAGE_BYTES } from "../../../lib/paging/list-pager.js";
import { readAllPages } from "../../../lib/paging/read-all-pages.js";
import { startGrpcServer, type RunningGrpcServer } from "../../../lib/rpc/grpc-server.js";
import { createGrpcJsTransport } from "../../../lib/rpc/grpc-transport.js";
import { createLogger } from "../../../lib/rpc/logger.js";
import { serviceRegistration } from "../../../lib/rpc/service-adapter.js";

const HOSTS = ["h0", "h1", "h10", "h2"];
let view: MergedView;
let server: RunningGrpcServer;
let transport: ReturnType<typeof createGrpcJsTransport>;
let fleet: Client<typeof FleetService>;

beforeEach(async () => {
  view = new MergedView(undefined);
  // Only the host filter consults the registry (by name); the merged view is what is listed.
  const hosts = { get: (name: string) => (HOSTS.includes(name) ? { config: { name } } : undefined), list: () => [] } as unknown as HostRegistry;
  server = await startGrpcServer({
    listen: parseHostPort("127.0.0.1:0"),
    logger: createLogger("test", "silent"),
    services: [serviceRegistration(FleetService, createFleetService(hosts, { defaultPerHostTimeoutMs: 1000, fanOutConcurrency: 4, inventory: { view } }))],
  });
  transport = createGrpcJsTransport(server.address);
  fleet = createClient(FleetService, transport);
});

afterEach(async () => {
  transport.close();
  await server.close(1000);
});

const inst = (id: string, version: number, extra: { state?: InstanceState; labels?: Record<string, string> } = {}): Instance =>
  create(InstanceSchema, { id, resourceVersion: BigInt(version), state: InstanceState.RUNNING, kind: InstanceKind.VM, ...extra });
const key = (i: { host: string; id: string; resourceVersion: bigint; state: InstanceState }) => `${i.host}/${i.id}@${i.resourceVersion}:${InstanceState[i.state]}`;
const rejectsWith = (c: Code, text: RegExp) => (e: unknown) => e instanceof ConnectError && e.code === c && text.test(e.rawMessage);

describe("FleetService.ListInstances pages", () => {
  it("gives every instance of the first page's view exactly once while hosts change between pages", async () => {
    for (const h of HOSTS) view.replace(h, `inc-${h}`, 40, Array.from({ length: 40 }, (_, k) => inst(`vm-${String(k).padStart(2, "0")}`, k + 1, { state: k % 3 === 0 ? InstanceState.STOPPED : InstanceState.RUNNING })), 1000);
    const request = { states: [InstanceState.RUNNING], pageSize: 9 };
    const before = (await fleet.listInstances({ states: [InstanceState.RUNNING], pageSize: 10_000 })).instances.map(key);
    let n = 0;
    const pages = await readAllPages(async (pageToken) => {
      const page = await fleet.listInstances({ ...request, pageToken });
      n++;
      // Between pages: an agent's watched changes (added, stopped, running again, deleted) on
      // every host, and one host relisted with half its instances gone.
      for (const h of HOSTS) view.applyChanges(h, `inc-${h}`, 40 + n, [inst(`vm-${n}a`, 40 + n), inst(`vm-${String(n * 2).padStart(2, "0")}`, 40 + n, { state: n % 2 ? InstanceState.STOPPED : InstanceState.RUNNING })], [`vm-${String(39 - n).padStart(2, "0")}`], 2000 + n);
      if (n === 3) view.replace("h10", "inc-h10b", 5, Array.from({ length: 20 }, (_, k) => inst(`vm-${String(k * 2).padStart(2, "0")}`, 1)), 3000);
      return page;
    });
    const listed = pages.flatMap((p) => p.instances.map(key));
    assert.deepEqual(listed, before);
    assert.equal(new Set(listed).size, listed.length);
    assert.equal(pages.length, Math.ceil(before.length / 9));
    // hosts, host_results and the cursor are the first page's on every page: a watch from that
    // cursor gets exactly the changes made after the list's view.
    assert.ok(pages.every((p) => p.cursor === pages[0]!.cursor && p.hosts.length === HOSTS.length && p.hosts.every((h, k) => h.resourceVersion === pages[0]!.hosts[k]!.resourceVersion)));
    assert.notEqual(view.cursor, pages[0]!.cursor);
  });

  it("ends pages before 2 MiB by default, however many instances fit the count", async () => {
    // About 19 KiB each (64 labels of 256 characters): 300 instances are 5.6 MiB.
    const labels = Object.fromEntries(Array.from({ length: 64 }, (_, k) => [`label-${k}`, String(k).repeat(256).slice(0, 256)]));
    view.replace("h0", "inc", 1, Array.from({ length: 300 }, (_, k) => inst(`vm-${String(k).padStart(3, "0")}`, 1, { labels })), 1000);
    const pages = await readAllPages((pageToken) => fleet.listInstances({ pageToken }));
    assert.ok(pages.length >= 3, `${pages.length} pages`);
    for (const p of pages) assert.ok(toBinary(ListInstancesResponseSchema, p).length <= PAGE_BYTES, "a page stays within 2 MiB");
    assert.deepEqual(pages.flatMap((p) => p.instances.map((i) => i.id)), Array.from({ length: 300 }, (_, k) => `vm-${String(k).padStart(3, "0")}`));
  });

  it("refuses a token with other filters, a bad token and a negative page_size, naming the field", async () => {
    view.replace("h0", "inc", 1, Array.from({ length: 10 }, (_, k) => inst(`vm-${k}`, 1, { labels: { team: "a" } })), 1000);
    const token = (await fleet.listInstances({ labels: { team: "a" }, pageSize: 3 })).nextPageToken;
    await assert.rejects(fleet.listInstances({ labels: { team: "b" }, pageToken: token }), rejectsWith(Code.InvalidArgument, /^page_token: was given for a request with other filters/));
    await assert.rejects(fleet.listInstances({ hosts: ["h0"], labels: { team: "a" }, pageToken: token }), rejectsWith(Code.InvalidArgument, /^page_token: was given for a request with other filters/));
    assert.deepEqual((await fleet.listInstances({ labels: { team: "a" }, pageSize: 3, pageToken: token })).instances.map((i) => i.id), ["vm-3", "vm-4", "vm-5"]);
    await assert.rejects(fleet.listInstances({ pageToken: "%%%" }), rejectsWith(Code.InvalidArgument, /^page_token: is not a page token/));
    await assert.rejects(fleet.listInstances({ pageSize: -1 }), rejectsWith(Code.InvalidArgument, /^page_size: must be >= 0/));
  });
});
