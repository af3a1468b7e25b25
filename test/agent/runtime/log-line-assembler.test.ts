import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { TimestampSchema, type Timestamp } from "@bufbuild/protobuf/wkt";
import { LogStream, type LogLine } from "../../../gen/fleetlet/agent/v1/runtime_pb.js";
import { LogLineAssembler, MAX_LINE_BYTES, parseRfc3339Nano } from "../../../agent/runtime/log-line-assembler.js";
import { prng } from "../../helpers/random-message.js";

const utf8 = new TextEncoder();
const ts = (seconds: number, nanos = 0): Timestamp => create(TimestampSchema, { seconds: BigInt(seconds), nanos });

/** The bytes a LogLine stands for: raw when the text could not keep them, else the text. */
const lineBytes = (l: LogLine): Uint8Array => (l.raw.length > 0 ? l.raw : utf8.encode(l.text));

/** Concatenates lines back into the stream they came from ("\n" after every complete line). */
function reassemble(lines: LogLine[]): Buffer {
  const parts: Uint8Array[] = [];
  for (const l of lines) {
    parts.push(lineBytes(l));
    if (!l.continued && !l.unterminated) parts.push(Uint8Array.of(0x0a));
  }
  return Buffer.concat(parts);
}

/** Pushes `bytes` cut at `cuts` (sorted offsets), then ends. */
function assemble(bytes: Uint8Array, cuts: number[], maxLineBytes?: number): LogLine[] {
  const a = new LogLineAssembler(LogStream.STDOUT, maxLineBytes === undefined ? undefined : { maxLineBytes });
  const out: LogLine[] = [];
  let at = 0;
  for (const c of [...cuts, bytes.length]) {
    out.push(...a.push(bytes.subarray(at, c)));
    at = c;
  }
  out.push(...a.end());
  return out;
}

const summary = (lines: LogLine[]) => lines.map((l) => ({ text: l.text, continued: l.continued, unterminated: l.unterminated, raw: Buffer.from(l.raw).toString("hex") }));

