import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { fixtureTree, statLine } from "../agent/kernel/proc-fixture-tree.js";
import { parseCounter, parseProcStat, parseProcStatm, ProcParseError, readProcStat } from "../../lib/proc-stat-parser.js";

describe("parseProcStat", () => {
  it("check 1: splits at the last ')' so comm may hold spaces and parentheses", () => {
    const s = parseProcStat(statLine("we ird) x", 150, 50));
    assert.equal(s.utimeTicks, 150n);
    assert.equal(s.stimeTicks, 50n);
    assert.equal(s.startTimeTicks, 4242n);
    assert.equal(s.state, "R");
    assert.equal(s.processGroup, 42);
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

describe("readProcStat", () => {
  it("reads a live process; undefined for a pid that does not exist; a bad line is an error", () => {
    const tree = fixtureTree();
    try {
      tree.setProcess(7, statLine("vm", 1, 2, 999, 7));
      assert.equal(readProcStat(7, tree.proc)?.startTimeTicks, 999n);
      assert.equal(readProcStat(8, tree.proc), undefined);
      tree.setProcess(9, "9 (broken");
      assert.throws(() => readProcStat(9, tree.proc), ProcParseError);
    } finally {
      tree.remove();
    }
  });
  it("gives the kernel's process group: a detached child leads its own, a plain one is in ours", async () => {
    const own = readProcStat(process.pid);
    assert.ok(own && own.processGroup > 0);
    const leader = spawn("sleep", ["10"], { detached: true, stdio: "ignore" });
    const member = spawn("sleep", ["10"], { stdio: "ignore" });
    try {
      await Promise.all([once(leader, "spawn"), once(member, "spawn")]);
      assert.equal(readProcStat(leader.pid!)?.processGroup, leader.pid);
      assert.equal(readProcStat(member.pid!)?.processGroup, own.processGroup);
    } finally {
      leader.kill();
      member.kill();
    }
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

describe("parser fuzz", () => {
  it("random and mutated lines either parse or throw ProcParseError, never anything else", async () => {
    const { prng } = await import("../helpers/random-message.js");
    const seed = Date.now() % 1e9;
    const rnd = prng(seed);
    const base = statLine("x y) z", 150, 50);
    const alphabet = "0123456789 ()-\n\tabcR";
    for (let i = 0; i < 20_000; i++) {
      let line: string;
      if (i % 2 === 0) {
        line = Array.from({ length: Math.floor(rnd() * 120) }, () => alphabet[Math.floor(rnd() * alphabet.length)]).join("");
      } else {
        const chars = [...base];
        for (let k = 0; k < 3; k++) chars[Math.floor(rnd() * chars.length)] = alphabet[Math.floor(rnd() * alphabet.length)]!;
        line = chars.join("");
      }
      for (const parse of [parseProcStat, parseProcStatm, (t: string) => parseCounter(t, "rx_bytes")]) {
        try {
          const out = parse(line);
          // Whatever parses must hold real non-negative numbers, never NaN.
          for (const v of Object.values(out as object)) if (typeof v === "bigint") assert.ok(v >= 0n);
        } catch (e) {
          assert.ok(e instanceof ProcParseError, `seed ${seed}: ${JSON.stringify(line)} threw ${String(e)}`);
        }
      }
    }
  });
});
