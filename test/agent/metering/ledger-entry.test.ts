import { describe, it } from "vitest";
import assert from "node:assert/strict";
import {
  LedgerFormatError,
  METERING_KINDS,
  METERING_REASONS,
  encodeLedgerLine,
  formatEmittedAt,
  parseEmittedAt,
  parseLedgerLine,
  type LedgerEntryInput,
} from "../../../agent/metering/ledger-entry.js";
import { prng } from "../../helpers/random-message.js";

/** metering.md's example, verbatim. */
const EXAMPLE =
  '{"seq":7,"kind":"vm.compute.start","vm_id":"vm1","reason":"boot","hypervisor":"cloud-hypervisor","shape":{"cpu":4,"mem_bytes":1073741824,"storage_bytes":10737418240},"emitted_at":"2026-05-20T01:02:03Z"}';
const EXAMPLE_NS = BigInt(Date.UTC(2026, 4, 20, 1, 2, 3)) * 1_000_000n;

const formatError = (pattern: RegExp) => (e: unknown) => e instanceof LedgerFormatError && pattern.test(e.message);

describe("ledger entry: metering.md behaviour check 1", () => {
  it("encodes the example entry byte for byte", () => {
    const input: LedgerEntryInput = {
      kind: "vm.compute.start",
      vmId: "vm1",
      reason: "boot",
      hypervisor: "cloud-hypervisor",
      shape: { cpu: 4, memBytes: 1073741824, storageBytes: 10737418240 },
      emittedAtNs: EXAMPLE_NS,
    };
    assert.equal(encodeLedgerLine(7, input), EXAMPLE);
  });
  it("parses the example and re-encodes it to the same bytes", () => {
    const e = parseLedgerLine(EXAMPLE);
    assert.deepEqual(e, {
      seq: 7,
      kind: "vm.compute.start",
      vmId: "vm1",
      reason: "boot",
      hypervisor: "cloud-hypervisor",
      shape: { cpu: 4, memBytes: 1073741824, storageBytes: 10737418240 },
      emittedAtNs: EXAMPLE_NS,
      line: EXAMPLE,
    });
    assert.equal(encodeLedgerLine(e.seq, e), EXAMPLE);
  });
});

describe("ledger entry: encode/parse round trip", () => {
  it("omits empty strings and zero shape values; shape is always present", () => {
    const line = encodeLedgerLine(1, {
      kind: "snap.storage.start",
      vmId: "",
      snapshotId: "snap-1",
      sourceSnapshotId: "",
      hypervisor: "",
      shape: { cpu: 0, memBytes: 0, storageBytes: 0 },
      emittedAtNs: 0n,
    });
    assert.equal(line, '{"seq":1,"kind":"snap.storage.start","snapshot_id":"snap-1","shape":{},"emitted_at":"1970-01-01T00:00:00Z"}');
    assert.deepEqual(parseLedgerLine(line), { seq: 1, kind: "snap.storage.start", snapshotId: "snap-1", shape: {}, emittedAtNs: 0n, line });
  });
  it("writes every field in the documented order", () => {
    const line = encodeLedgerLine(42, {
      emittedAtNs: 1n,
      shape: { storageBytes: 3, memBytes: 2, cpu: 1 },
      hypervisor: "qemu",
      reason: "restore",
      sourceSnapshotId: "s0",
      snapshotId: "s1",
      vmId: "v",
      kind: "vm.storage.stop",
    });
    assert.equal(
      line,
      '{"seq":42,"kind":"vm.storage.stop","vm_id":"v","snapshot_id":"s1","source_snapshot_id":"s0","reason":"restore","hypervisor":"qemu","shape":{"cpu":1,"mem_bytes":2,"storage_bytes":3},"emitted_at":"1970-01-01T00:00:00.000000001Z"}',
    );
    assert.equal(encodeLedgerLine(42, parseLedgerLine(line)), line);
  });
  it("keeps only the non-zero shape values, in order", () => {
    const base = { kind: "vm.storage.start", vmId: "v", emittedAtNs: 0n } as const;
    assert.match(encodeLedgerLine(1, { ...base, shape: { memBytes: 5 } }), /"shape":\{"mem_bytes":5\}/);
    assert.match(encodeLedgerLine(1, { ...base, shape: { cpu: 2, storageBytes: 9 } }), /"shape":\{"cpu":2,"storage_bytes":9\}/);
    assert.match(encodeLedgerLine(1, { ...base, shape: { storageBytes: Number.MAX_SAFE_INTEGER } }), /"storage_bytes":9007199254740991\}/);
  });
  it("escapes strings as JSON and reads them back", () => {
    const vmId = 'a"b\\c\n\u0001é😀\u2028';
    const line = encodeLedgerLine(3, { kind: "vm.compute.stop", vmId, reason: "stop-crash", shape: {}, emittedAtNs: 5n });
    assert.equal(parseLedgerLine(line).vmId, vmId);
  });
  it("a resize line (metering.md's extension, like standby) is written and read back", () => {
    const line = '{"seq":12,"kind":"vm.compute.stop","vm_id":"vm1","reason":"resize","hypervisor":"qemu","shape":{"cpu":2},"emitted_at":"2026-05-20T01:02:03Z"}';
    assert.equal(encodeLedgerLine(12, parseLedgerLine(line)), line);
    assert.equal(parseLedgerLine(line).reason, "resize");
  });
  it("every kind and reason round-trips", () => {
    for (const kind of METERING_KINDS) {
      for (const reason of METERING_REASONS) {
        const e: LedgerEntryInput = { kind, vmId: "vm", snapshotId: "snap", reason, shape: { cpu: 1 }, emittedAtNs: 1_700_000_000_123_000_000n };
        const line = encodeLedgerLine(9, e);
        assert.deepEqual(parseLedgerLine(line), { ...e, seq: 9, line });
      }
    }
  });
});