describe("LogLineAssembler", () => {
  it("splits on \\n, strips it, keeps \\r and empty lines, and marks the unterminated rest", () => {
    const lines = assemble(utf8.encode("a\n\nb\r\n\rc\nrest"), []);
    assert.deepEqual(summary(lines), [
      { text: "a", continued: false, unterminated: false, raw: "" },
      { text: "", continued: false, unterminated: false, raw: "" },
      { text: "b\r", continued: false, unterminated: false, raw: "" },
      { text: "\rc", continued: false, unterminated: false, raw: "" },
      { text: "rest", continued: false, unterminated: true, raw: "" },
    ]);
    for (const l of lines) assert.equal(l.stream, LogStream.STDOUT);
  });

  it("end() gives nothing after a final \\n or on an empty log, and can be called again", () => {
    const a = new LogLineAssembler(LogStream.STDERR);
    assert.deepEqual(a.end(), []);
    assert.equal(a.push(utf8.encode("x\n")).length, 1);
    assert.deepEqual(a.end(), []);
    assert.deepEqual(a.push(new Uint8Array(0)), []);
    assert.deepEqual(a.end(), []);
  });

  it("gives the same lines however a sample with multi-byte characters is cut (every boundary, every pair)", () => {
    const sample = utf8.encode("héllo 😀 wörld\n\n日本語\r\n\u{feff}bom\n😀😀\nlast é");
    const whole = summary(assemble(sample, []));
    assert.equal(whole.length, 6);
    assert.equal(whole[3]!.text, "\u{feff}bom", "a BOM at the start of a line is text");
    assert.ok(whole.every((l) => l.raw === ""), "valid UTF-8 never needs raw");
    for (let i = 0; i <= sample.length; i++) {
      assert.deepEqual(summary(assemble(sample, [i])), whole, `cut at ${i}`);
      for (let j = i; j <= sample.length; j++) assert.deepEqual(summary(assemble(sample, [i, j])), whole, `cuts at ${i}, ${j}`);
    }
  });

  it("every chunk a single byte", () => {
    const sample = utf8.encode("ä😀\nb\n");
    assert.deepEqual(
      summary(assemble(sample, Array.from({ length: sample.length }, (_, i) => i))).map((l) => l.text),
      ["ä😀", "b"],
    );
  });

  it("keeps invalid UTF-8 as raw bytes with replacement characters in the text", () => {
    const bytes = Uint8Array.of(0x61, 0xff, 0x62, 0xc3, 0x0a, 0xe2, 0x82);
    const lines = assemble(bytes, [3]);
    assert.deepEqual(summary(lines), [
      { text: "a\ufffdb\ufffd", continued: false, unterminated: false, raw: "61ff62c3" },
      { text: "\ufffd", continued: false, unterminated: true, raw: "e282" },
    ]);
    assert.deepEqual(reassemble(lines), Buffer.from(bytes));
  });

  it("splits a line over the maximum into continued pieces, on character boundaries", () => {
    const text = "é".repeat(10) + "x"; // 21 bytes
    const lines = assemble(utf8.encode(text + "\n"), [], 8);
    assert.deepEqual(summary(lines).map((l) => [l.text, l.continued]), [
      ["éééé", true],
      ["éééé", true],
      ["ééx", false],
    ]);
    const emoji = assemble(utf8.encode("a😀😀\n"), [], 4);
    assert.deepEqual(summary(emoji).map((l) => [l.text, l.continued]), [
      ["a", true],
      ["😀", true],
      ["😀", false],
    ]);
  });

  it("a line of exactly the maximum is one LogLine; one byte more is two", () => {
    const exact = "x".repeat(MAX_LINE_BYTES);
    assert.deepEqual(summary(assemble(utf8.encode(exact + "\n"), [1000])).map((l) => [l.text.length, l.continued]), [[MAX_LINE_BYTES, false]]);
    assert.deepEqual(summary(assemble(utf8.encode(exact + "y\n"), [1000])).map((l) => [l.text.length, l.continued]), [
      [MAX_LINE_BYTES, true],
      [1, false],
    ]);
    // the unterminated tail of a long line
    assert.deepEqual(summary(assemble(utf8.encode(exact + "yz"), [])).map((l) => [l.text.length, l.continued, l.unterminated]), [
      [MAX_LINE_BYTES, true, false],
      [2, false, true],
    ]);
  });

  it("a 100 KiB line of 3-byte characters in 16 KiB chunks comes back exactly", () => {
    const text = "日".repeat((100 * 1024) / 3) + "!";
    const bytes = utf8.encode(text + "\n");
    const cuts: number[] = [];
    for (let c = 16 * 1024; c < bytes.length; c += 16 * 1024) cuts.push(c);
    const lines = assemble(bytes, cuts);
    assert.equal(lines.length, 2);
    assert.ok(lines[0]!.continued && !lines[1]!.continued);
    for (const l of lines) assert.ok(utf8.encode(l.text).length <= MAX_LINE_BYTES);
    assert.equal(lines.map((l) => l.text).join(""), text);
  });

  it("gives each line (every piece of it) the timestamp of the chunk it started in", () => {
    const a = new LogLineAssembler(LogStream.STDERR, { maxLineBytes: 4 });
    const out = [
      ...a.push(utf8.encode("ab"), ts(1)),
      ...a.push(utf8.encode("cdef\n\ngh"), ts(2)),
      ...a.push(utf8.encode("\n"), ts(3)),
      ...a.push(utf8.encode("\ni"), ts(4)),
      ...a.push(utf8.encode("j"), ts(5)),
      ...a.end(),
    ];
    assert.deepEqual(
      out.map((l) => [l.text, Number(l.timestamp?.seconds), l.continued, l.unterminated]),
      [
        ["abcd", 1, true, false],
        ["ef", 1, false, false],
        ["", 2, false, false],
        ["gh", 2, false, false],
        ["", 4, false, false],
        ["ij", 4, false, true],
      ],
    );
    const untimed = new LogLineAssembler(LogStream.STDOUT).push(utf8.encode("x\n"));
    assert.equal(untimed[0]!.timestamp, undefined);
  });

  it("rejects a maximum that cannot hold a character", () => {
    assert.throws(() => new LogLineAssembler(LogStream.STDOUT, { maxLineBytes: 3 }), RangeError);
  });

  it("fuzz: random bytes in random chunks reassemble exactly, pieces within bounds (seeded)", () => {
    const alphabet = ["a", "b", " ", "\n", "\n", "\r", "é", "日", "😀", "\u{feff}"].map((s) => utf8.encode(s));
    const invalid = [Uint8Array.of(0xff), Uint8Array.of(0x80), Uint8Array.of(0xc3), Uint8Array.of(0xf0, 0x9f)];
    for (let seed = 1; seed <= 400; seed++) {
      const rnd = prng(seed);
      const withInvalid = rnd() < 0.3;
      const parts: Uint8Array[] = [];
      const n = Math.floor(rnd() * 200);
      for (let i = 0; i < n; i++) {
        if (withInvalid && rnd() < 0.1) parts.push(invalid[Math.floor(rnd() * invalid.length)]!);
        else if (rnd() < 0.05) parts.push(utf8.encode("x".repeat(Math.floor(rnd() * 100))));
        else parts.push(alphabet[Math.floor(rnd() * alphabet.length)]!);
      }
      const input = Buffer.concat(parts);
      const cuts: number[] = [];
      for (let c = 0; c < input.length; c += 1 + Math.floor(rnd() * 12)) if (c > 0) cuts.push(c);
      const max = 4 + Math.floor(rnd() * 30);
      const lines = assemble(input, cuts, max);
      const why = `seed ${seed}`;
      assert.deepEqual(reassemble(lines), input, why);
      lines.forEach((l, i) => {
        const len = lineBytes(l).length;
        assert.ok(len <= max, `${why}: piece of ${len} > ${max}`);
        if (l.continued) assert.ok(len > 0, `${why}: empty continued piece`);
        if (l.unterminated) assert.equal(i, lines.length - 1, `${why}: unterminated before the end`);
        assert.ok(!(l.continued && l.unterminated), why);
      });
      if (!withInvalid) assert.ok(lines.every((l) => l.raw.length === 0), `${why}: a valid character was split`);
    }
  });
});

