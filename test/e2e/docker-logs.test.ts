import { afterAll, beforeAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import { createConnection, createServer, type Server, type Socket } from "node:net";
import { join } from "node:path";
import Dockerode from "dockerode";
import { Code, ConnectError } from "@connectrpc/connect";
import { LogEndReason, LogStream, type LogLine } from "../../gen/fleetlet/agent/v1/runtime_pb.js";
import type { LogBatch } from "../../agent/runtime/container-runtime.js";
import { fetchDockerLogs, streamDockerLogs } from "../../agent/runtime/docker/docker-logs.js";
import { MAX_LINE_BYTES } from "../../agent/runtime/log-line-assembler.js";
import { TestDockerd, TEST_IMAGE, dockerdSkipReason } from "../helpers/dockerd.js";
import { mustRunInCi } from "../helpers/root.js";
import { tempDir } from "../helpers/temp-dir.js";

// Container logs against a real engine (json-file driver), checked byte for byte against what
// the containers wrote.

const skip = mustRunInCi(dockerdSkipReason());
const utf8 = new TextEncoder();

/** The plain facts of a line, for deepEqual. */
const plain = (l: LogLine) => ({ stream: l.stream, text: l.text, continued: l.continued, unterminated: l.unterminated, raw: l.raw.length });
const line = (stream: LogStream, text: string, more: Partial<ReturnType<typeof plain>> = {}) => ({ stream, text, continued: false, unterminated: false, raw: 0, ...more });

/** Reassembles lines into the bytes the container wrote ("\n" after every complete line). */
function reassemble(lines: LogLine[]): Buffer {
  return Buffer.concat(lines.flatMap((l) => [l.raw.length ? l.raw : utf8.encode(l.text), l.continued || l.unterminated ? new Uint8Array(0) : Uint8Array.of(0x0a)]));
}

const timeNs = (l: LogLine) => l.timestamp!.seconds * 1_000_000_000n + BigInt(l.timestamp!.nanos);

async function collect(stream: AsyncIterable<LogBatch>): Promise<{ batches: LogBatch[]; at: number[] }> {
  const batches: LogBatch[] = [];
  const at: number[] = [];
  for await (const b of stream) {
    batches.push(b);
    at.push(Date.now());
  }
  return { batches, at };
}

/**
 * A unix-socket proxy in front of the engine: closing it is an engine that went away (for the
 * client: connections cut mid-response, then nothing listening), and it counts open connections.
 */
async function engineProxy(target: string, dir: string): Promise<{ socketPath: string; open(): number; cut(): Promise<void> }> {
  const socketPath = join(dir, "proxy.sock");
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    const upstream = createConnection(target);
    sockets.add(client).add(upstream);
    const drop = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on("close", drop).on("error", drop);
    upstream.on("close", drop).on("error", drop);
    client.pipe(upstream).pipe(client);
  });
  await new Promise<void>((r) => server.listen(socketPath, r));
  return {
    socketPath,
    open: () => [...sockets].filter((s) => !s.destroyed).length,
    cut: async () => {
      const closed = new Promise((r) => server.close(r));
      for (const s of sockets) s.destroy();
      await closed;
    },
  };
}

/** A line of `bytes` bytes mixing 1- to 4-byte characters, none straddling a 16 KiB boundary. */
function mixedLine(bytes: number): string {
  // json-file stores a long line as 16 KiB messages, each as a JSON string: a character cut
  // there is replaced with U+FFFD by the engine itself (seen on 20.10), before we read anything.
  const units = ["a", "é", "日", "😀", "b", "~"];
  let out = "";
  let len = 0;
  for (let i = 0; len < bytes; i++) {
    let u = units[i % units.length]!;
    const n = Buffer.byteLength(u);
    const block = 16 * 1024;
    if (Math.floor(len / block) !== Math.floor((len + n - 1) / block) || len + n > bytes) u = "x";
    out += u;
    len += Buffer.byteLength(u);
  }
  return out;
}