describe("ledger entry: emitted_at", () => {
  it("trims trailing zeros of the nanoseconds, and the fraction when 0", () => {
    const s = 1_779_238_923n * 1_000_000_000n; // 2026-05-20T01:02:03Z
    const cases: [bigint, string][] = [
      [s, "2026-05-20T01:02:03Z"],
      [s + 500_000_000n, "2026-05-20T01:02:03.5Z"],
      [s + 120_000_000n, "2026-05-20T01:02:03.12Z"],
      [s + 1n, "2026-05-20T01:02:03.000000001Z"],
      [s + 10n, "2026-05-20T01:02:03.00000001Z"],
      [s + 123_456_789n, "2026-05-20T01:02:03.123456789Z"],
      [s + 100_000n, "2026-05-20T01:02:03.0001Z"],
      [-1n, "1969-12-31T23:59:59.999999999Z"],
      [951_782_400n * 1_000_000_000n, "2000-02-29T00:00:00Z"],
      [253_402_300_799_999_999_999n, "9999-12-31T23:59:59.999999999Z"],
      [-62_167_219_200n * 1_000_000_000n, "0000-01-01T00:00:00Z"],
    ];
    for (const [ns, text] of cases) {
      assert.equal(formatEmittedAt(ns), text, `format ${ns}`);
      assert.equal(parseEmittedAt(text), ns, `parse ${text}`);
    }
  });
  it("agrees with Date for random instants, keeping every nanosecond", () => {
    const rnd = prng(1);
    for (let i = 0; i < 2000; i++) {
      const ms = Math.floor(rnd() * 8.0e12) - 1.0e12;
      const subMs = BigInt(Math.floor(rnd() * 1_000_000));
      const ns = BigInt(ms) * 1_000_000n + subMs;
      const text = formatEmittedAt(ns);
      assert.equal(text.slice(0, 19), new Date(ms).toISOString().slice(0, 19), text);
      assert.equal(parseEmittedAt(text), ns);
    }
  });
  it("parseEmittedAt accepts untrimmed fractions; the line parser does not", () => {
    assert.equal(parseEmittedAt("1970-01-01T00:00:00.500Z"), 500_000_000n);
    const line = EXAMPLE.replace("03Z", "03.500Z");
    assert.throws(() => parseLedgerLine(line), formatError(/canonical/));
  });
  it("rejects what is not RFC 3339 UTC or not a real instant", () => {
    for (const text of [
      "2026-05-20T01:02:03",
      "2026-05-20T01:02:03+00:00",
      "2026-05-20t01:02:03z",
      "2026-05-20 01:02:03Z",
      "2026-05-20T01:02:03.Z",
      "2026-05-20T01:02:03.1234567890Z",
      "2026-02-29T00:00:00Z",
      "2026-13-01T00:00:00Z",
      "2026-00-01T00:00:00Z",
      "2026-04-31T00:00:00Z",
      "2026-05-00T00:00:00Z",
      "2026-05-20T24:00:00Z",
      "2026-05-20T01:60:00Z",
      "2016-12-31T23:59:60Z",
      "+2026-05-20T01:02:03Z",
      "",
    ]) {
      assert.throws(() => parseEmittedAt(text), formatError(/emitted_at/), text);
    }
  });
  it("refuses to format instants outside four-digit years", () => {
    assert.throws(() => formatEmittedAt(253_402_300_800n * 1_000_000_000n), formatError(/outside years/));
    assert.throws(() => formatEmittedAt(-62_167_219_201n * 1_000_000_000n), formatError(/outside years/));
    assert.throws(() => formatEmittedAt(1n << 200n), formatError(/outside years/));
  });
});