describe("parseRfc3339Nano", () => {
  const secs = (iso: string) => BigInt(Date.parse(iso) / 1000);
  it("keeps nanoseconds", () => {
    const t = parseRfc3339Nano("2026-11-22T03:04:05.123456789Z")!;
    assert.equal(t.seconds, secs("2026-11-22T03:04:05Z"));
    assert.equal(t.nanos, 123456789);
  });
  it("handles offsets, short and missing fractions, lower-case t/z", () => {
    const cases: [string, string, number][] = [
      ["2026-11-22T03:04:05+01:00", "2026-11-22T02:04:05Z", 0],
      ["2026-11-22T03:04:05.5-02:30", "2026-11-22T05:34:05Z", 500_000_000],
      ["2026-11-22t03:04:05.000001z", "2026-11-22T03:04:05Z", 1000],
      ["1970-01-01T00:00:00Z", "1970-01-01T00:00:00Z", 0],
      ["1969-12-31T23:59:59.999999999Z", "1969-12-31T23:59:59Z", 999_999_999],
      ["2024-02-29T12:00:00.1234567891234Z", "2024-02-29T12:00:00Z", 123_456_789],
    ];
    for (const [text, iso, nanos] of cases) {
      const t = parseRfc3339Nano(text);
      assert.ok(t, text);
      assert.equal(t.seconds, secs(iso), text);
      assert.equal(t.nanos, nanos, text);
    }
    assert.equal(parseRfc3339Nano("0001-01-01T00:00:00Z")!.seconds, -62135596800n, "Go's zero time");
  });
  it("rejects what is not RFC 3339", () => {
    for (const bad of ["", "garbage", "2026-11-22T03:04:05", "2026-11-22 03:04:05Z", "2026-13-01T00:00:00Z", "2025-02-29T00:00:00Z", "2026-04-31T00:00:00Z", "2026-11-22T24:00:00Z", "2026-11-22T03:60:00Z", "2026-11-22T03:04:60Z", "2026-11-22T03:04:05.Z", "2026-11-22T03:04:05+1:00", "2026-11-22T03:04:05Z ", " 2026-11-22T03:04:05Z"]) {
      assert.equal(parseRfc3339Nano(bad), undefined, JSON.stringify(bad));
    }
  });
});
