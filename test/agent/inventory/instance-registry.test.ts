import { afterEach, beforeEach, describe, it } from "vitest";
import assert from "node:assert/strict";
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { InstanceSchema, InstanceState } from "../../../gen/fleetlet/agent/v1/inventory_pb.js";
import { InstanceRegistry } from "../../../agent/inventory/instance-registry.js";
import { validateInstance } from "../../../agent/inventory/instance-validation.js";
import { tempDir } from "../../helpers/temp-dir.js";

let dir: ReturnType<typeof tempDir>;
beforeEach(() => (dir = tempDir("registry")));
afterEach(() => dir.remove());

const inst = (id: string, extra: object = {}) => validateInstance(create(InstanceSchema, { id, ...extra }), { tapPrefix: "fl-" });

describe("InstanceRegistry", () => {
  it("upserts by id and reloads the same instances from the state dir", async () => {
    const r = InstanceRegistry.open(dir.path);
    await r.upsert(inst("b", { name: "two", labels: { team: "x" } }));
    await r.upsert(inst("a", { allocatedMemoryBytes: 1n << 40n }));
    await r.upsert(inst("b", { name: "two again" }));
    const reopened = InstanceRegistry.open(dir.path);
    assert.deepEqual(reopened.list().map((i) => [i.id, i.name]), [["a", ""], ["b", "two again"]]);
    assert.equal(reopened.get("a")!.allocatedMemoryBytes, 1n << 40n);
    assert.equal(reopened.resourceVersion, 3n);
    assert.notEqual(reopened.incarnation, r.incarnation);
  });
  it("an identical rewrite changes nothing: no version bump, no event", async () => {
    const r = InstanceRegistry.open(dir.path);
    const events: string[] = [];
    r.subscribe((c) => events.push(`${c.type}:${c.instance.id}`));
    await r.upsert(inst("a", { name: "n" }));
    await r.upsert(inst("a", { name: "n" }));
    assert.equal(r.resourceVersion, 1n);
    assert.deepEqual(events, ["upsert:a"]);
  });
  it("remove: NOT_FOUND for an unknown id, durable otherwise", async () => {
    const r = InstanceRegistry.open(dir.path);
    await assert.rejects(r.remove("nope"), (e: unknown) => e instanceof ConnectError && e.code === Code.NotFound);
    await r.upsert(inst("a"));
    await r.remove("a");
    assert.equal(InstanceRegistry.open(dir.path).size, 0);
  });
  it("a burst of upserts in one tick shares one write (group commit)", async () => {
    const r = InstanceRegistry.open(dir.path);
    await Promise.all(Array.from({ length: 200 }, (_, i) => r.upsert(inst(`vm-${i}`))));
    assert.equal(r.writes, 1, "200 changes, one write");
    assert.equal(InstanceRegistry.open(dir.path).size, 200);
    assert.deepEqual(readdirSync(dir.path).filter((f) => f.includes("tmp")), [], "no temp file left behind");
  });
  it("ignores a temp file left by a crash mid-write and keeps the last good state", async () => {
    const r = InstanceRegistry.open(dir.path);
    await r.upsert(inst("a"));
    writeFileSync(join(dir.path, ".instances.json.tmp-999"), '{"format":1,"instances":[{"id":"half');
    const reopened = InstanceRegistry.open(dir.path);
    assert.deepEqual(reopened.list().map((i) => i.id), ["a"]);
    assert.deepEqual(readdirSync(dir.path).filter((f) => f.includes("tmp")), []);
  });
  it("refuses to start over a corrupt registry rather than losing it", async () => {
    writeFileSync(join(dir.path, "instances.json"), '{"format":1,"instances":[');
    assert.throws(() => InstanceRegistry.open(dir.path), /instances\.json: not valid JSON/);
    assert.equal(readFileSync(join(dir.path, "instances.json"), "utf8"), '{"format":1,"instances":[', "left untouched");
  });
  it("records the pid's start time and keeps it across re-registration of the same pid", async () => {
    const r = InstanceRegistry.open(dir.path);
    const a = await r.upsert(inst("a", { pid: process.pid }));
    assert.ok(a.pidStartTime !== undefined && a.pidStartTime > 0n);
    const again = await r.upsert(inst("a", { pid: process.pid, name: "renamed" }));
    assert.equal(again.pidStartTime, a.pidStartTime);
  });
  it("a failed write is not acknowledged, is rolled back, and a retry really writes", async () => {
    const r = InstanceRegistry.open(dir.path);
    await r.upsert(inst("a", { name: "one" }));
    rmSync(dir.path, { recursive: true, force: true });
    await assert.rejects(r.upsert(inst("b")), (e: unknown) => e instanceof ConnectError && e.code === Code.Unavailable && /could not persist/.test(e.rawMessage));
    await assert.rejects(r.upsert(inst("a", { name: "two" })), (e: unknown) => e instanceof ConnectError && e.code === Code.Unavailable);
    assert.equal(r.get("b"), undefined, "rolled back");
    assert.equal(r.get("a")!.name, "one", "rolled back to what is on disk");
    mkdirSync(dir.path);
    // The same request again: identical to memory after the rollback, so it must write, not
    // answer OK from memory.
    await r.upsert(inst("b"));
    await r.upsert(inst("a", { name: "one" }));
    const reopened = InstanceRegistry.open(dir.path);
    assert.deepEqual(reopened.list().map((i) => [i.id, i.name]), [["a", "one"], ["b", ""]]);
  });
  it("an identical registration arriving while the first is being written waits for that write", async () => {
    const r = InstanceRegistry.open(dir.path);
    const first = r.upsert(inst("a"));
    const second = r.upsert(inst("a"));
    await Promise.all([first, second]);
    assert.equal(InstanceRegistry.open(dir.path).size, 1);
  });
  it("two identical SetInstanceState calls on a failing disk: neither is acknowledged before the write that carries the change", async () => {
    const r = InstanceRegistry.open(dir.path);
    await r.upsert(inst("a", { state: InstanceState.RUNNING, pid: process.pid }));
    rmSync(dir.path, { recursive: true, force: true });
    // A changes memory and waits for its write; B finds memory already STOPPED. B must not be
    // acknowledged from memory: the write fails and A's change is rolled back.
    const a = r.setState("a", InstanceState.STOPPED);
    const b = r.setState("a", InstanceState.STOPPED);
    const unavailable = (e: unknown) => e instanceof ConnectError && e.code === Code.Unavailable;
    await assert.rejects(a, unavailable);
    await assert.rejects(b, unavailable, "acknowledged a state that never reached the disk");
    assert.equal(r.get("a")!.state, InstanceState.RUNNING, "rolled back");
    mkdirSync(dir.path);
    await r.setState("a", InstanceState.STOPPED);
    assert.equal(InstanceRegistry.open(dir.path).get("a")!.state, InstanceState.STOPPED);
  });
});
