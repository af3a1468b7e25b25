import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { DockerLogFrameError, DockerLogFrameParser, type DockerLogFrame } from "../../../../agent/runtime/docker/docker-log-frames.js";
import { prng } from "../../../helpers/random-message.js";
import { repoPath } from "../../../helpers/paths.js";

// Bytes captured from a real engine: see test/fixtures/docker/logs-fixtures.md.
const FIXTURES = repoPath("test", "fixtures", "docker");
const interleaved = readFileSync(`${FIXTURES}/logs-interleaved.bin`);
const untimed = readFileSync(`${FIXTURES}/logs-interleaved-untimed.bin`);
const longLine = readFileSync(`${FIXTURES}/logs-long-line.bin`);

/** Frames as comparable plain values. */
const plain = (frames: DockerLogFrame[]) => frames.map((f) => ({ stream: f.stream, payload: Buffer.from(f.payload).toString("hex") }));

/** Parses `bytes` pushed in pieces cut at the sorted offsets `cuts`, then ends. */
function parse(bytes: Uint8Array, cuts: number[]): DockerLogFrame[] {
  const p = new DockerLogFrameParser();
  const frames: DockerLogFrame[] = [];
  let at = 0;
  for (const c of [...cuts, bytes.length]) {
    frames.push(...p.push(bytes.subarray(at, c)));
    at = c;
  }
  p.end();
  return frames;
}

function frameBytes(stream: number, payload: Uint8Array): Buffer {
  const h = Buffer.alloc(8);
  h[0] = stream;
  h.writeUInt32BE(payload.length, 4);
  return Buffer.concat([h, payload]);
}

describe("DockerLogFrameParser on captured streams", () => {
  it("reads the six frames of the interleaved capture, stream ids and payloads", () => {
    const frames = parse(interleaved, []);
    assert.deepEqual(frames.map((f) => f.stream), [1, 2, 1, 1, 2, 1]);
    const texts = frames.map((f) => Buffer.from(f.payload).toString("utf8").replace(/^\S+ /, ""));
    assert.deepEqual(texts, ["out 1\n", "err é 1\n", "\n", "日本語 out 2\n", "err 2\r\n", "no newline"]);
    assert.deepEqual(parse(untimed, []).map((f) => Buffer.from(f.payload).toString("utf8")), texts, "without timestamps: the bare messages");
  });

  it("reads json-file's 16 KiB split of a long line as two frames", () => {
    const frames = parse(longLine, []);
    assert.deepEqual(frames.map((f) => [f.stream, f.payload.length]), [
      [1, 31 + 16384],
      [1, 31 + 3617],
      [1, 31 + 6],
    ]);
  });

  it("gives the same frames for a cut at every byte boundary", () => {
    for (const bytes of [interleaved, untimed, longLine]) {
      const whole = plain(parse(bytes, []));
      for (let i = 0; i <= bytes.length; i++) assert.deepEqual(plain(parse(bytes, [i])), whole, `cut at ${i}`);
    }
  });

  it("gives the same frames for every pair of cuts (the small capture)", () => {
    const whole = plain(parse(interleaved, []));
    for (let i = 0; i <= interleaved.length; i++) {
      for (let j = i; j <= interleaved.length; j++) assert.deepEqual(plain(parse(interleaved, [i, j])), whole, `cuts at ${i}, ${j}`);
    }
  });

  it("one byte at a time", () => {
    const p = new DockerLogFrameParser();
    const frames: DockerLogFrame[] = [];
    for (const b of interleaved) frames.push(...p.push(Uint8Array.of(b)));
    p.end();
    assert.deepEqual(plain(frames), plain(parse(interleaved, [])));
  });

  it("reports a stream that ends inside a frame, with what arrived of it, at every truncation", () => {
    const boundaries = new Set<number>([0]);
    for (let at = 0; at < interleaved.length; ) {
      at += 8 + interleaved.readUInt32BE(at + 4);
      boundaries.add(at);
    }
    for (let n = 0; n <= interleaved.length; n++) {
      const p = new DockerLogFrameParser();
      const frames = p.push(interleaved.subarray(0, n));
      if (boundaries.has(n)) {
        p.end();
        continue;
      }
      const err = (() => {
        try {
          p.end();
        } catch (e) {
          return e;
        }
        assert.fail(`truncation at ${n} not reported`);
      })();
      assert.ok(err instanceof DockerLogFrameError, `at ${n}`);
      const frameStart = Math.max(...[...boundaries].filter((b) => b < n));
      assert.equal(err.offset, frameStart, `at ${n}`);
      assert.equal(frames.length, [...boundaries].filter((b) => b > 0 && b <= n).length);
      if (n - frameStart < 8) {
        assert.match(err.message, /ended inside a frame header/);
        assert.equal(err.partial, undefined);
      } else {
        assert.match(err.message, /ended inside a frame: \d+ of \d+ payload bytes/);
        assert.deepEqual(Buffer.from(err.partial!.payload), interleaved.subarray(frameStart + 8, n));
        assert.equal(err.partial!.stream, interleaved[frameStart]);
      }
      assert.throws(() => p.end(), DockerLogFrameError, "stays failed");
    }
  });
});

