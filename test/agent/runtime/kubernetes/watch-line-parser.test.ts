import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { parseWatchLine, WatchLineError, WatchLineReader } from "../../../../agent/runtime/kubernetes/watch-line-parser.js";
import { KUBE_FIXTURES } from "../../../helpers/kube-api-double.js";
import { prng } from "../../../helpers/random-message.js";

const pods = JSON.parse(readFileSync(join(KUBE_FIXTURES, "pods.json"), "utf8")) as { items: Record<string, unknown>[] };
const expired = readFileSync(join(KUBE_FIXTURES, "status/410-expired.json"), "utf8");
const podEvent = (type: string, i = 0) => JSON.stringify({ type, object: { kind: "Pod", apiVersion: "v1", ...pods.items[i] } });
const BOOKMARK = '{"type":"BOOKMARK","object":{"kind":"Pod","apiVersion":"v1","metadata":{"resourceVersion":"48301","creationTimestamp":null},"spec":{"containers":null},"status":{}}}';

describe("watch line parser", () => {
  it("reads ADDED/MODIFIED/DELETED with the object's resourceVersion", () => {
    for (const type of ["ADDED", "MODIFIED", "DELETED"]) {
      const e = parseWatchLine(podEvent(type, 2));
      assert.equal(e.type, type);
      assert.ok(e.type !== "BOOKMARK" && e.type !== "ERROR");
      assert.equal(e.resourceVersion, "46502");
      assert.equal((e.object.metadata as { name: string }).name, "db-0");
    }
  });

  it("reads a BOOKMARK (an empty Pod shell) as just its resourceVersion", () => {
    assert.deepEqual(parseWatchLine(BOOKMARK), { type: "BOOKMARK", resourceVersion: "48301" });
  });

  it("reads an ERROR event's Status (410 Expired as the API server sends it)", () => {
    const e = parseWatchLine(`{"type":"ERROR","object":${expired.trim()}}`);
    assert.deepEqual(e, { type: "ERROR", status: { code: 410, reason: "Expired", message: "too old resource version: 48213 (48302)" } });
  });

  it("rejects everything else with WatchLineError", () => {
    const bad = [
      "",
      "{",
      "null",
      "[]",
      '"ADDED"',
      "{}",
      '{"type":"ADDED"}',
      '{"type":"ADDED","object":null}',
      '{"type":"ADDED","object":[]}',
      '{"type":"ADDED","object":{"metadata":{}}}',
      '{"type":"ADDED","object":{"metadata":{"resourceVersion":12}}}',
      '{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":""}}}',
      '{"type":"ERROR","object":{"code":410}}',
      '{"type":"RENAMED","object":{"metadata":{"resourceVersion":"1"}}}',
      '{"type":7,"object":{"metadata":{"resourceVersion":"1"}}}',
    ];
    for (const line of bad) assert.throws(() => parseWatchLine(line), WatchLineError, line);
  });

  it("reader: lines cut at every byte boundary (inside UTF-8 characters too) come out whole", () => {
    const withUnicode = JSON.stringify({ type: "MODIFIED", object: { metadata: { resourceVersion: "9", name: "é😀", namespace: "x", uid: "u" } } });
    const stream = Buffer.from(`${podEvent("ADDED")}\n${BOOKMARK}\n\n${withUnicode}\n`);
    for (let cut = 0; cut <= stream.length; cut++) {
      const r = new WatchLineReader();
      const lines = [...r.push(stream.subarray(0, cut)), ...r.push(stream.subarray(cut))];
      assert.equal(r.end(), undefined);
      assert.deepEqual(lines, [podEvent("ADDED"), BOOKMARK, withUnicode], `cut at ${cut}`);
    }
  });

  it("reader: a last line without a newline is handed out by end(); an over-long line is an error", () => {
    const r = new WatchLineReader();
    assert.deepEqual(r.push(Buffer.from(`${BOOKMARK}\n{"type":"ADD`)), [BOOKMARK]);
    assert.equal(r.end(), '{"type":"ADD');
    const small = new WatchLineReader(100);
    assert.throws(() => small.push(Buffer.alloc(101, 0x61)), WatchLineError);
    assert.deepEqual(small.push(Buffer.from("ok\n")), ["ok"], "usable again after the error");
  });

  it("fuzz: mutated event lines, random bytes and random chunking never throw anything but WatchLineError", () => {
    const seed = Date.now() % 1e9;
    const rnd = prng(seed);
    const samples = [podEvent("ADDED"), podEvent("DELETED", 5), BOOKMARK, `{"type":"ERROR","object":${expired.trim()}}`];
    let events = 0;
    for (let i = 0; i < 3_000; i++) {
      const line = Buffer.from(samples[Math.floor(rnd() * samples.length)]!);
      const r = rnd();
      if (r < 0.3) {
        for (let k = 0; k < 1 + Math.floor(rnd() * 4); k++) line[Math.floor(rnd() * line.length)] = Math.floor(rnd() * 256);
      }
      const body = r < 0.5 ? line.subarray(0, Math.floor(rnd() * line.length)) : r < 0.6 ? Buffer.from(Array.from({ length: Math.floor(rnd() * 200) }, () => Math.floor(rnd() * 256))) : line;
      const reader = new WatchLineReader(64 * 1024);
      const stream = Buffer.concat([body, Buffer.from("\n"), body]);
      const lines: string[] = [];
      for (let at = 0; at < stream.length; ) {
        const n = 1 + Math.floor(rnd() * 300);
        try {
          lines.push(...reader.push(stream.subarray(at, at + n)));
        } catch (e) {
          assert.ok(e instanceof WatchLineError, `seed ${seed}: reader threw ${String(e)}`);
        }
        at += n;
      }
      const last = reader.end();
      if (last !== undefined) lines.push(last);
      for (const l of lines) {
        try {
          const e = parseWatchLine(l);
          assert.ok(["ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"].includes(e.type));
          events++;
        } catch (e) {
          assert.ok(e instanceof WatchLineError, `seed ${seed}: ${JSON.stringify(l.slice(0, 80))} threw ${String(e)}`);
        }
      }
    }
    assert.ok(events > 100, `seed ${seed}: intact lines still parse (${events})`);
  });
});
