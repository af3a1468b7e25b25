import { afterAll, beforeAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import * as grpc from "@grpc/grpc-js";
import { create, fromBinary, toBinary, type DescMessage, type MessageInitShape, type MessageShape } from "@bufbuild/protobuf";
import { InstanceState, InventoryService, ListInstancesRequestSchema, ListInstancesResponseSchema } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import {
  FleetService,
  HostSyncState,
  ListInstancesRequestSchema as FleetListRequestSchema,
  ListInstancesResponseSchema as FleetListResponseSchema,
} from "../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { mapBounded } from "../../lib/worker-pool.js";
import { agentClients } from "../helpers/clients.js";
import { runFleetlet, startDaemon, type DaemonProcess } from "../helpers/daemon-process.js";
import { repoPath } from "../helpers/paths.js";
import { tempDir } from "../helpers/temp-dir.js";

// Issue 12 point 15: 10,000 instances of about 1.1 KB are an 11 MB list, which clients with
// default limits (grpc-js and buf curl: 4 MiB) refuse as one message. Read page by page, with
// those defaults untouched, the whole list arrives, from the agent and through an aggregator.

const INSTANCES = 10_000;
const DEFAULT_LIMIT = 4 * 1024 * 1024;
const BUF = repoPath("node_modules", ".bin", "buf");
const agentDir = tempDir("big-inventory-agent");
const aggDir = tempDir("big-inventory-agg");
let agent: DaemonProcess;
let aggregator: DaemonProcess;
const expectedIds = Array.from({ length: INSTANCES }, (_, k) => `vm-${String(k).padStart(5, "0")}`);

/** A grpc-js client with every option at its default (max_receive_message_length 4 MiB). */
function defaultClient(address: string): grpc.Client {
  return new grpc.Client(address, grpc.credentials.createInsecure());
}

function unary<I extends DescMessage, O extends DescMessage>(client: grpc.Client, path: string, inSchema: I, outSchema: O, req: MessageInitShape<I>): Promise<{ res: MessageShape<O>; bytes: number }> {
  return new Promise((resolve, reject) => {
    let bytes = 0;
    client.makeUnaryRequest<MessageShape<I>, MessageShape<O>>(
      path,
      (m) => Buffer.from(toBinary(inSchema, m)),
      (b) => {
        bytes = b.length;
        return fromBinary(outSchema, b);
      },
      create(inSchema, req),
      (err, value) => (err ? reject(new Error(`${path}: ${grpc.status[err.code]}: ${err.details}`)) : resolve({ res: value!, bytes })),
    );
  });
}

function bufCurl(address: string, method: string, body: object): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    execFile(BUF, ["curl", "--protocol", "grpc", "--http2-prior-knowledge", "-d", JSON.stringify(body), `http://${address}/${method}`], { timeout: 60_000, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`buf curl ${method}: ${stderr}`));
      else resolve(JSON.parse(stdout || "{}") as Record<string, unknown>);
    });
  });
}

beforeAll(async () => {
  agent = await startDaemon(["agent", "--listen", "127.0.0.1:0", "--state-dir", agentDir.path, "--metrics-listen", "off", "--runtime", "none", "--standby", "off"]);
  // Registered through the API, many at once (the agent commits concurrent changes together).
  const c = agentClients(agent.address);
  try {
    const labels = Object.fromEntries(Array.from({ length: 4 }, (_, k) => [`example.com/label-${k}`, `${k}`.repeat(240)]));
    await mapBounded(expectedIds, 256, (id) => c.inventory.registerInstance({ instance: { id, name: `instance ${id}`, state: InstanceState.RUNNING, allocatedVcpus: 2, allocatedMemoryBytes: 1n << 30n, labels } }));
  } finally {
    c.close();
  }
  aggregator = await startDaemon(["aggregator", "--listen", "127.0.0.1:0", "--state-dir", aggDir.path, "--metrics-listen", "off", "--hosts", `big=${agent.address}`]);
}, 180_000);

