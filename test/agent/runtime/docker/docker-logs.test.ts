import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { Readable } from "node:stream";
import type Dockerode from "dockerode";
import { Code, ConnectError } from "@connectrpc/connect";
import { LogEndReason, LogStream, type LogLine } from "../../../../gen/fleetlet/agent/v1/runtime_pb.js";
import type { LogBatch } from "../../../../agent/runtime/container-runtime.js";
import { fetchDockerLogs, streamDockerLogs } from "../../../../agent/runtime/docker/docker-logs.js";
import { parseRfc3339Nano } from "../../../../agent/runtime/log-line-assembler.js";
import { repoPath } from "../../../helpers/paths.js";

// docker-logs.ts against a stand-in for dockerode's modem that answers with bytes captured from
// a real engine (test/fixtures/docker/logs-fixtures.md), cut at every byte boundary. The real
// engine is in test/e2e/docker-logs.test.ts.

const FIXTURES = repoPath("test", "fixtures", "docker");
const interleaved = readFileSync(`${FIXTURES}/logs-interleaved.bin`);
const longLine = readFileSync(`${FIXTURES}/logs-long-line.bin`);

type Answer = Uint8Array[] | Error;
interface Dial {
  path: string;
  options: Record<string, unknown>;
}

/** A Dockerode whose log requests get `answers` in turn and whose inspect gives `inspect()`. */
function fakeDocker(answers: Answer[], inspect: () => unknown = () => ({ State: { Running: false, ExitCode: 0, Status: "exited" } })) {
  const dials: Dial[] = [];
  const docker = {
    modem: {
      dial(opts: Dial, cb: (err: Error | null, res: unknown) => void) {
        dials.push({ path: opts.path, options: { ...opts.options } });
        const answer = answers.shift();
        if (!answer) throw new Error("unexpected request");
        setImmediate(() => (answer instanceof Error ? cb(answer, null) : cb(null, Readable.from(answer.map((c) => Buffer.from(c))))));
      },
    },
    getContainer: () => ({
      inspect: async () => {
        const r = inspect();
        if (r instanceof Error) throw r;
        return r;
      },
    }),
  };
  return { docker: docker as unknown as Dockerode, dials };
}

const cut = (bytes: Uint8Array, ...at: number[]): Uint8Array[] => {
  const out: Uint8Array[] = [];
  let from = 0;
  for (const c of [...at, bytes.length]) {
    out.push(bytes.subarray(from, c));
    from = c;
  }
  return out;
};

const plain = (l: LogLine) => [l.stream, l.text, l.continued, l.unterminated, l.timestamp ? `${l.timestamp.seconds}.${l.timestamp.nanos}` : "-"];
const ts = (text: string) => {
  const t = parseRfc3339Nano(text)!;
  return `${t.seconds}.${t.nanos}`;
};

const INTERLEAVED_LINES = [
  [LogStream.STDOUT, "out 1", false, false, ts("2026-11-22T03:08:09.751036551Z")],
  [LogStream.STDERR, "err é 1", false, false, ts("2026-11-22T03:08:09.802569093Z")],
  [LogStream.STDOUT, "", false, false, ts("2026-11-22T03:08:09.853654551Z")],
  [LogStream.STDOUT, "日本語 out 2", false, false, ts("2026-11-22T03:08:09.904934973Z")],
  [LogStream.STDERR, "err 2\r", false, false, ts("2026-11-22T03:08:09.956447449Z")],
  [LogStream.STDOUT, "no newline", false, true, ts("2026-11-22T03:08:10.036227861Z")],
];

async function drain(stream: AsyncIterable<LogBatch>): Promise<LogBatch[]> {
  const out: LogBatch[] = [];
  for await (const b of stream) out.push(b);
  return out;
}

const error = (message: string, props: Record<string, unknown>) => Object.assign(new Error(message), props);

