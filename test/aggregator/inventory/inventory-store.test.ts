import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { openSync, readSync, statSync, writeSync, closeSync } from "node:fs";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { InstanceSchema, InstanceState } from "../../../gen/fleetlet/agent/v1/inventory_pb.js";
import { INVENTORY_STORE_FILE, InventoryStore } from "../../../aggregator/inventory/inventory-store.js";
import { tempDir } from "../../helpers/temp-dir.js";
import { WAL_SIZE_LIMIT_BYTES } from "../../../aggregator/metering/store-database.js";

describe("InventoryStore", () => {
  it("a corrupt inventory.sqlite stops the aggregator with the file's name, not SQLite's bare message", () => {
    const dir = tempDir("inventory-store");
    try {
      const store = InventoryStore.open(dir.path);
      const many = Array.from({ length: 400 }, (_, k) => create(InstanceSchema, { id: `vm-${k}`, name: "x".repeat(200), state: InstanceState.RUNNING }));
      store.apply("h1", { incarnation: "i1", resourceVersion: 400, lastSeenMs: 1 }, many, []);
      store.close();
      // Scribble over every page after the header page: the b-trees no longer parse.
      const file = join(dir.path, INVENTORY_STORE_FILE);
      const size = statSync(file).size;
      assert.ok(size > 16_384, `a store of several pages (${size} bytes)`);
      const fd = openSync(file, "r+");
      const header = Buffer.alloc(100);
      readSync(fd, header, 0, 100, 0);
      const pageSize = header.readUInt16BE(16) || 65_536;
      for (let at = pageSize; at < size; at += pageSize) writeSync(fd, Buffer.alloc(64, 0xa5), 0, 64, at);
      closeSync(fd);
      assert.throws(
        () => {
          const again = InventoryStore.open(dir.path);
          try {
            again.load();
          } finally {
            again.close();
          }
        },
        (e: unknown) => e instanceof Error && e.message.startsWith(`${file}: `) && /corrupt|malformed/.test(e.message),
      );
    } finally {
      dir.remove();
    }
  });

  it("the WAL does not keep the high-water mark of a big relist: it is cut back after checkpoints", () => {
    const dir = tempDir("inventory-store-wal");
    try {
      const store = InventoryStore.open(dir.path);
      // One host's relist of 8,000 instances of ~1 KB: an ~9 MB transaction in the WAL.
      const many = Array.from({ length: 8000 }, (_, k) => create(InstanceSchema, { id: `vm-${k}`, name: "x".repeat(1000) }));
      store.apply("h1", { incarnation: "i1", resourceVersion: 1, lastSeenMs: 1 }, many, []);
      store.apply("h1", { incarnation: "i1", resourceVersion: 2, lastSeenMs: 1 }, many, []);
      for (let k = 0; k < 20; k++) store.apply("h1", { incarnation: "i1", resourceVersion: 3 + k, lastSeenMs: 1 }, many.slice(k, k + 1), []);
      const wal = statSync(join(dir.path, `${INVENTORY_STORE_FILE}-wal`)).size;
      const db = statSync(join(dir.path, INVENTORY_STORE_FILE)).size;
      assert.ok(db > 8_000_000, `database ${db} bytes`);
      assert.ok(wal <= WAL_SIZE_LIMIT_BYTES, `WAL ${wal} bytes after the relists (limit ${WAL_SIZE_LIMIT_BYTES})`);
      assert.equal(store.load()[0]?.instances.length, 8000);
      store.close();
    } finally {
      dir.remove();
    }
  });
});