describe("ledger entry: strict parsing", () => {
  const cases: [string, string, RegExp][] = [
    ["not JSON", "{", /not JSON/],
    ["an array", "[1]", /not a JSON object/],
    ["null", "null", /not a JSON object/],
    ["keys out of order", EXAMPLE.replace('"seq":7,"kind":"vm.compute.start"', '"kind":"vm.compute.start","seq":7'), /out of order/],
    ["unknown key", EXAMPLE.replace('"reason":"boot"', '"reason":"boot","tenant":"t"'), /unknown key "tenant"/],
    ["__proto__ key", EXAMPLE.replace('"reason":"boot"', '"__proto__":{}'), /unknown key "__proto__"/],
    ["missing shape", EXAMPLE.replace(/,"shape":\{[^}]*\}/, ""), /missing shape/],
    ["missing emitted_at", EXAMPLE.replace(/,"emitted_at":"[^"]*"/, ""), /missing emitted_at/],
    ["missing seq", EXAMPLE.replace('"seq":7,', ""), /missing seq/],
    ["empty string present", EXAMPLE.replace('"hypervisor":"cloud-hypervisor"', '"hypervisor":""'), /hypervisor is empty/],
    ["zero shape value present", EXAMPLE.replace('"cpu":4', '"cpu":0'), /shape.cpu is 0/],
    ["negative shape value", EXAMPLE.replace('"cpu":4', '"cpu":-4'), /shape.cpu must be an integer >= 0/],
    ["fractional shape value", EXAMPLE.replace('"cpu":4', '"cpu":4.5'), /shape.cpu must be an integer/],
    ["4.0 for 4", EXAMPLE.replace('"cpu":4', '"cpu":4.0'), /canonical/],
    ["shape value beyond 2^53", EXAMPLE.replace('"storage_bytes":10737418240', '"storage_bytes":9007199254740993'), /storage_bytes must be an integer/],
    ["shape keys out of order", EXAMPLE.replace('"cpu":4,"mem_bytes":1073741824', '"mem_bytes":1073741824,"cpu":4'), /out of order in shape/],
    ["unknown shape key", EXAMPLE.replace('"cpu":4', '"gpu":4'), /unknown key "gpu" in shape/],
    ["shape as a string", EXAMPLE.replace(/"shape":\{[^}]*\}/, '"shape":"4"'), /shape must be an object/],
    ["unknown kind", EXAMPLE.replace("vm.compute.start", "vm.network.start"), /unknown kind/],
    ["unknown reason", EXAMPLE.replace('"boot"', '"reboot"'), /unknown reason/],
    ["seq 0", EXAMPLE.replace('"seq":7', '"seq":0'), /seq must be an integer >= 1/],
    ["seq as a string", EXAMPLE.replace('"seq":7', '"seq":"7"'), /seq must be an integer >= 1/],
    ["seq 7.5", EXAMPLE.replace('"seq":7', '"seq":7.5'), /seq must be an integer >= 1/],
    ["seq 7e0", EXAMPLE.replace('"seq":7', '"seq":7e0'), /canonical/],
    ["vm_id as a number", EXAMPLE.replace('"vm1"', "1"), /vm_id must be a string/],
    ["vm entry without vm_id", EXAMPLE.replace('"vm_id":"vm1",', ""), /needs vm_id/],
    ["emitted_at as a number", EXAMPLE.replace('"2026-05-20T01:02:03Z"', "1"), /emitted_at must be a string/],
    ["emitted_at with an offset", EXAMPLE.replace("03Z", "03+00:00"), /not RFC 3339/],
    ["whitespace", EXAMPLE.replace('"seq":7,', '"seq": 7,'), /canonical/],
    ["trailing whitespace", `${EXAMPLE} `, /canonical/],
    ["a trailing newline", `${EXAMPLE}\n`, /canonical/],
    ["duplicate key", EXAMPLE.replace('"reason":"boot"', '"reason":"boot","reason":"boot"'), /canonical/],
    ["escaped letter", EXAMPLE.replace('"vm1"', '"\\u0076m1"'), /canonical/],
    ["a BOM", `\uFEFF${EXAMPLE}`, /not JSON/],
  ];
  for (const [what, line, reason] of cases) {
    it(`rejects ${what}`, () => assert.throws(() => parseLedgerLine(line), formatError(reason)));
  }
  it("encode refuses entries it could not read back", () => {
    const ok: LedgerEntryInput = { kind: "vm.compute.start", vmId: "v", shape: {}, emittedAtNs: 0n };
    const bad: [string, () => string, RegExp][] = [
      ["seq 0", () => encodeLedgerLine(0, ok), /seq must be/],
      ["seq 1.5", () => encodeLedgerLine(1.5, ok), /seq must be/],
      ["unknown kind", () => encodeLedgerLine(1, { ...ok, kind: "x" as LedgerEntryInput["kind"] }), /unknown kind/],
      ["unknown reason", () => encodeLedgerLine(1, { ...ok, reason: "x" as LedgerEntryInput["reason"] }), /unknown reason/],
      ["no vm id", () => encodeLedgerLine(1, { ...ok, vmId: "" }), /needs vm_id/],
      ["no snapshot id", () => encodeLedgerLine(1, { ...ok, kind: "snap.storage.stop" }), /needs snapshot_id/],
      ["negative cpu", () => encodeLedgerLine(1, { ...ok, shape: { cpu: -1 } }), /shape.cpu/],
      ["fractional memory", () => encodeLedgerLine(1, { ...ok, shape: { memBytes: 0.5 } }), /shape.mem_bytes/],
      ["unsafe storage", () => encodeLedgerLine(1, { ...ok, shape: { storageBytes: 2 ** 60 } }), /shape.storage_bytes/],
      ["number time", () => encodeLedgerLine(1, { ...ok, emittedAtNs: 5 as unknown as bigint }), /bigint/],
    ];
    for (const [what, fn, reason] of bad) assert.throws(fn, formatError(reason), what);
  });
});