describe("fetchDockerLogs on captured bytes", () => {
  it("strips the timestamps per frame and keeps them nanosecond-exact, for every cut", async () => {
    for (let i = 0; i <= interleaved.length; i++) {
      const { docker } = fakeDocker([cut(interleaved, i)]);
      const { lines, tty } = await fetchDockerLogs(docker, "c1", false, { tail: 0, timestamps: true });
      assert.equal(tty, false);
      assert.deepEqual(lines.map(plain), INTERLEAVED_LINES, `cut at ${i}`);
    }
  });

  it("joins json-file's 16 KiB pieces of a line (each with its own prefix), for every cut", async () => {
    const expected = [
      [LogStream.STDOUT, "x".repeat(20000), false, false, "-"],
      [LogStream.STDOUT, "after", false, false, "-"],
    ];
    for (let i = 0; i <= longLine.length; i += i > 16400 && i < 16460 ? 1 : 13) {
      const { docker } = fakeDocker([cut(longLine, i)]);
      const { lines } = await fetchDockerLogs(docker, "c1", false, { tail: 0, timestamps: false });
      assert.deepEqual(lines.map(plain), expected, `cut at ${i}`);
    }
  });

  it("asks the engine for timestamps unless TTY, for the tail, not following", async () => {
    const { docker, dials } = fakeDocker([[interleaved], [Buffer.from("tty bytes\r\n")]]);
    await fetchDockerLogs(docker, "c/1", false, { tail: 7, timestamps: false });
    const { lines } = await fetchDockerLogs(docker, "c/1", true, { tail: 0, timestamps: true });
    assert.deepEqual(dials, [
      { path: "/containers/c%2F1/logs?", options: { follow: 0, stdout: 1, stderr: 1, timestamps: 1, tail: "7" } },
      { path: "/containers/c%2F1/logs?", options: { follow: 0, stdout: 1, stderr: 1, timestamps: 0, tail: "all" } },
    ]);
    assert.deepEqual(lines.map(plain), [[LogStream.TTY, "tty bytes\r", false, false, "-"]]);
  });

  it("an error frame or a cut stream: the lines read so far plus the errors; not frames at all: INTERNAL", async () => {
    const errFrame = Buffer.concat([Buffer.from("0300000000000005", "hex"), Buffer.from("boom\n")]);
    const withError = await fetchDockerLogs(fakeDocker([[interleaved.subarray(0, 45), errFrame]]).docker, "c1", false, { tail: 0, timestamps: true });
    assert.deepEqual(withError.errors, ["boom"]);
    assert.ok(withError.lines.length >= 1, "the line before the error frame is kept");
    const cut = await fetchDockerLogs(fakeDocker([[interleaved.subarray(0, 58)]]).docker, "c1", false, { tail: 0, timestamps: true });
    assert.equal(cut.errors.length, 1);
    assert.match(cut.errors[0]!, /log stream was cut: Docker log stream ended inside a frame: 5 of 40 payload bytes at byte 58/);
    await assert.rejects(fetchDockerLogs(fakeDocker([[Buffer.from("plain text\n")]]).docker, "c1", false, { tail: 0, timestamps: true }), (e: unknown) => {
      assert.ok(e instanceof ConnectError && e.code === Code.Internal);
      assert.match(e.rawMessage, /not a valid log stream: not a Docker log frame header at byte 0: unknown stream id 112/);
      return true;
    });
  });

  it("maps engine answers: 404 NOT_FOUND, no answer UNAVAILABLE, 501 FAILED_PRECONDITION, 500 INTERNAL", async () => {
    const cases: [Error, Code, string][] = [
      [error("(HTTP code 404) no such container - No such container: c1 ", { statusCode: 404 }), Code.NotFound, "docker: no such container: c1"],
      [error("connect ECONNREFUSED /run/docker.sock", { code: "ECONNREFUSED" }), Code.Unavailable, "docker engine unreachable: connect ECONNREFUSED /run/docker.sock"],
      [error("(HTTP code 501) not implemented - configured logging driver does not support reading ", { statusCode: 501 }), Code.FailedPrecondition, "docker: configured logging driver does not support reading"],
      [error("(HTTP code 500) server error - oops ", { statusCode: 500 }), Code.Internal, "docker: oops"],
    ];
    for (const [err, code, message] of cases) {
      await assert.rejects(fetchDockerLogs(fakeDocker([err]).docker, "c1", false, { tail: 0, timestamps: false }), { name: "ConnectError", code, rawMessage: message });
      await assert.rejects(drain(streamDockerLogs(fakeDocker([err]).docker, "c1", false, { tail: 0, timestamps: false, follow: true }, new AbortController().signal)), { code, rawMessage: message });
    }
  });
});

