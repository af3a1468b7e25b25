import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { statLine } from "./proc-fixture-tree.js";
import { parseCounter, parseProcStat, parseProcStatm, ProcParseError } from "../../../agent/kernel/proc-stat-parser.js";

describe("parseProcStat", () => {
  it("check 1: splits at the last ')' so comm may hold spaces and parentheses", () => {
    const s = parseProcStat(statLine("we ird) x", 150, 50));
    assert.equal(s.utimeTicks, 150n);
    assert.equal(s.stimeTicks, 50n);
    assert.equal(s.startTimeTicks, 4242n);
    assert.equal(s.state, "R");
  });
  it("reads fields from the real kernel's own line", async () => {
    const { readFileSync } = await import("node:fs");
    const s = parseProcStat(readFileSync("/proc/self/stat", "latin1"));
    assert.ok(s.utimeTicks >= 0n && s.startTimeTicks > 0n);
  });
  it("check 2: 12 tokens after the last ')' is an error", () => {
    assert.throws(() => parseProcStat("42 (x) R 1 2 3 4 5 6 7 8 9 10 11"), (e: unknown) => e instanceof ProcParseError && /12 fields after comm/.test(e.message));
  });
  it("check 2: no ')' is an error", () => {
    assert.throws(() => parseProcStat("42 (x R 1 2 3"), /no '\)'/);
  });
  it("check 2: a non-numeric utime is an error naming the field", () => {
    const line = statLine("x", 0, 50).replace(" 0 50 ", " abc 50 ");
    assert.throws(() => parseProcStat(line), /field 14 \(utime\)/);
  });
  it("refuses a negative value rather than reading it as a number", () => {
    assert.throws(() => parseProcStat(statLine("x", -5, 50)), /utime/);
  });
  it("keeps 64-bit tick counts exact", () => {
    const big = statLine("x", 0, 0).replace(/^(42 \(x\) R(?: \S+){10}) 0 0/, "$1 18446744073709551615 1");
    assert.equal(parseProcStat(big).utimeTicks, 18446744073709551615n);
  });
});

describe("parseProcStatm", () => {
  it("check 3: size and resident pages", () => {
    const m = parseProcStatm("1000 250 100 10 0 300 0\n");
    assert.equal(m.sizePages, 1000n);
    assert.equal(m.residentPages, 250n);
  });
  it("fewer than two tokens is an error", () => {
    assert.throws(() => parseProcStatm("1000\n"), /1 tokens, need at least 2/);
    assert.throws(() => parseProcStatm(""), /0 tokens/);
  });
  it("non-numeric tokens are an error", () => {
    assert.throws(() => parseProcStatm("x 250"), /not a number/);
  });
});

describe("parseCounter", () => {
  it("parses a sysfs counter with its newline", () => {
    assert.equal(parseCounter("1234\n", "rx_bytes"), 1234n);
  });
  it("refuses anything else, naming the file", () => {
    assert.throws(() => parseCounter("", "tx_bytes"), /tx_bytes: not a counter/);
    assert.throws(() => parseCounter("12 34", "tx_bytes"), /tx_bytes/);
  });
});
