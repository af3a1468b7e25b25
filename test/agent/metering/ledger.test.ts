import { afterEach, beforeEach, describe, it } from "vitest";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { appendFileSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { LedgerCorruptError, LedgerOverflowError, MeteringLedger } from "../../../agent/metering/ledger.js";
import { LedgerFormatError, encodeLedgerLine, parseLedgerLine, type LedgerEntry, type LedgerEntryInput } from "../../../agent/metering/ledger-entry.js";
import { segmentFileName } from "../../../agent/metering/ledger-segment.js";
import { prng } from "../../helpers/random-message.js";
import { tempDir } from "../../helpers/temp-dir.js";
import type { FillResult } from "../../helpers/ledger-writer-process.js";
import { builtHelper } from "../../helpers/paths.js";

const WRITER = builtHelper("ledger-writer-process");

let dir: ReturnType<typeof tempDir>;
beforeEach(() => (dir = tempDir("ledger")));
afterEach(() => dir.remove());

const T0 = 1_779_238_923_000_000_000n;
const entry = (vmId: string, extra: Partial<LedgerEntryInput> = {}): LedgerEntryInput => ({
  kind: "vm.compute.start",
  vmId,
  reason: "boot",
  hypervisor: "cloud-hypervisor",
  shape: { cpu: 2, memBytes: 1 << 30, storageBytes: 10 * 2 ** 30 },
  emittedAtNs: T0,
  ...extra,
});

const segmentFiles = (path: string) => readdirSync(path).filter((n) => n.endsWith(".jsonl")).sort();
const allLines = (path: string) =>
  segmentFiles(path)
    .map((n) => readFileSync(join(path, n), "utf8"))
    .join("")
    .split("\n")
    .filter((l) => l !== "");

/** Appends n single-entry calls one after the other (one batch each). */
async function appendSequentially(ledger: MeteringLedger, n: number, prefix = "vm"): Promise<LedgerEntry[]> {
  const out: LedgerEntry[] = [];
  for (let i = 0; i < n; i++) out.push(...(await ledger.append([entry(`${prefix}-${i}`)])));
  return out;
}

/** Every retained entry is there, in order, with no gap: seq firstRetained..lastSeq. */
function assertGapless(ledger: MeteringLedger): LedgerEntry[] {
  const all = ledger.read(0, Number.MAX_SAFE_INTEGER);
  assert.equal(all.length, ledger.lastSeq - ledger.firstRetainedSeq + 1);
  all.forEach((e, i) => assert.equal(e.seq, ledger.firstRetainedSeq + i));
  return all;
}

describe("MeteringLedger: open and identity", () => {
  it("creates the directory and a random 16-hex ledger_id, kept on reopen", async () => {
    const path = join(dir.path, "state", "metering");
    const a = MeteringLedger.open(path);
    assert.match(a.ledgerId, /^[0-9a-f]{16}$/);
    assert.equal(a.lastSeq, 0);
    assert.equal(a.firstRetainedSeq, 1);
    assert.equal(a.acknowledgedSeq, 0);
    assert.deepEqual(a.read(1, 10), []);
    await appendSequentially(a, 3);
    await a.close();
    const b = MeteringLedger.open(path);
    assert.equal(b.ledgerId, a.ledgerId);
    assert.equal(b.lastSeq, 3);
    assert.equal(b.tornLinesRepaired, 0);
    await b.close();
    const other = MeteringLedger.open(join(dir.path, "other"));
    assert.notEqual(other.ledgerId, a.ledgerId);
    await other.close();
  });
  it("refuses segments without their ledger.json (the id would be new, the entries old)", async () => {
    const l = MeteringLedger.open(dir.path);
    await appendSequentially(l, 2);
    await l.close();
    rmSync(join(dir.path, "ledger.json"));
    assert.throws(() => MeteringLedger.open(dir.path), (e: unknown) => e instanceof LedgerCorruptError && /ledger\.json/.test(e.file) && /id is lost/.test(e.message));
  });
});

describe("MeteringLedger: append (metering.md behaviour check 2)", () => {
  it("200 concurrent appends → 200 lines, seq 1..200 with no gap, each parses; far fewer fdatasyncs", async () => {
    const l = MeteringLedger.open(dir.path);
    const results = await Promise.all(Array.from({ length: 200 }, (_, i) => l.append([entry(`vm-${i}`)])));
    assert.deepEqual(
      results.map((r) => r[0]!.seq),
      Array.from({ length: 200 }, (_, i) => i + 1),
      "seqs in call order",
    );
    assert.ok(l.syncs < 200, `${l.syncs} fdatasyncs for 200 appends`);
    assert.equal(l.syncs, 1, "appends made in one tick share one write");
    await l.close();
    const lines = allLines(dir.path);
    assert.equal(lines.length, 200);
    lines.forEach((line, i) => {
      const e = parseLedgerLine(line);
      assert.equal(e.seq, i + 1);
      assert.equal(e.vmId, `vm-${i}`);
      assert.equal(line, results[i]![0]!.line);
    });
  });
  it("appends made while a write is in flight share the next write (group commit)", async () => {
    const l = MeteringLedger.open(dir.path);
    const first = l.append([entry("first")]);
    // Let the first write start, then pile up callers behind it.
    await new Promise((r) => setImmediate(r));
    const rest = Array.from({ length: 100 }, (_, i) => l.append([entry(`later-${i}`)]));
    await first;
    await Promise.all(rest);
    assert.equal(l.syncs, 2);
    assert.equal(l.lastSeq, 101);
    await l.close();
  });
  it("a call's entries stay contiguous and in order; the result is what a reader reads back", async () => {
    const l = MeteringLedger.open(dir.path);
    const calls = await Promise.all(
      Array.from({ length: 50 }, (_, c) => l.append(Array.from({ length: 1 + (c % 4) }, (_, i) => entry(`c${c}-${i}`, { emittedAtNs: T0 + BigInt(c) })))),
    );
    let next = 1;
    for (const [c, got] of calls.entries()) {
      assert.deepEqual(
        got.map((e) => [e.seq, e.vmId]),
        got.map((_, i) => [next + i, `c${c}-${i}`]),
      );
      next += got.length;
    }
    const written = calls.flat();
    assert.deepEqual(l.read(1, 1000), written);
    await l.close();
    const reopened = MeteringLedger.open(dir.path);
    assert.deepEqual(reopened.read(1, 1000), written, "the same from disk");
    await reopened.close();
  });
  it("normalizes what it returns like a parsed line: empties and zeros left out", async () => {
    const l = MeteringLedger.open(dir.path);
    const [e] = await l.append([{ kind: "vm.storage.start", vmId: "v", reason: undefined, hypervisor: "", shape: { cpu: 0, memBytes: 5 }, emittedAtNs: T0 }]);
    assert.deepEqual(e, { seq: 1, kind: "vm.storage.start", vmId: "v", shape: { memBytes: 5 }, emittedAtNs: T0, line: e!.line });
    assert.deepEqual(parseLedgerLine(e!.line), e);
    assert.ok(Object.isFrozen(e), "shared entries are frozen");
    await l.close();
  });
  it("an invalid entry rejects its call only, writes nothing, and uses no seq", async () => {
    const l = MeteringLedger.open(dir.path);
    const bad = l.append([entry("ok-but-with-bad-sibling"), entry("", { kind: "vm.compute.stop" })]);
    const good = l.append([entry("good")]);
    await assert.rejects(bad, (e: unknown) => e instanceof LedgerFormatError && /needs vm_id/.test(e.message));
    assert.equal((await good)[0]!.seq, 1);
    assert.deepEqual(l.read(1, 10).map((e) => e.vmId), ["good"]);
    await l.close();
  });
  it("copies entries at append: the caller may reuse its objects", async () => {
    const l = MeteringLedger.open(dir.path);
    const input = entry("before");
    const p = l.append([input]);
    input.vmId = "after";
    input.shape.cpu = 99;
    assert.equal((await p)[0]!.vmId, "before");
    assert.match(l.read(1, 1)[0]!.line, /"vm_id":"before".*"cpu":2,/);
    await l.close();
  });
  it("the queue is bounded: beyond maxPendingEntries append rejects with LedgerOverflowError", async () => {
    const l = MeteringLedger.open(dir.path, { maxPendingEntries: 10 });
    const accepted = l.append(Array.from({ length: 10 }, (_, i) => entry(`a${i}`)));
    await assert.rejects(l.append([entry("one-too-many")]), LedgerOverflowError);
    assert.equal((await accepted).length, 10);
    assert.equal((await l.append([entry("room-again")]))[0]!.seq, 11);
    await l.close();
  });
  it("subscribers get each durable batch once, in seq order; unsubscribe stops them", async () => {
    const l = MeteringLedger.open(dir.path);
    const seen: number[][] = [];
    const stop = l.subscribe((batch) => {
      // Durable means readable: a subscriber can read what it is told about.
      assert.equal(l.lastSeq, batch.at(-1)!.seq);
      seen.push(batch.map((e) => e.seq));
    });
    await Promise.all([l.append([entry("a")]), l.append([entry("b"), entry("c")])]);
    await l.append([entry("d")]);
    stop();
    await l.append([entry("e")]);
    assert.deepEqual(seen, [[1, 2, 3], [4]]);
    await l.close();
  });
  it("close waits for appends in flight; appends after close reject", async () => {
    const l = MeteringLedger.open(dir.path);
    const pending = Array.from({ length: 20 }, (_, i) => l.append([entry(`v${i}`)]));
    await l.close();
    assert.equal((await Promise.all(pending)).length, 20);
    await assert.rejects(l.append([entry("late")]), /closed/);
    const reopened = MeteringLedger.open(dir.path);
    assert.equal(reopened.lastSeq, 20);
    await reopened.close();
  });
  it("read clamps, limits and validates its arguments", async () => {
    const l = MeteringLedger.open(dir.path);
    await appendSequentially(l, 5);
    assert.deepEqual(l.read(0, 2).map((e) => e.seq), [1, 2]);
    assert.deepEqual(l.read(-7, 1).map((e) => e.seq), [1]);
    assert.deepEqual(l.read(4, 100).map((e) => e.seq), [4, 5]);
    assert.deepEqual(l.read(6, 100), []);
    assert.deepEqual(l.read(1, 0), []);
    assert.throws(() => l.read(1.5, 1), RangeError);
    assert.throws(() => l.read(1, -1), RangeError);
    await l.close();
  });
});

describe("MeteringLedger: torn lines and corruption (metering.md behaviour check 3)", () => {
  async function ledgerWith(n: number, options = {}): Promise<string> {
    const l = MeteringLedger.open(dir.path, options);
    await appendSequentially(l, n);
    await l.close();
    return join(dir.path, segmentFiles(dir.path).at(-1)!);
  }

  it("truncates a torn last line on reopen, counts it, and seq continues", async () => {
    const file = await ledgerWith(5);
    const good = readFileSync(file);
    appendFileSync(file, encodeLedgerLine(6, entry("torn")).slice(0, 40));
    const l = MeteringLedger.open(dir.path);
    assert.equal(l.tornLinesRepaired, 1);
    assert.equal(l.lastSeq, 5);
    assert.deepEqual(readFileSync(file), good, "truncated back to the last whole line");
    assert.equal((await l.append([entry("next")]))[0]!.seq, 6);
    assertGapless(l);
    await l.close();
    assert.equal(MeteringLedger.open(dir.path).tornLinesRepaired, 0, "repaired for good");
  });
  it("a complete line missing only its newline is torn too (its write never finished)", async () => {
    const file = await ledgerWith(2);
    appendFileSync(file, encodeLedgerLine(3, entry("no-newline")));
    const l = MeteringLedger.open(dir.path);
    assert.equal(l.tornLinesRepaired, 1);
    assert.equal(l.lastSeq, 2);
    await l.close();
  });
  it("a torn line that was the only content of the last segment leaves it empty and usable", async () => {
    const l0 = MeteringLedger.open(dir.path, { segmentBytes: 1 });
    await appendSequentially(l0, 3);
    await l0.close();
    writeFileSync(join(dir.path, segmentFileName(4)), '{"seq":4,"ki');
    const l = MeteringLedger.open(dir.path, { segmentBytes: 1 });
    assert.equal(l.tornLinesRepaired, 1);
    assert.equal(l.lastSeq, 3);
    assert.equal((await l.append([entry("x")]))[0]!.seq, 4);
    assertGapless(l);
    await l.close();
  });

  /** Replaces line `index` (0-based) of the single segment and returns that line's byte offset. */
  function rewriteLine(file: string, index: number, replacement: string | Buffer): number {
    const lines = readFileSync(file).toString("latin1").split("\n");
    const offset = lines.slice(0, index).reduce((n, l) => n + Buffer.byteLength(l, "latin1") + 1, 0);
    lines[index] = Buffer.isBuffer(replacement) ? replacement.toString("latin1") : Buffer.from(replacement).toString("latin1");
    writeFileSync(file, Buffer.from(lines.join("\n"), "latin1"));
    return offset;
  }
  const corruptAt = (file: string, offset: number, reason: RegExp) => (e: unknown) =>
    e instanceof LedgerCorruptError && e.file === file && e.offset === offset && reason.test(e.message) && e.message.includes(file);

  it("an unparseable middle line stops open with the file and byte offset, and is left untouched", async () => {
    const file = await ledgerWith(5);
    const offset = rewriteLine(file, 2, '{"seq":3,"kind":"vm.compute.start"');
    const before = readFileSync(file);
    assert.throws(() => MeteringLedger.open(dir.path), corruptAt(file, offset, /unparseable line/));
    assert.deepEqual(readFileSync(file), before, "never truncated or rewritten");
  });
  it("an unparseable last line that has its newline is corruption, not a torn line", async () => {
    const file = await ledgerWith(3);
    const offset = rewriteLine(file, 2, "garbage");
    assert.throws(() => MeteringLedger.open(dir.path), corruptAt(file, offset, /unparseable line/));
  });
  it("a seq gap, a repeated seq and invalid UTF-8 are corruption", async () => {
    const file = await ledgerWith(5);
    const good = readFileSync(file);
    let offset = rewriteLine(file, 3, encodeLedgerLine(5, entry("skips-4")));
    assert.throws(() => MeteringLedger.open(dir.path), corruptAt(file, offset, /seq 5 where 4 was expected/));
    writeFileSync(file, good);
    offset = rewriteLine(file, 1, encodeLedgerLine(1, entry("repeat")));
    assert.throws(() => MeteringLedger.open(dir.path), corruptAt(file, offset, /seq 1 where 2 was expected/));
    writeFileSync(file, good);
    const invalid = Buffer.from(encodeLedgerLine(5, entry("vm-\u00e9")));
    invalid[invalid.indexOf(0xc3) + 1] = 0x41; // é's continuation byte replaced: not UTF-8
    offset = rewriteLine(file, 4, invalid);
    assert.throws(() => MeteringLedger.open(dir.path), corruptAt(file, offset, /UTF-8/));
  });
  it("a first line whose seq is not the segment's first seq is corruption", async () => {
    const file = await ledgerWith(2);
    rmSync(file);
    writeFileSync(join(dir.path, segmentFileName(1)), `${encodeLedgerLine(2, entry("x"))}\n`);
    assert.throws(() => MeteringLedger.open(dir.path), corruptAt(join(dir.path, segmentFileName(1)), 0, /seq 2 where 1 was expected/));
  });
  it("a missing segment, a torn line in an older segment, and lost unacknowledged entries are corruption", async () => {
    const l = MeteringLedger.open(dir.path, { segmentBytes: 1 });
    await appendSequentially(l, 4);
    await l.close();
    const files = segmentFiles(dir.path).map((n) => join(dir.path, n));
    assert.equal(files.length, 4, "one entry per segment with segmentBytes 1");
    const second = readFileSync(files[1]!);
    rmSync(files[1]!);
    assert.throws(() => MeteringLedger.open(dir.path), corruptAt(files[2]!, 0, /starts at seq 3 but the previous segment ends at 1/));
    writeFileSync(files[1]!, second.subarray(0, second.length - 1));
    assert.throws(() => MeteringLedger.open(dir.path), corruptAt(files[1]!, 0, /not the last/));
    writeFileSync(files[1]!, second);
    rmSync(files[0]!);
    assert.throws(() => MeteringLedger.open(dir.path), corruptAt(files[1]!, 0, /unacknowledged entries are missing/));
  });
  it("a real crash: SIGKILL of a writer at random moments; every acknowledged entry survives, seq continues", { timeout: 120_000 }, async () => {
    // Random kill moments; replay a failure with LEDGER_CRASH_SEED=<seed from the message>.
    const seed = Number(process.env.LEDGER_CRASH_SEED ?? Date.now() % 1_000_000);
    const rnd = prng(seed);
    const acked = new Map<number, string>();
    let torn = 0;
    let lastSeqBefore = 0;
    for (let round = 0; round < 6; round++) {
      // Odd rounds with small segments, so kills also land around rollovers.
      const segmentArgs = round % 2 === 1 ? [String(32 * 1024)] : [];
      const child = spawn(process.execPath, [WRITER, "loop", dir.path, ...segmentArgs], { stdio: ["ignore", "pipe", "pipe"] });
      let out = "";
      let err = "";
      child.stdout.on("data", (c: Buffer) => (out += c.toString()));
      child.stderr.on("data", (c: Buffer) => (err += c.toString()));
      const closed = new Promise<void>((resolve) => child.once("close", () => resolve()));
      // Wait until it is writing, then kill it after a random delay.
      while (!out.includes("\nack ") && child.exitCode === null) await new Promise((r) => setTimeout(r, 5));
      await new Promise((r) => setTimeout(r, 10 + rnd() * 150));
      child.kill("SIGKILL");
      await closed;
      assert.equal(child.signalCode, "SIGKILL", `seed ${seed}: writer failed on its own: ${err}`);
      const lines = out.split("\n");
      lines.pop(); // an unterminated last line was cut by the kill
      const [, openedAt] = lines[0]!.split(" ");
      assert.equal(Number(openedAt), lastSeqBefore, `seed ${seed}: the writer continued where the last reopen ended`);
      for (const line of lines.slice(1)) {
        const [, seq, vmId] = line.split(" ");
        acked.set(Number(seq), vmId!);
      }

      const l = MeteringLedger.open(dir.path);
      torn += l.tornLinesRepaired;
      const all = assertGapless(l);
      assert.equal(l.firstRetainedSeq, 1);
      for (const [seq, vmId] of acked) assert.equal(all[seq - 1]?.vmId, vmId, `seed ${seed}: acknowledged seq ${seq} lost or changed`);
      assert.ok(l.lastSeq >= Math.max(...acked.keys()));
      lastSeqBefore = l.lastSeq;
      await l.close();
    }
    assert.ok(acked.size > 100, `only ${acked.size} entries acknowledged in 6 rounds`);
    // Torn lines are rare under SIGKILL (the page cache keeps whole writes); reported, not required.
    const segments = segmentFiles(dir.path).length;
    assert.ok(segments > 1, "rollover happened in the small-segment rounds");
    process.stderr.write(`crash test (seed ${seed}): ${acked.size} acknowledged entries, ${lastSeqBefore} written, ${segments} segments, ${torn} torn lines repaired\n`);
  });
  it("a failed write (file size limit hit mid-write) rejects its batch and is truncated back: no gap, no partial line", { timeout: 30_000 }, async () => {
    // bash's `ulimit -f` is in KiB; Node ignores SIGXFSZ, so the write comes back short, then EFBIG.
    const child = spawn("bash", ["-c", `ulimit -f 16 && exec "${process.execPath}" "${WRITER}" fill "${dir.path}"`], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.on("data", (c: Buffer) => (out += c.toString()));
    child.stderr.on("data", (c: Buffer) => (err += c.toString()));
    const code = await new Promise<number | null>((resolve) => child.once("close", (c) => resolve(c)));
    assert.equal(code, 0, err);
    const result = JSON.parse(out) as FillResult;
    assert.match(result.failure, /could not write the metering ledger: .*EFBIG/);
    assert.ok(result.lastSeqBeforeFailure >= 10);
    assert.equal(result.lastSeqAfterFailure, result.lastSeqBeforeFailure, "the failed batch did not advance lastSeq");
    assert.equal(result.smallEntrySeq, result.lastSeqBeforeFailure + 1, "the next entry follows without a gap");
    const file = join(dir.path, segmentFiles(dir.path)[0]!);
    assert.ok(statSync(file).size < 16 * 1024);
    const l = MeteringLedger.open(dir.path);
    assert.equal(l.tornLinesRepaired, 0, "no partial line was left behind");
    assert.equal(l.lastSeq, result.smallEntrySeq);
    assert.equal(assertGapless(l).at(-1)!.vmId, "small");
    await l.close();
  });
});

describe("MeteringLedger: segments and reads", () => {
  it("rolls over at entry boundaries into files named by their first seq; reads across them", async () => {
    const l = MeteringLedger.open(dir.path, { segmentBytes: 1000 });
    const written = await appendSequentially(l, 40);
    const names = segmentFiles(dir.path);
    assert.ok(names.length > 5, `${names.length} segments`);
    let expectFirst = 1;
    for (const name of names) {
      const lines = readFileSync(join(dir.path, name), "utf8").split("\n");
      assert.equal(lines.pop(), "", "whole lines only");
      assert.equal(name, segmentFileName(expectFirst));
      assert.equal(parseLedgerLine(lines[0]!).seq, expectFirst);
      expectFirst += lines.length;
    }
    assert.deepEqual(l.read(3, 20), written.slice(2, 22));
    await l.close();
    const reopened = MeteringLedger.open(dir.path, { segmentBytes: 1000 });
    // After reopen only the last segment is in memory: these reads come from the files.
    for (let from = 1; from <= 40; from += 7) assert.deepEqual(reopened.read(from, 9), written.slice(from - 1, from + 8));
    await reopened.close();
  });
  it("reads from anywhere in large segments (the sparse offset index) match what was written", async () => {
    const l = MeteringLedger.open(dir.path, { segmentBytes: 200_000 });
    const written: LedgerEntry[] = [];
    for (let b = 0; b < 60; b++) written.push(...(await l.append(Array.from({ length: 50 }, (_, i) => entry(`vm-${b}-${i}`, { emittedAtNs: T0 + BigInt(b * 50 + i) })))));
    await l.close();
    assert.ok(segmentFiles(dir.path).length >= 3);
    const reopened = MeteringLedger.open(dir.path, { segmentBytes: 200_000 });
    const rnd = prng(7);
    for (let i = 0; i < 200; i++) {
      const from = 1 + Math.floor(rnd() * written.length);
      const limit = 1 + Math.floor(rnd() * 600);
      assert.deepEqual(reopened.read(from, limit), written.slice(from - 1, from - 1 + limit), `read(${from}, ${limit})`);
    }
    assert.deepEqual(reopened.read(1, 10_000), written);
    await reopened.close();
  });
});

describe("MeteringLedger: acknowledgement and retention", () => {
  it("persists the cursor; only moves forward; refuses seqs not yet written", async () => {
    const l = MeteringLedger.open(dir.path);
    await appendSequentially(l, 10);
    l.acknowledge(6);
    l.acknowledge(4);
    assert.equal(l.acknowledgedSeq, 6);
    assert.throws(() => l.acknowledge(11), RangeError);
    assert.throws(() => l.acknowledge(-1), RangeError);
    await l.flushAcknowledgement();
    await l.close();
    const reopened = MeteringLedger.open(dir.path);
    assert.equal(reopened.acknowledgedSeq, 6);
    await reopened.close();
  });
  it("drops whole segments below ack - retain, never an unacknowledged entry", async () => {
    const options = { segmentBytes: 700, retainAcknowledgedEntries: 10 };
    const l = MeteringLedger.open(dir.path, options);
    const written = await appendSequentially(l, 100);
    const before = segmentFiles(dir.path).length;
    l.acknowledge(50);
    await l.flushAcknowledgement();
    assert.ok(segmentFiles(dir.path).length < before, "old segments deleted");
    const first = l.firstRetainedSeq;
    assert.ok(first > 1 && first <= 41, `first retained ${first}: entries 41..50 are kept by retain=10`);
    assert.equal(segmentFiles(dir.path)[0], segmentFileName(first));
    assert.deepEqual(l.read(1, 1000), written.slice(first - 1), "read clamps to the first retained");
    await l.close();
    const reopened = MeteringLedger.open(dir.path, options);
    assert.equal(reopened.firstRetainedSeq, first);
    assert.equal(reopened.acknowledgedSeq, 50);
    assertGapless(reopened);
    await reopened.close();
  });
  it("keeps the segment being appended to even when everything is acknowledged", async () => {
    const l = MeteringLedger.open(dir.path, { segmentBytes: 500, retainAcknowledgedEntries: 0 });
    await appendSequentially(l, 30);
    l.acknowledge(30);
    await l.flushAcknowledgement();
    assert.equal(segmentFiles(dir.path).length, 1);
    assert.ok(l.firstRetainedSeq <= 30);
    assert.equal((await l.append([entry("more")]))[0]!.seq, 31);
    assertGapless(l);
    await l.close();
  });
  it("random appends and acknowledgements: firstRetainedSeq never passes ack - retain + 1", async () => {
    const rnd = prng(99);
    const retain = 7;
    const l = MeteringLedger.open(dir.path, { segmentBytes: 600, retainAcknowledgedEntries: retain });
    for (let step = 0; step < 60; step++) {
      await l.append(Array.from({ length: 1 + Math.floor(rnd() * 4) }, (_, i) => entry(`s${step}-${i}`)));
      if (rnd() < 0.5) {
        l.acknowledge(l.acknowledgedSeq + Math.floor(rnd() * (l.lastSeq - l.acknowledgedSeq + 1)));
        await l.flushAcknowledgement();
      }
      assert.ok(l.firstRetainedSeq <= Math.max(1, l.acknowledgedSeq - retain + 1), `step ${step}: first ${l.firstRetainedSeq}, ack ${l.acknowledgedSeq}`);
      assertGapless(l);
    }
    await l.close();
  });
  it("the default keeps a million acknowledged entries", async () => {
    const l = MeteringLedger.open(dir.path, { segmentBytes: 300 });
    await appendSequentially(l, 20);
    l.acknowledge(20);
    await l.flushAcknowledgement();
    assert.equal(l.firstRetainedSeq, 1);
    await l.close();
  });
});

describe("MeteringLedger: line checksums (.crc files; the line format is unchanged)", () => {
  const crcFiles = (path: string) => readdirSync(path).filter((n) => n.endsWith(".crc")).sort();
  /** Changes `from` to `to` (same length) in `file`; returns the byte offset of the line it is in. */
  function flip(file: string, from: string, to: string): number {
    const text = readFileSync(file, "utf8");
    const at = text.indexOf(from);
    assert.ok(at >= 0 && from.length === to.length, `${from} in ${file}`);
    writeFileSync(file, text.slice(0, at) + to + text.slice(at + from.length));
    return Buffer.byteLength(text.slice(0, text.lastIndexOf("\n", at) + 1));
  }
  const corruptAt = (file: string, offset: number, reason: RegExp) => (e: unknown) =>
    e instanceof LedgerCorruptError && e.file === file && e.offset === offset && reason.test(e.message);

  it("a flipped byte in an acknowledged line (a vm_id) is refused at open naming the segment file and offset, in any segment; nothing is changed", async () => {
    const l = MeteringLedger.open(dir.path, { segmentBytes: 600 });
    await appendSequentially(l, 12);
    await l.close();
    assert.deepEqual(crcFiles(dir.path), segmentFiles(dir.path).map((n) => n.replace(".jsonl", ".crc")), "one checksum file per segment");
    const files = segmentFiles(dir.path).map((n) => join(dir.path, n));
    for (const [file, vm] of [[files[0]!, "vm-1"], [files.at(-1)!, "vm-11"]] as const) {
      const good = readFileSync(file);
      const offset = flip(file, `"vm_id":"${vm}"`, `"vm_id":"${vm.slice(0, -1)}7"`);
      const bad = readFileSync(file);
      assert.throws(() => MeteringLedger.open(dir.path, { segmentBytes: 600 }), corruptAt(file, offset, /line does not match its checksum \(.*\.crc at byte offset \d+/));
      assert.deepEqual(readFileSync(file), bad, "refused, not repaired or truncated");
      writeFileSync(file, good);
    }
    // A flipped checksum is as loud (the line and its record disagree).
    const crc = join(dir.path, crcFiles(dir.path)[0]!);
    const records = readFileSync(crc, "latin1");
    writeFileSync(crc, (records[0] === "0" ? "1" : "0") + records.slice(1));
    assert.throws(() => MeteringLedger.open(dir.path, { segmentBytes: 600 }), corruptAt(files[0]!, 0, /does not match its checksum/));
    writeFileSync(crc, records);
    assertGapless(MeteringLedger.open(dir.path, { segmentBytes: 600 }));
  });

  it("a line flipped after open is refused when read from disk (a watcher's backlog), naming the file and offset", async () => {
    const l = MeteringLedger.open(dir.path, { segmentBytes: 600 });
    await appendSequentially(l, 12);
    await l.close();
    const reopened = MeteringLedger.open(dir.path, { segmentBytes: 600 }); // older segments are read from disk
    const file = join(dir.path, segmentFiles(dir.path)[0]!);
    const offset = flip(file, '"vm_id":"vm-2"', '"vm_id":"vm-9"');
    assert.throws(() => reopened.read(1, 100), corruptAt(file, offset, /line does not match its checksum/));
    await reopened.close();
  });

  it("a segment without its .crc file is refused; a stray .crc (retention interrupted) is removed; retention deletes both", async () => {
    const options = { segmentBytes: 600, retainAcknowledgedEntries: 0 };
    const l = MeteringLedger.open(dir.path, options);
    await appendSequentially(l, 12);
    l.acknowledge(6);
    await l.flushAcknowledgement();
    await l.close();
    assert.deepEqual(crcFiles(dir.path), segmentFiles(dir.path).map((n) => n.replace(".jsonl", ".crc")), "deleted with their segments");
    const crc = join(dir.path, crcFiles(dir.path)[0]!);
    const records = readFileSync(crc);
    rmSync(crc);
    assert.throws(() => MeteringLedger.open(dir.path, options), corruptAt(crc, 0, /missing, but .* holds \d+ line/));
    writeFileSync(crc, records);
    const stray = join(dir.path, "ledger-00000000000000000001.crc");
    writeFileSync(stray, "0123abcd\n");
    MeteringLedger.open(dir.path, options).close();
    assert.ok(!crcFiles(dir.path).includes("ledger-00000000000000000001.crc"));
  });

  it("the last segment's .crc missing its newest checksums (a crash between the two writes, never acknowledged) loads and is completed", async () => {
    const file = join(dir.path, segmentFileName(1));
    const l = MeteringLedger.open(dir.path);
    await appendSequentially(l, 5);
    await l.close();
    const crc = join(dir.path, crcFiles(dir.path)[0]!);
    const full = readFileSync(crc);
    writeFileSync(crc, full.subarray(0, 4 * 9 + 3)); // four whole records and a torn fifth
    const reopened = MeteringLedger.open(dir.path);
    assert.equal(reopened.checksumsAdded, 1);
    assert.deepEqual(readFileSync(crc), full);
    assert.equal((await reopened.append([entry("next")]))[0]!.seq, 6);
    await reopened.close();
    // Checksums of lines never written (the segment's write was lost) are dropped.
    appendFileSync(crc, "89abcdef\n");
    assert.equal(MeteringLedger.open(dir.path).lastSeq, 6);
    assert.equal(readFileSync(crc).length, 6 * 9);
    assert.ok(readFileSync(file, "utf8").endsWith("\n"));
  });

  it("a ledger from before checksums (format-1 ledger.json, no .crc) loads, gets its checksums, and is checked from then on", async () => {
    const l = MeteringLedger.open(dir.path, { segmentBytes: 600 });
    await appendSequentially(l, 8);
    await l.close();
    for (const n of crcFiles(dir.path)) rmSync(join(dir.path, n));
    const meta = JSON.parse(readFileSync(join(dir.path, "ledger.json"), "utf8")) as { format: number };
    writeFileSync(join(dir.path, "ledger.json"), JSON.stringify({ ...meta, format: 1 }));
    const old = MeteringLedger.open(dir.path, { segmentBytes: 600 });
    assert.equal(old.checksumsAdded, 8);
    assertGapless(old);
    await old.close();
    assert.equal((JSON.parse(readFileSync(join(dir.path, "ledger.json"), "utf8")) as { format: number }).format, 2);
    assert.equal(crcFiles(dir.path).length, segmentFiles(dir.path).length);
    const file = join(dir.path, segmentFiles(dir.path)[0]!);
    const offset = flip(file, '"vm_id":"vm-1"', '"vm_id":"vm-5"');
    assert.throws(() => MeteringLedger.open(dir.path, { segmentBytes: 600 }), corruptAt(file, offset, /does not match its checksum/));
  });
});