describe("streamDockerLogs on captured bytes", () => {
  const signal = () => new AbortController().signal;

  it("a batch per read, then END_OF_LOG when not following", async () => {
    const { docker } = fakeDocker([cut(interleaved, 45, 93, 188, 234)]);
    const batches = await drain(streamDockerLogs(docker, "c1", false, { tail: 0, timestamps: true, follow: false }, signal()));
    assert.deepEqual(batches.map((b) => b.lines.map((l) => l.text)), [["out 1"], ["err é 1"], ["", "日本語 out 2"], ["err 2\r"], ["no newline"]]);
    assert.deepEqual(batches.map((b) => b.end), [undefined, undefined, undefined, undefined, { reason: LogEndReason.END_OF_LOG, detail: "" }]);
    assert.deepEqual(batches.flatMap((b) => b.lines).map(plain), INTERLEAVED_LINES);
  });

  it("daemon-error frames are errors, not text; a cut stream keeps what came and ends RUNTIME_ERROR", async () => {
    const errFrame = Buffer.concat([Buffer.from("0300000000000005", "hex"), Buffer.from("boom\n")]);
    // The stream is cut 8 bytes into the text of "日本語 out 2\n", inside "語".
    const { docker } = fakeDocker([[interleaved.subarray(0, 45), errFrame, interleaved.subarray(45, 180)]]);
    const batches = await drain(streamDockerLogs(docker, "c1", false, { tail: 0, timestamps: false, follow: false }, signal()));
    assert.deepEqual(batches.map((b) => [b.lines.map((l) => [l.text, l.unterminated, Buffer.from(l.raw).toString("hex")]), b.errors]), [
      [[["out 1", false, ""]], []],
      [[], ["boom"]],
      [[["err é 1", false, ""], ["", false, ""]], []],
      [[["日本\ufffd", true, "e697a5e69cace8aa"]], []],
    ]);
    assert.equal(batches.at(-1)!.end!.reason, LogEndReason.RUNTIME_ERROR);
    assert.equal(batches.at(-1)!.end!.detail, "the engine's log stream was cut: Docker log stream ended inside a frame: 39 of 47 payload bytes at byte 193"); // 180 + the 13 of the error frame

    // Cut inside the timestamp prefix: nothing the container wrote arrived, no line.
    const early = await drain(streamDockerLogs(fakeDocker([[interleaved.subarray(0, 60)]]).docker, "c1", false, { tail: 0, timestamps: false, follow: false }, signal()));
    assert.deepEqual(early.flatMap((b) => b.lines.map((l) => l.text)), ["out 1"]);
    assert.equal(early.at(-1)!.end!.reason, LogEndReason.RUNTIME_ERROR);
  });

  it("follow: why it ended, from inspect afterwards", async () => {
    const cases: [unknown, LogEndReason, string][] = [
      [{ State: { Running: false, ExitCode: 3, Status: "exited", OOMKilled: false } }, LogEndReason.CONTAINER_EXITED, "container c1 exited with code 3"],
      [{ State: { Running: false, ExitCode: 137, Status: "exited", OOMKilled: true } }, LogEndReason.CONTAINER_EXITED, "container c1 was OOM-killed"],
      [{ State: { Running: true, Restarting: false, ExitCode: 1, Status: "running", StartedAt: "2999-01-01T00:00:00Z" } }, LogEndReason.CONTAINER_EXITED, "container c1 exited with code 1 and was restarted"],
      [{ State: { Running: false, ExitCode: 0, Status: "removing" } }, LogEndReason.CONTAINER_REMOVED, "container c1 is being removed"],
      [error("(HTTP code 404) no such container - No such container: c1 ", { statusCode: 404 }), LogEndReason.CONTAINER_REMOVED, "container c1 was removed"],
      [error("connect ENOENT /x.sock", { code: "ENOENT" }), LogEndReason.RUNTIME_ERROR, "docker engine unreachable: connect ENOENT /x.sock"],
      [{ State: { Running: true, ExitCode: 0, Status: "running", StartedAt: "2000-01-01T00:00:00Z" } }, LogEndReason.RUNTIME_ERROR, "the engine ended the log stream of c1 while the container is still running"],
    ];
    for (const [inspect, reason, detail] of cases) {
      // Exited: a second, catch-up read (answered with nothing new).
      const { docker } = fakeDocker([[interleaved], []], () => inspect);
      const batches = await drain(streamDockerLogs(docker, "c1", false, { tail: 0, timestamps: false, follow: true }, signal()));
      assert.deepEqual(batches.at(-1)!.end, { reason, detail });
      assert.deepEqual(batches.flatMap((b) => b.lines.map((l) => l.text)), INTERLEAVED_LINES.map((l) => l[1]));
    }
  });

  it("follow: reads what the engine's follower missed at exit (moby#43860), without repeats", async () => {
    // The follower got the first five frames; the log really has all six. Read again `since` a
    // second before the last time seen (which is after the first frame): frames 1-5 are at or
    // after it, so the first 5 of the answer are skipped.
    const frameStarts = [0, 45, 93, 133, 188, 234, interleaved.length];
    const { docker, dials } = fakeDocker([[interleaved.subarray(0, frameStarts[5])], [interleaved]]);
    const batches = await drain(streamDockerLogs(docker, "c1", false, { tail: 0, timestamps: true, follow: true }, signal()));
    assert.deepEqual(batches.flatMap((b) => b.lines).map(plain), INTERLEAVED_LINES);
    assert.deepEqual(batches.at(-1)!.end, { reason: LogEndReason.CONTAINER_EXITED, detail: "container c1 exited with code 0" });
    // since = first frame's time (03:08:09.751036551): the last seen minus 1 s is earlier.
    assert.deepEqual(dials[1]!.options, { follow: 0, stdout: 1, stderr: 1, timestamps: 1, tail: "all", since: `${parseRfc3339Nano("2026-11-22T03:08:09.751036551Z")!.seconds}.751036551` });

    // A failed catch-up read is reported, the end reason stays.
    const failing = fakeDocker([[interleaved.subarray(0, frameStarts[5])], error("connect ECONNREFUSED /x", { code: "ECONNREFUSED" })]);
    const last = (await drain(streamDockerLogs(failing.docker, "c1", false, { tail: 0, timestamps: true, follow: true }, signal()))).at(-1)!;
    assert.deepEqual(last.errors, ["could not read the end of the log after the container exited: connect ECONNREFUSED /x"]);
    assert.equal(last.end!.reason, LogEndReason.CONTAINER_EXITED);
  });

  it("an aborted signal ends it quietly: no request, or no end batch", async () => {
    const ac = new AbortController();
    ac.abort();
    const { docker, dials } = fakeDocker([[interleaved]]);
    assert.deepEqual(await drain(streamDockerLogs(docker, "c1", false, { tail: 0, timestamps: false, follow: true }, ac.signal)), []);
    assert.equal(dials.length, 0);
  });
});