afterAll(async () => {
  await Promise.all([agent?.stop(), aggregator?.stop()]);
  agentDir.remove();
  aggDir.remove();
});

describe("an inventory of 10,000 instances, read with default client limits", () => {
  it("the agent's ListInstances, page by page with a default grpc-js client", async () => {
    const client = defaultClient(agent.address);
    try {
      const path = `/${InventoryService.typeName}/${InventoryService.method.listInstances.name}`;
      const ids: string[] = [];
      let total = 0;
      let token = "";
      let pages = 0;
      let digest;
      do {
        const { res, bytes } = await unary(client, path, ListInstancesRequestSchema, ListInstancesResponseSchema, { pageToken: token });
        assert.ok(bytes < DEFAULT_LIMIT / 2 + 64 * 1024, `a page of ${bytes} bytes`);
        total += bytes;
        ids.push(...res.instances.map((i) => i.id));
        digest ??= res.digest;
        token = res.nextPageToken;
        pages++;
      } while (token !== "");
      assert.deepEqual(ids, expectedIds);
      assert.equal(digest?.count, INSTANCES);
      // As one message the list would pass the default limit: that is what paging avoids.
      assert.ok(total > 2 * DEFAULT_LIMIT, `the whole list is ${total} bytes`);
      assert.ok(pages >= 10, `${pages} pages`);
    } finally {
      client.close();
    }
  });

  it("the agent's ListInstances, page by page with buf curl", async () => {
    const ids: string[] = [];
    let token = "";
    do {
      const r = await bufCurl(agent.address, `${InventoryService.typeName}/ListInstances`, token ? { pageToken: token } : {});
      ids.push(...(r.instances as { id: string }[]).map((i) => i.id));
      token = (r.nextPageToken as string | undefined) ?? "";
    } while (token !== "");
    assert.deepEqual(ids, expectedIds);
  });

  it("the aggregator's FleetService.ListInstances, page by page with a default grpc-js client and with buf curl", async () => {
    const client = defaultClient(aggregator.address);
    try {
      const path = `/${FleetService.typeName}/${FleetService.method.listInstances.name}`;
      const readAll = async () => {
        const ids: string[] = [];
        let token = "";
        let synced = true;
        do {
          const { res, bytes } = await unary(client, path, FleetListRequestSchema, FleetListResponseSchema, { pageToken: token });
          assert.ok(bytes < DEFAULT_LIMIT / 2 + 64 * 1024, `a page of ${bytes} bytes`);
          ids.push(...res.instances.map((i) => i.id));
          synced &&= res.hosts[0]?.state === HostSyncState.SYNCED;
          token = res.nextPageToken;
        } while (token !== "");
        return { ids, synced };
      };
      // The aggregator relists the agent page by page too; wait until its view is complete.
      const deadline = Date.now() + 60_000;
      let got = await readAll();
      while (!(got.synced && got.ids.length === INSTANCES) && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 500));
        got = await readAll();
      }
      assert.deepEqual(got.ids, expectedIds);
      assert.ok(got.synced, "the host is SYNCED");
    } finally {
      client.close();
    }
    const ids: string[] = [];
    let token = "";
    do {
      const r = await bufCurl(aggregator.address, `${FleetService.typeName}/ListInstances`, token ? { pageToken: token } : {});
      ids.push(...(r.instances as { id: string }[]).map((i) => i.id));
      token = (r.nextPageToken as string | undefined) ?? "";
    } while (token !== "");
    assert.deepEqual(ids, expectedIds);
  });

  it("fleetlet get instances follows the pages, from the agent and through the aggregator", async () => {
    for (const target of [["--agent", agent.address], ["--aggregator", aggregator.address]]) {
      const r = await runFleetlet(["get", "instances", ...target, "-o", "json"], 60_000);
      assert.equal(r.code, 0, r.stderr);
      const out = JSON.parse(r.stdout) as { instances: { id: string }[]; nextPageToken?: string };
      assert.deepEqual(out.instances.map((i) => i.id), expectedIds, target[0]);
      assert.equal(out.nextPageToken, undefined);
    }
  });
});