describe.skipIf(skip)("Docker container logs (real engine)", { timeout: 120_000 }, () => {
  let d: TestDockerd;
  let docker: Dockerode;
  const dir = tempDir("docker-logs");

  beforeAll(async () => {
    d = await TestDockerd.start();
    docker = new Dockerode({ socketPath: d.socketPath });
  });
  afterAll(async () => {
    await d?.stop();
    dir.remove();
  });

  /** Runs a container to completion; returns its id. */
  const runToEnd = (...args: string[]): string => {
    const id = d.docker("run", "-d", "--network", "none", ...args);
    d.docker("wait", id);
    return id;
  };
  const runDetached = (...args: string[]): string => d.docker("run", "-d", "--network", "none", ...args);

  it("interleaves stdout and stderr in the order written, with the engine's times", async () => {
    const started = BigInt(Date.now() - 1000) * 1_000_000n;
    const id = runToEnd(TEST_IMAGE, "sh", "-c", 'for i in 1 2 3 4; do echo "out $i é"; sleep 0.03; echo "err $i 日本 😀" >&2; sleep 0.03; done; echo; printf "tab\\there\\r\\n"');
    const { lines, tty } = await fetchDockerLogs(docker, id, false, { tail: 0, timestamps: true });
    assert.equal(tty, false);
    const expected = [];
    for (let i = 1; i <= 4; i++) expected.push(line(LogStream.STDOUT, `out ${i} é`), line(LogStream.STDERR, `err ${i} 日本 😀`));
    expected.push(line(LogStream.STDOUT, ""), line(LogStream.STDOUT, "tab\there\r"));
    assert.deepEqual(lines.map(plain), expected);
    const times = lines.map(timeNs);
    for (let i = 1; i < times.length; i++) assert.ok(times[i]! >= times[i - 1]!, `time order at ${i}`);
    assert.ok(times[0]! > started && times.at(-1)! < BigInt(Date.now() + 1000) * 1_000_000n, "engine times, nanoseconds");
    assert.ok(times.some((t) => t % 1000n !== 0n), "nanosecond precision kept");
    const out = reassemble(lines.filter((l) => l.stream === LogStream.STDOUT));
    assert.deepEqual(out, Buffer.from("out 1 é\nout 2 é\nout 3 é\nout 4 é\n\ntab\there\r\n"));

    const untimed = await fetchDockerLogs(docker, id, false, { tail: 0, timestamps: false });
    assert.deepEqual(untimed.lines.map(plain), expected);
    assert.ok(untimed.lines.every((l) => l.timestamp === undefined), "no timestamps unless asked");
  });

  it("a 100 KiB line comes in continued pieces that reassemble exactly", async () => {
    const long = mixedLine(100 * 1024);
    assert.equal(Buffer.byteLength(long), 100 * 1024);
    const id = runToEnd(TEST_IMAGE, "sh", "-c", 'printf "%s\\n" "$1"; echo after', "sh", long);
    const { lines } = await fetchDockerLogs(docker, id, false, { tail: 0, timestamps: true });
    assert.deepEqual(lines.map((l) => [Buffer.byteLength(l.text), l.continued]), [
      [MAX_LINE_BYTES, true],
      [100 * 1024 - MAX_LINE_BYTES, false],
      [5, false],
    ]);
    assert.equal(lines[0]!.text + lines[1]!.text, long);
    assert.deepEqual(reassemble(lines), Buffer.from(`${long}\nafter\n`));
    assert.ok(lines.every((l) => l.raw.length === 0));
    assert.equal(timeNs(lines[1]!), timeNs(lines[0]!), "every piece has the time the line started");
  });

  it("a TTY container's log is raw bytes: one TTY stream, the pty's \\r\\n, no timestamps", async () => {
    const id = runToEnd("-t", TEST_IMAGE, "sh", "-c", 'echo hello; printf "é 日\\n"; echo err >&2; printf "no newline"');
    const { lines, tty } = await fetchDockerLogs(docker, id, true, { tail: 0, timestamps: true });
    assert.equal(tty, true);
    assert.deepEqual(lines.map(plain), [
      line(LogStream.TTY, "hello\r"),
      line(LogStream.TTY, "é 日\r"),
      line(LogStream.TTY, "err\r"),
      line(LogStream.TTY, "no newline", { unterminated: true }),
    ]);
    assert.ok(lines.every((l) => l.timestamp === undefined));
  });

  it("tail N gives the last N lines, fetched and streamed", async () => {
    const id = runToEnd(TEST_IMAGE, "sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do echo line $i; done");
    const { lines } = await fetchDockerLogs(docker, id, false, { tail: 3, timestamps: false });
    assert.deepEqual(lines.map((l) => l.text), ["line 8", "line 9", "line 10"]);
    const { batches } = await collect(streamDockerLogs(docker, id, false, { tail: 2, timestamps: false, follow: false }, new AbortController().signal));
    assert.deepEqual(batches.flatMap((b) => b.lines.map((l) => l.text)), ["line 9", "line 10"]);
    assert.deepEqual(batches.at(-1)!.end, { reason: LogEndReason.END_OF_LOG, detail: "" });
    assert.ok(batches.slice(0, -1).every((b) => b.end === undefined && b.lines.length > 0), "only the last batch ends, no empty batches before");
    const all = await fetchDockerLogs(docker, id, false, { tail: 0, timestamps: false });
    assert.equal(all.lines.length, 10, "tail 0 = all");
  });

  it("an unterminated last line is marked so", async () => {
    const id = runToEnd(TEST_IMAGE, "sh", "-c", "printf 'first\\n'; sleep 0.05; printf 'last'");
    const { lines } = await fetchDockerLogs(docker, id, false, { tail: 0, timestamps: true });
    assert.deepEqual(lines.map(plain), [line(LogStream.STDOUT, "first"), line(LogStream.STDOUT, "last", { unterminated: true })]);
    assert.ok(lines[1]!.timestamp, "the rest keeps its time");
  });

  it("follow: lines arrive live, then the container exits → CONTAINER_EXITED with the code", async () => {
    const id = runDetached(TEST_IMAGE, "sh", "-c", 'echo start; sleep 0.8; echo "live 1"; sleep 0.4; echo "live 2" >&2; sleep 0.4; printf bye; exit 3');
    const { batches, at } = await collect(streamDockerLogs(docker, id, false, { tail: 0, timestamps: true, follow: true }, new AbortController().signal));
    const lines = batches.flatMap((b) => b.lines);
    assert.deepEqual(lines.map(plain), [
      line(LogStream.STDOUT, "start"),
      line(LogStream.STDOUT, "live 1"),
      line(LogStream.STDERR, "live 2"),
      line(LogStream.STDOUT, "bye", { unterminated: true }),
    ]);
    assert.deepEqual(batches.at(-1)!.end, { reason: LogEndReason.CONTAINER_EXITED, detail: `container ${id} exited with code 3` });
    const arrival = (text: string) => at[batches.findIndex((b) => b.lines.some((l) => l.text === text))]!;
    // The container sleeps 0.8 s between them: lines arrive as written, not all at the end.
    assert.ok(arrival("live 1") - arrival("start") >= 300, "start came before the sleep");
    assert.ok(arrival("bye") - arrival("live 1") >= 300, "live 1 came before the sleep");
  });

  it("follow: nothing lost or repeated at exit — a burst, then a long unterminated line (its pieces share a time)", async () => {
    // The engine's follower drops what json-file writes at exit (moby/moby#43860): here the
    // whole 40 KiB unterminated line. streamDockerLogs reads it again after the exit.
    const long = mixedLine(40 * 1024);
    const id = runDetached(TEST_IMAGE, "sh", "-c", 'sleep 0.3; i=0; while [ $i -lt 300 ]; do i=$((i+1)); echo "burst $i"; echo "e$i" >&2; done; printf "%s" "$1"', "sh", long);
    const { batches } = await collect(streamDockerLogs(docker, id, false, { tail: 0, timestamps: true, follow: true }, new AbortController().signal));
    const lines = batches.flatMap((b) => b.lines);
    assert.deepEqual(batches.at(-1)!.end, { reason: LogEndReason.CONTAINER_EXITED, detail: `container ${id} exited with code 0` });
    const outs = lines.filter((l) => l.stream === LogStream.STDOUT);
    const errs = lines.filter((l) => l.stream === LogStream.STDERR);
    const burst = Array.from({ length: 300 }, (_, i) => `burst ${i + 1}\n`).join("");
    assert.deepEqual(reassemble(outs).toString(), burst + long);
    assert.deepEqual(reassemble(errs).toString(), Array.from({ length: 300 }, (_, i) => `e${i + 1}\n`).join(""));
    assert.equal(outs.at(-1)!.unterminated, true);
  });

  it("follow with tail: starts at the last N, then live, then what the follower missed", async () => {
    const id = runDetached(TEST_IMAGE, "sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo line $i; done; sleep 0.8; echo live; printf end");
    await new Promise((r) => setTimeout(r, 400));
    const { batches } = await collect(streamDockerLogs(docker, id, false, { tail: 3, timestamps: false, follow: true }, new AbortController().signal));
    assert.deepEqual(batches.flatMap((b) => b.lines).map(plain), [
      line(LogStream.STDOUT, "line 10"),
      line(LogStream.STDOUT, "line 11"),
      line(LogStream.STDOUT, "line 12"),
      line(LogStream.STDOUT, "live"),
      line(LogStream.STDOUT, "end", { unterminated: true }),
    ]);
    assert.equal(batches.at(-1)!.end!.reason, LogEndReason.CONTAINER_EXITED);
  });

  it("follow: a removed container ends the stream with CONTAINER_REMOVED", async () => {
    const id = runDetached(TEST_IMAGE, "sh", "-c", "while true; do echo tick; sleep 0.1; done");
    const it = streamDockerLogs(docker, id, false, { tail: 0, timestamps: false, follow: true }, new AbortController().signal)[Symbol.asyncIterator]();
    const first = await it.next();
    assert.equal(first.done, false);
    d.docker("rm", "-f", id);
    let last: LogBatch | undefined;
    for (let r = await it.next(); !r.done; r = await it.next()) last = r.value;
    assert.equal(last?.end?.reason, LogEndReason.CONTAINER_REMOVED, JSON.stringify(last?.end));
  });

  it("aborting a follow stream ends it quietly and closes the connection to the engine", async () => {
    const proxy = await engineProxy(d.socketPath, dir.path);
    try {
      const viaProxy = new Dockerode({ socketPath: proxy.socketPath });
      const id = runDetached(TEST_IMAGE, "sh", "-c", "while true; do echo tick; sleep 0.1; done");
      const ac = new AbortController();
      const it = streamDockerLogs(viaProxy, id, false, { tail: 0, timestamps: false, follow: true }, ac.signal)[Symbol.asyncIterator]();
      const first = await it.next();
      assert.equal(first.done, false);
      assert.equal(proxy.open(), 2, "one connection, both legs");
      const t = Date.now();
      ac.abort();
      for (let r = await it.next(); !r.done; r = await it.next()) assert.equal(r.value.end, undefined, "no end batch after an abort");
      assert.ok(Date.now() - t < 1000, "ended promptly");
      for (let i = 0; i < 50 && proxy.open() > 0; i++) await new Promise((r) => setTimeout(r, 20));
      assert.equal(proxy.open(), 0, "the HTTP stream to the engine was closed");
      d.docker("rm", "-f", id);
    } finally {
      await proxy.cut();
    }
  });

  it("an engine that goes away mid-follow ends the stream with RUNTIME_ERROR", async () => {
    const proxy = await engineProxy(d.socketPath, dir.path);
    const viaProxy = new Dockerode({ socketPath: proxy.socketPath });
    const id = runDetached(TEST_IMAGE, "sh", "-c", "while true; do echo tick; sleep 0.1; done");
    const it = streamDockerLogs(viaProxy, id, false, { tail: 0, timestamps: false, follow: true }, new AbortController().signal)[Symbol.asyncIterator]();
    assert.equal((await it.next()).done, false);
    await proxy.cut();
    let last: LogBatch | undefined;
    for (let r = await it.next(); !r.done; r = await it.next()) last = r.value;
    assert.equal(last?.end?.reason, LogEndReason.RUNTIME_ERROR);
    assert.match(last!.end!.detail, /^the log stream from the engine broke: /);
    d.docker("rm", "-f", id);
  });

  it("a missing container is NOT_FOUND; an unreachable engine is UNAVAILABLE", async () => {
    const missing = "0123456789ab-no-such-container";
    await assert.rejects(fetchDockerLogs(docker, missing, false, { tail: 0, timestamps: false }), (e: unknown) => {
      assert.ok(e instanceof ConnectError);
      assert.equal(e.code, Code.NotFound);
      assert.equal(e.rawMessage, `docker: no such container: ${missing}`);
      return true;
    });
    await assert.rejects(collect(streamDockerLogs(docker, missing, false, { tail: 0, timestamps: false, follow: true }, new AbortController().signal)), (e: unknown) => e instanceof ConnectError && e.code === Code.NotFound);
    const nowhere = new Dockerode({ socketPath: join(dir.path, "no-engine.sock") });
    await assert.rejects(fetchDockerLogs(nowhere, "x", false, { tail: 0, timestamps: false }), (e: unknown) => {
      assert.ok(e instanceof ConnectError);
      assert.equal(e.code, Code.Unavailable);
      assert.match(e.rawMessage, /^docker engine unreachable: connect ENOENT .*no-engine\.sock/);
      return true;
    });
  });
});