describe("DockerLogFrameParser on bad input", () => {
  it("rejects an unknown stream id, naming it and the offset", () => {
    const p = new DockerLogFrameParser();
    const good = frameBytes(1, Buffer.from("ok\n"));
    assert.equal(p.push(good).length, 1);
    assert.throws(() => p.push(frameBytes(4, Buffer.from("x"))), {
      name: "DockerLogFrameError",
      message: `not a Docker log frame header at byte ${good.length}: unknown stream id 4 (header 0400000000000001)`,
      offset: good.length,
    });
    assert.throws(() => p.push(good), DockerLogFrameError, "unusable after a bad header");
  });

  it("rejects nonzero padding", () => {
    const bad = frameBytes(2, Buffer.from("x"));
    bad[2] = 1;
    assert.throws(() => new DockerLogFrameParser().push(bad), { message: "not a Docker log frame header at byte 0: nonzero padding in bytes 1-3 (header 0200010000000001)" });
  });

  it("rejects a TTY stream taken for a framed one", () => {
    assert.throws(() => new DockerLogFrameParser().push(Buffer.from("hello world\n")), /unknown stream id 104/);
  });

  it("rejects a length over the limit before buffering it", () => {
    const p = new DockerLogFrameParser({ maxPayloadBytes: 10 });
    assert.deepEqual(plain(p.push(frameBytes(1, Buffer.alloc(10, 0x61)))), [{ stream: 1, payload: "61".repeat(10) }]);
    assert.throws(() => p.push(frameBytes(1, Buffer.alloc(11))), /payload length 11 over the 10-byte limit/);
    assert.throws(() => new DockerLogFrameParser().push(Buffer.from("01000000ffffffff", "hex")), /payload length 4294967295 over/);
  });

  it("passes empty frames and daemon-error frames through", () => {
    const bytes = Buffer.concat([frameBytes(1, new Uint8Array(0)), frameBytes(3, Buffer.from("error from daemon in stream: x")), frameBytes(0, Buffer.from("in"))]);
    assert.deepEqual(
      parse(bytes, [3]).map((f) => [f.stream, Buffer.from(f.payload).toString()]),
      [
        [1, ""],
        [3, "error from daemon in stream: x"],
        [0, "in"],
      ],
    );
  });
});

describe("DockerLogFrameParser fuzz (seeded)", () => {
  it("random frames in random chunks come back exactly", () => {
    for (let seed = 1; seed <= 300; seed++) {
      const rnd = prng(seed);
      const frames: { stream: number; payload: string }[] = [];
      const n = Math.floor(rnd() * 20);
      for (let i = 0; i < n; i++) {
        const len = rnd() < 0.2 ? 0 : Math.floor(rnd() ** 3 * 5000);
        const payload = Buffer.alloc(len);
        for (let k = 0; k < len; k++) payload[k] = Math.floor(rnd() * 256);
        frames.push({ stream: Math.floor(rnd() * 4), payload: payload.toString("hex") });
      }
      const bytes = Buffer.concat(frames.map((f) => frameBytes(f.stream, Buffer.from(f.payload, "hex"))));
      const cuts: number[] = [];
      for (let c = 0; c < bytes.length; c += 1 + Math.floor(rnd() ** 2 * 3000)) if (c > 0) cuts.push(c);
      assert.deepEqual(plain(parse(bytes, cuts)), frames, `seed ${seed}`);
    }
  });

  it("random bytes never throw anything but DockerLogFrameError", () => {
    for (let seed = 1; seed <= 2000; seed++) {
      const rnd = prng(seed);
      const bytes = Buffer.alloc(Math.floor(rnd() * 64));
      // Mostly near-valid headers, so the parser gets past the first one now and then.
      for (let k = 0; k < bytes.length; k++) bytes[k] = rnd() < 0.6 ? Math.floor(rnd() * 4) : Math.floor(rnd() * 256);
      const p = new DockerLogFrameParser({ maxPayloadBytes: 1 << 20 });
      try {
        for (let at = 0; at < bytes.length; ) {
          const next = at + 1 + Math.floor(rnd() * 10);
          p.push(bytes.subarray(at, next));
          at = next;
        }
        p.end();
      } catch (e) {
        assert.ok(e instanceof DockerLogFrameError, `seed ${seed}: ${String(e)}`);
      }
    }
  });
});