describe("ledger entry: fuzz", () => {
  const ALPHABET = '{}[]":,.-+0123456789eEtrufalsn\\ \tZT_abcdefghijklmnopqrstuvwxyz\u0000\u00e9\ud83d\ude00';
  const VALID = [
    EXAMPLE,
    encodeLedgerLine(1, { kind: "snap.storage.stop", snapshotId: "s", reason: "snap-rm", shape: { storageBytes: 7 }, emittedAtNs: 1_779_238_923_000_000_001n }),
    encodeLedgerLine(123456, { kind: "vm.storage.start", vmId: "vm-2", sourceSnapshotId: "s", reason: "clone", shape: {}, emittedAtNs: 0n }),
  ];
  const mutate = (rnd: () => number, line: string): string => {
    const chars = [...line];
    const n = 1 + Math.floor(rnd() * 4);
    for (let i = 0; i < n; i++) {
      const at = Math.floor(rnd() * (chars.length + 1));
      const c = ALPHABET[Math.floor(rnd() * ALPHABET.length)]!;
      switch (Math.floor(rnd() * 5)) {
        case 0:
          chars.splice(at, 1);
          break;
        case 1:
          chars.splice(at, 0, c);
          break;
        case 2:
          chars[at] = c;
          break;
        case 3:
          chars.length = at;
          break;
        default: {
          // Swap two segments: reorders keys and values.
          const b = Math.floor(rnd() * chars.length);
          [chars[at], chars[b]] = [chars[b]!, chars[at]!];
        }
      }
    }
    return chars.join("");
  };
  it("parseLedgerLine never throws anything but LedgerFormatError, and accepts only canonical lines", () => {
    const rnd = prng(20260520);
    let accepted = 0;
    for (let i = 0; i < 30_000; i++) {
      const line =
        i % 10 === 0
          ? Array.from({ length: Math.floor(rnd() * 60) }, () => ALPHABET[Math.floor(rnd() * ALPHABET.length)]).join("")
          : mutate(rnd, VALID[i % VALID.length]!);
      let entry;
      try {
        entry = parseLedgerLine(line);
      } catch (e) {
        assert.ok(e instanceof LedgerFormatError, `${JSON.stringify(line)} threw ${String(e)}`);
        continue;
      }
      accepted++;
      assert.equal(encodeLedgerLine(entry.seq, entry), line, "an accepted line re-encodes to itself");
    }
    // Mutations that keep a valid line exist (a digit for a digit): the parser is not just rejecting all.
    assert.ok(accepted > 0);
  });
});
