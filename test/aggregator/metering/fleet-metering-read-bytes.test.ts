import { afterEach, beforeEach, describe, it } from "vitest";
import assert from "node:assert/strict";
import { toBinary } from "@bufbuild/protobuf";
import { createClient, type Client } from "@connectrpc/connect";
import { FleetService, ReadMeteringEntriesResponseSchema } from "../../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { createFleetService } from "../../../aggregator/fleet-service.js";
import type { HostRegistry } from "../../../aggregator/hosts/host-registry.js";
import type { MeteringFollower } from "../../../aggregator/metering/metering-follower.js";
import { MeteringStore } from "../../../aggregator/metering/metering-store.js";
import { parseHostPort } from "../../../lib/listen-address.js";
import { PAGE_BYTES } from "../../../lib/paging/list-pager.js";
import { startGrpcServer, type RunningGrpcServer } from "../../../lib/rpc/grpc-server.js";
import { createGrpcJsTransport } from "../../../lib/rpc/grpc-transport.js";
import { createLogger } from "../../../lib/rpc/logger.js";
import { serviceRegistration } from "../../../lib/rpc/service-adapter.js";
import { tempDir } from "../../helpers/temp-dir.js";

let dir: ReturnType<typeof tempDir>;
let store: MeteringStore;
let server: RunningGrpcServer;
let transport: ReturnType<typeof createGrpcJsTransport>;
let fleet: Client<typeof FleetService>;

beforeEach(async () => {
  dir = tempDir("fleet-metering-read");
  store = MeteringStore.open(dir.path);
  // ReadMeteringEntries reads the store only: no hosts, no follower needed.
  const metering = { store, follower: {} as MeteringFollower };
  server = await startGrpcServer({
    listen: parseHostPort("127.0.0.1:0"),
    logger: createLogger("test", "silent"),
    services: [serviceRegistration(FleetService, createFleetService({} as HostRegistry, { defaultPerHostTimeoutMs: 1000, fanOutConcurrency: 4, metering }))],
  });
  transport = createGrpcJsTransport(server.address);
  fleet = createClient(FleetService, transport);
});

afterEach(async () => {
  transport.close();
  await server.close(1000);
  store.close();
  dir.remove();
});

/** A ledger line with the longest ids the API allows (128 characters). */
function longLine(seq: number): string {
  const vm = `vm-${String(seq).padStart(6, "0")}-${"x".repeat(118)}`;
  const snap = `snap-${"y".repeat(123)}`;
  return JSON.stringify({ seq, kind: "snap.storage.start", vm_id: vm, snapshot_id: snap, reason: "snapshot", hypervisor: "cloud-hypervisor", shape: { cpu: 4, mem_bytes: 1073741824, storage_bytes: 10737418240 }, storage_bytes: 10737418240, emitted_at: "2026-05-20T01:02:03.5Z" });
}

describe("FleetService.ReadMeteringEntries", () => {
  it("ends an answer before 2 MiB when `limit` entries would pass it, and reading on from next_fleet_seq gives every entry once", async () => {
    const total = 10_000;
    for (let from = 1; from <= total; from += 1000) store.merge("h1", "0123456789abcdef", Array.from({ length: 1000 }, (_, k) => ({ seq: from + k, line: longLine(from + k) })));
    const seqs: bigint[] = [];
    let answers = 0;
    let next = 1n;
    for (;;) {
      const res = await fleet.readMeteringEntries({ fromFleetSeq: next, limit: 10_000 });
      if (res.entries.length === 0) break;
      answers++;
      const bytes = toBinary(ReadMeteringEntriesResponseSchema, res).length;
      assert.ok(bytes <= PAGE_BYTES, `an answer of ${bytes} bytes`);
      seqs.push(...res.entries.map((e) => e.fleetSeq));
      assert.equal(res.nextFleetSeq, res.entries.at(-1)!.fleetSeq + 1n);
      next = res.nextFleetSeq;
    }
    // 10,000 of these entries are more than 4 MiB: one answer would have been refused.
    assert.ok(answers >= 3, `${answers} answers`);
    assert.deepEqual(seqs, Array.from({ length: total }, (_, k) => BigInt(k + 1)));
  });
});
