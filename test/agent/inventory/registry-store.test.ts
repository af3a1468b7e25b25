import { afterEach, beforeEach, describe, it } from "vitest";
import assert from "node:assert/strict";
import { appendFileSync, readFileSync, readdirSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { crc32 } from "node:zlib";
import { create } from "@bufbuild/protobuf";
import { InstanceSchema, InstanceState, SnapshotSchema } from "../../../gen/fleetlet/agent/v1/inventory_pb.js";
import { InstanceRegistry } from "../../../agent/inventory/instance-registry.js";
import { validateInstance } from "../../../agent/inventory/instance-validation.js";
import { prng } from "../../helpers/random-message.js";
import { tempDir } from "../../helpers/temp-dir.js";

let dir: ReturnType<typeof tempDir>;
beforeEach(() => (dir = tempDir("registry-store")));
afterEach(() => dir.remove());

const inst = (id: string, extra: object = {}) => validateInstance(create(InstanceSchema, { id, ...extra }), { tapPrefix: "fl-" });
const journals = () => readdirSync(dir.path).filter((f) => f.endsWith(".journal")).sort();
const view = (r: InstanceRegistry) => r.list().map((i) => `${i.id}:${i.name}:${i.state}`);
const crcHex = (text: string) => crc32(text).toString(16).padStart(8, "0");
/** A journal line as format 3 writes it: `<crc32> <JSON>`. */
const checkedLine = (json: string) => `${crcHex(json)} ${json}\n`;
/** The record of a format-3 journal line (the JSON after the checksum). */
const recordOf = (line: string) => JSON.parse(line.slice(9)) as unknown;
/** Writes a format-3 snapshot with a valid crc32 (what a test edits, it must re-sign). */
const writeSnapshot = (doc: object) => {
  const { crc32: _, ...rest } = doc as { crc32?: string };
  const body = JSON.stringify(rest);
  writeFileSync(join(dir.path, "instances.json"), `${body.slice(0, -1)},"crc32":"${crcHex(body)}"}\n`);
};

describe("registry on disk: snapshot + journal", () => {
  it("a commit appends one journal line and leaves the snapshot alone; reopening replays it", async () => {
    const r = InstanceRegistry.open(dir.path);
    await r.upsert(inst("a", { name: "first" })); // the first commit writes the snapshot
    const snapshot = readFileSync(join(dir.path, "instances.json"), "utf8");
    assert.deepEqual(journals(), ["instances-1.journal"]);
    await r.upsert(inst("b"));
    await r.setState("a", InstanceState.RUNNING);
    await r.remove("b");
    await r.registerSnapshot(create(SnapshotSchema, { id: "s1", hypervisor: "qemu", storageBytes: 10n }));
    assert.equal(readFileSync(join(dir.path, "instances.json"), "utf8"), snapshot, "snapshot not rewritten");
    const lines = readFileSync(join(dir.path, "instances-1.journal"), "utf8").split("\n").filter(Boolean);
    assert.equal(lines.length, 4);
    assert.deepEqual(recordOf(lines[2]!), { v: "4", del: ["b"], meter: { b: null } });
    const reopened = InstanceRegistry.open(dir.path);
    assert.deepEqual(view(reopened), view(r));
    assert.equal(reopened.resourceVersion, r.resourceVersion);
    assert.deepEqual(reopened.snapshotList().map((s) => s.id), ["s1"]);
  });

  it("a torn last record (crash mid-append) is set aside at open and cut off before the next append; a bad record before it stops the open with file and offset", async () => {
    const r = InstanceRegistry.open(dir.path);
    await r.upsert(inst("a"));
    await r.upsert(inst("b"));
    r.close();
    const path = join(dir.path, "instances-1.journal");
    const good = statSync(path).size;
    appendFileSync(path, 'ffffffff {"v":"9","put":[{"id":"c", "name": "a long torn tail"'); // no newline: never acknowledged
    const reopened = InstanceRegistry.open(dir.path);
    assert.equal(reopened.store.tornRecords, 1);
    assert.deepEqual(reopened.list().map((i) => i.id), ["a", "b"]);
    // Not deleted at open: the ledger cross-check may still find the line was acknowledged.
    assert.ok(statSync(path).size > good, "nothing cut at open");
    await reopened.upsert(inst("d"));
    reopened.close();
    const text = readFileSync(path, "utf8");
    assert.ok(text.endsWith("\n") && text.split("\n").filter(Boolean).length === 2, "cut back to the last whole record before the append: no torn bytes left after it");
    assert.deepEqual(InstanceRegistry.open(dir.path).list().map((i) => i.id), ["a", "b", "d"]);
    // A complete line that does not parse is not a torn write: refuse, naming where.
    writeFileSync(path, `not json\n${text}`);
    assert.throws(() => InstanceRegistry.open(dir.path), /instances-1\.journal: byte offset 0: unparseable journal record/);
    const size = Buffer.byteLength(text);
    writeFileSync(path, `${text}${checkedLine('{"v":"9","put":[{"name":"no id"}]}')}`);
    assert.throws(() => InstanceRegistry.open(dir.path), new RegExp(`instances-1\\.journal: byte offset ${size}: no id`));
    // A line without a checksum after checksummed ones: no version writes that.
    writeFileSync(path, `${text}{"v":"9"}\n`);
    assert.throws(() => InstanceRegistry.open(dir.path), new RegExp(`instances-1\\.journal: byte offset ${size}: journal record without a crc32 after checksummed ones`));
  });

  it("a flipped value byte in a journal record (vCPUs 2 → 9) or in the snapshot is refused with the file and offset", async () => {
    const r = InstanceRegistry.open(dir.path);
    await r.upsert(inst("a", { name: "web" }));
    await r.upsert(inst("b", { allocatedVcpus: 2 }));
    await r.upsert(inst("c"));
    r.close();
    const path = join(dir.path, "instances-1.journal");
    const text = readFileSync(path, "utf8");
    const offset = text.lastIndexOf("\n", text.indexOf('"allocatedVcpus":2')) + 1; // b's record (a's is in the snapshot)
    assert.match(text.slice(offset), /^[0-9a-f]{8} \{[^\n]*"allocatedVcpus":2/);
    writeFileSync(path, text.replace('"allocatedVcpus":2', '"allocatedVcpus":9'));
    assert.throws(() => InstanceRegistry.open(dir.path), new RegExp(`instances-1\\.journal: byte offset ${offset}: journal record does not match its crc32`));
    assert.equal(readFileSync(path, "utf8"), text.replace('"allocatedVcpus":2', '"allocatedVcpus":9'), "nothing changed on disk by the refusal");
    writeFileSync(path, text);
    const snapshot = readFileSync(join(dir.path, "instances.json"), "utf8");
    writeFileSync(join(dir.path, "instances.json"), snapshot.replace('"name":"web"', '"name":"wex"'));
    assert.throws(() => InstanceRegistry.open(dir.path), /instances\.json: byte offset 0: the snapshot does not match its crc32/);
    writeFileSync(join(dir.path, "instances.json"), snapshot);
    assert.deepEqual(view(InstanceRegistry.open(dir.path)), ["a:web:1", "b::1", "c::1"]);
  });

  it("a format-2 snapshot and journal (no checksums, written by earlier versions) load; new records are appended checksummed", async () => {
    writeFileSync(join(dir.path, "instances.json"), `${JSON.stringify({ format: 2, journal: 4, resourceVersion: "1", instances: [{ id: "old", name: "kept" }], meter: { old: [0, 1, 0] } })}\n`);
    writeFileSync(join(dir.path, "instances-4.journal"), '{"v":"2","put":[{"id":"old2","name":"also"}],"meter":{"old2":[0,1,0]}}\n');
    const r = InstanceRegistry.open(dir.path);
    assert.deepEqual(view(r), ["old:kept:0", "old2:also:0"]);
    await r.upsert(inst("new"));
    r.close();
    const lines = readFileSync(join(dir.path, "instances-4.journal"), "utf8").split("\n").filter(Boolean);
    assert.match(lines[1]!, /^[0-9a-f]{8} \{"v":"3"/);
    assert.deepEqual(view(InstanceRegistry.open(dir.path)), ["new::1", "old:kept:0", "old2:also:0"]);
  });

  it("the journal is folded into a new snapshot once it outgrows it; nothing is lost across compactions", async () => {
    const r = InstanceRegistry.open(dir.path);
    // ~500 B per record: 256 KiB of journal after ~520 commits.
    for (let k = 0; k < 1200; k++) await r.upsert(inst(`vm${k % 3}`, { name: `n${k}-${"x".repeat(200)}`, labels: { pad: "y".repeat(200) } }));
    const [journal] = journals();
    assert.ok(journal && journal !== "instances-1.journal", `compacted at least once (journal now ${journal})`);
    assert.equal(journals().length, 1, "the old journal is gone");
    const reopened = InstanceRegistry.open(dir.path);
    assert.deepEqual(view(reopened), view(r));
    assert.equal(reopened.resourceVersion, 1200n);
  });

  it("a journal the snapshot does not name (a crash during compaction) is deleted; a named one that is missing stops the open", async () => {
    const r = InstanceRegistry.open(dir.path);
    await r.upsert(inst("a"));
    r.close();
    writeFileSync(join(dir.path, "instances-2.journal"), '{"v":"7","put":[{"id":"ghost"}]}\n');
    assert.deepEqual(InstanceRegistry.open(dir.path).list().map((i) => i.id), ["a"]);
    assert.deepEqual(journals(), ["instances-1.journal"]);
    const doc = JSON.parse(readFileSync(join(dir.path, "instances.json"), "utf8")) as { journal: number };
    writeSnapshot({ ...doc, journal: 5 });
    assert.throws(() => InstanceRegistry.open(dir.path), /instances-5\.journal: missing/);
  });

  it("a format-1 file (whole-file registry) loads, and the first commit moves it to snapshot + journal", async () => {
    writeFileSync(join(dir.path, "instances.json"), JSON.stringify({ format: 1, resourceVersion: "3", instances: [{ id: "old", name: "kept" }], meter: { old: [0, 1, 0] } }));
    const r = InstanceRegistry.open(dir.path);
    assert.deepEqual(view(r), ["old:kept:0"]);
    await r.upsert(inst("new"));
    const doc = JSON.parse(readFileSync(join(dir.path, "instances.json"), "utf8")) as { format: number; journal: number };
    assert.deepEqual([doc.format, doc.journal], [3, 1]);
    assert.deepEqual(view(InstanceRegistry.open(dir.path)), ["new::1", "old:kept:0"]);
  });
});

describe("registry on disk: fuzzed", () => {
  it("any corruption of the snapshot or the journal either loads or stops with the file named — never another kind of crash", async () => {
    const r = InstanceRegistry.open(dir.path);
    await r.upsert(inst("a", { labels: { k: "v" } }));
    await r.upsert(inst("b"));
    await r.setState("a", InstanceState.RUNNING);
    await r.remove("b");
    await r.registerSnapshot(create(SnapshotSchema, { id: "s1", hypervisor: "qemu", storageBytes: 10n }));
    r.close();
    const files = ["instances.json", "instances-1.journal"].map((f) => join(dir.path, f));
    const originals = files.map((f) => readFileSync(f));
    const rand = prng(42);
    let loaded = 0;
    let refused = 0;
    for (let round = 0; round < 400; round++) {
      const k = Math.floor(rand() * files.length);
      const bytes = Buffer.from(originals[k]!);
      const edits = 1 + Math.floor(rand() * 4);
      let mutated: Buffer = bytes;
      for (let e = 0; e < edits; e++) {
        const at = Math.floor(rand() * mutated.length);
        const what = rand();
        if (what < 0.4) mutated[at] = Math.floor(rand() * 256);
        else if (what < 0.6) mutated = mutated.subarray(0, at);
        else if (what < 0.8) mutated = Buffer.concat([mutated.subarray(0, at), Buffer.from(['"', "{", "}", "[", "]", ",", "0", "null", "\n"][Math.floor(rand() * 9)]!), mutated.subarray(at)]);
        else mutated = Buffer.concat([mutated.subarray(0, at), mutated.subarray(at + 1 + Math.floor(rand() * 8))]);
      }
      files.forEach((f, i) => writeFileSync(f, i === k ? mutated : originals[i]!));
      try {
        const opened = InstanceRegistry.open(dir.path);
        opened.list(); // what loaded must be usable
        opened.close();
        loaded++;
      } catch (e) {
        assert.ok(e instanceof Error && /instances(\.json|-\d+\.journal)/.test(e.message) && e.constructor === Error, `round ${round}: ${(e as Error).constructor.name}: ${(e as Error).message}`);
        refused++;
      }
    }
    assert.ok(loaded > 0 && refused > 0, `loaded ${loaded}, refused ${refused}: the mutations should produce both`);
  });

  it("flipped bytes anywhere in a checksummed snapshot or journal are refused with the file named — never loaded as other values", async () => {
    const r = InstanceRegistry.open(dir.path);
    await r.upsert(inst("a", { labels: { k: "v" }, allocatedVcpus: 2 }));
    await r.upsert(inst("b", { allocatedVcpus: 2 }));
    await r.setState("a", InstanceState.RUNNING);
    await r.upsert(inst("c", { name: "web" }));
    await r.registerSnapshot(create(SnapshotSchema, { id: "s1", hypervisor: "qemu", storageBytes: 10n }));
    r.close();
    const files = ["instances.json", "instances-1.journal"].map((f) => join(dir.path, f));
    const originals = files.map((f) => readFileSync(f));
    const rand = prng(7);
    let refused = 0;
    for (let round = 0; round < 400; round++) {
      const k = Math.floor(rand() * files.length);
      const mutated = Buffer.from(originals[k]!);
      const flips = 1 + Math.floor(rand() * 3);
      const at: number[] = [];
      for (let f = 0; f < flips; f++) {
        const i = Math.floor(rand() * mutated.length);
        // A changed value, never the same byte again (then nothing would be corrupt).
        mutated[i] = (mutated[i]! + 1 + Math.floor(rand() * 255)) % 256;
        at.push(i);
      }
      if (mutated.equals(originals[k]!)) continue;
      files.forEach((f, i) => writeFileSync(f, i === k ? mutated : originals[i]!));
      // The one flip that may load: the journal's final newline, which makes its last record
      // a torn tail (set aside, as after a crash mid-append; the ledger cross-check covers it).
      const onlyFinalNewline = k === 1 && at.every((i) => i === mutated.length - 1);
      try {
        const opened = InstanceRegistry.open(dir.path);
        opened.close();
        assert.ok(onlyFinalNewline && opened.store.tornRecords === 1, `round ${round}: flips at ${at.join(",")} of ${files[k]} loaded`);
      } catch (e) {
        assert.ok(e instanceof Error && e.message.includes(files[k]!) && /byte offset \d+/.test(e.message), `round ${round}: ${(e as Error).message}`);
        refused++;
      }
    }
    assert.ok(refused > 350, `refused ${refused}`);
  });
});
