import { afterAll, beforeAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync, rmSync } from "node:fs";
import { createServer, connect, type Server, type Socket } from "node:net";
import { join } from "node:path";
import { promisify } from "node:util";
import { Code, ConnectError } from "@connectrpc/connect";
import { ContainerState, HealthStatus, type Container, type RuntimeEvent } from "../../gen/fleetlet/agent/v1/runtime_pb.js";
import type { ContainerRuntime } from "../../agent/runtime/container-runtime.js";
import { createDockerRuntime } from "../../agent/runtime/docker/docker-runtime.js";
import { causeOf } from "../../agent/runtime/container-instances.js";
import { TEST_IMAGE, TestDockerd, dockerdSkipReason } from "../helpers/dockerd.js";
import { mustRunInCi } from "../helpers/root.js";
import { tempDir } from "../helpers/temp-dir.js";

// The Docker runtime against a private real dockerd (testing.md "Docker"): discovery, events
// (create/start/pause/unpause/die/oom/destroy/health), stats against `docker stats`, pause,
// an engine down at start, a connection cut without an engine restart (the engine's replay)
// and an engine restart during which containers change (only the relist diff can tell).

const skip = mustRunInCi(dockerdSkipReason());
const execFileAsync = promisify(execFile);

/** Every event a runtime emitted, and waiting for the ones a test expects. */
class EventRecorder {
  readonly events: RuntimeEvent[] = [];
  private waiters = new Set<() => void>();
  constructor(rt: ContainerRuntime) {
    rt.on("event", (e: RuntimeEvent) => {
      this.events.push(e);
      for (const w of this.waiters) w();
    });
  }
  get mark(): number {
    return this.events.length;
  }
  since(mark: number): RuntimeEvent[] {
    return this.events.slice(mark);
  }
  async waitFor(what: string, pred: (e: RuntimeEvent) => boolean, from = 0, timeoutMs = 20_000): Promise<RuntimeEvent> {
    const found = () => this.events.slice(from).find(pred);
    const now = found();
    if (now) return now;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.delete(check);
        reject(new Error(`no ${what} event in ${timeoutMs} ms; got: ${this.since(from).map((e) => `${e.name}:${e.action}`).join(", ")}`));
      }, timeoutMs);
      const check = () => {
        const e = found();
        if (!e) return;
        clearTimeout(timer);
        this.waiters.delete(check);
        resolve(e);
      };
      this.waiters.add(check);
    });
  }
}

function once(rt: ContainerRuntime, name: "connected" | "disconnected", timeoutMs = 30_000): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no '${name}' in ${timeoutMs} ms (last error: ${rt.info().lastError})`)), timeoutMs);
    rt.once(name, () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

const is = (name: string, action: string) => (e: RuntimeEvent) => e.name === name && e.action === action;

function byName(rt: ContainerRuntime, name: string): Container | undefined {
  return rt.containers().find((c) => c.name === name);
}

async function rejectsWith(p: Promise<unknown>, code: Code, pattern?: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof ConnectError, `not a ConnectError: ${String(e)}`);
    assert.equal(e.code, code, e.message);
    if (pattern) assert.match(e.rawMessage, pattern);
    return true;
  });
}

/** "1.5MiB" (docker CLI units) → bytes. */
function cliBytes(text: string): number {
  const m = /^([\d.]+)\s*([KMGT]?i?B)$/.exec(text.trim());
  assert.ok(m, `unparsable size ${text}`);
  const unit = { B: 1, KiB: 1024, MiB: 1024 ** 2, GiB: 1024 ** 3, TiB: 1024 ** 4, kB: 1e3, MB: 1e6, GB: 1e9 }[m[2]!] ?? NaN;
  return Number(m[1]) * unit;
}

/**
 * A unix-socket proxy in front of the engine: cut() drops every connection and stops
 * listening (the runtime sees the engine go away while dockerd keeps running and keeps its
 * event buffer); restore() listens again.
 */
class SocketProxy {
  private server: Server | undefined;
  private readonly sockets = new Set<Socket>();
  constructor(readonly path: string, private readonly target: string) {}
  async listen(): Promise<void> {
    if (existsSync(this.path)) rmSync(this.path);
    const server = createServer((client) => {
      const upstream = connect(this.target);
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on("close", () => this.sockets.delete(s));
        s.on("error", () => undefined);
      }
      client.pipe(upstream).on("error", () => undefined);
      upstream.pipe(client).on("error", () => undefined);
      client.on("close", () => upstream.destroy());
      upstream.on("close", () => client.destroy());
    });
    this.server = server;
    await new Promise<void>((resolve) => server.listen(this.path, resolve));
  }
  async cut(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    for (const s of this.sockets) s.destroy();
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

describe.skipIf(skip)("docker runtime against a real dockerd", () => {
  let d: TestDockerd;
  let rt: ContainerRuntime;
  let rec: EventRecorder;
  const others: ContainerRuntime[] = [];
  const scratch = tempDir("docker-runtime");
  const run = (...args: string[]) => d.docker("run", "-d", "--network", "none", ...args);

  beforeAll(async () => {
    d = await TestDockerd.start();
  });

  afterAll(async () => {
    await rt?.close();
    for (const o of others) await o.close();
    await d?.stop();
    scratch.remove();
  });

  it("engine down at start: start() resolves, calls are UNAVAILABLE; engine up: connected and listing", async () => {
    await d.stopEngine();
    rt = createDockerRuntime({ host: d.host });
    rec = new EventRecorder(rt);
    const t0 = Date.now();
    await rt.start();
    assert.ok(Date.now() - t0 < 5_000, "start() does not wait for the engine");
    const down = rt.info();
    assert.equal(down.connected, false);
    assert.equal(down.name, "docker");
    assert.equal(down.endpoint, d.host);
    assert.notEqual(down.lastError, "");
    assert.throws(() => rt.containers(), (e: unknown) => e instanceof ConnectError && e.code === Code.Unavailable);
    await rejectsWith(rt.stats("anything"), Code.Unavailable);
    await rejectsWith(rt.health("anything"), Code.Unavailable);
    await rejectsWith(rt.pause("anything"), Code.Unavailable);

    const connected = once(rt, "connected");
    await d.startEngine();
    await connected;
    const up = rt.info();
    assert.equal(up.connected, true);
    assert.equal(up.lastError, "");
    assert.match(up.version, /^\d+\.\d+/);
    assert.match(up.apiVersion, /^1\.\d+$/);
    assert.equal(up.apiVersion, d.docker("version", "--format", "{{.Server.APIVersion}}"), "the engine's API version (below our cap)");
    assert.ok(up.connectedSince);
    assert.equal(up.reconnects, 0, "a first connection is not a reconnect");
    assert.deepEqual(rt.containers(), []);
  });

  it("discovers running, exited (exit code) and paused containers with their fields", async () => {
    const webId = run("--name", "web", "-t", "--label", "com.docker.compose.project=shop", "--label", "com.docker.compose.service=web", "--init", TEST_IMAGE, "sleep", "3600");
    run("--name", "exited3", TEST_IMAGE, "sh", "-c", "exit 3");
    run("--name", "paused", "--init", TEST_IMAGE, "sleep", "3600");
    d.docker("pause", "paused");
    d.docker("wait", "exited3");
    // A runtime that starts now finds them by listing.
    const fresh = createDockerRuntime({ host: d.host });
    others.push(fresh);
    await fresh.start();
    assert.equal(fresh.info().connected, true);
    assert.equal(fresh.info().containers, 3);
    const web = byName(fresh, "web")!;
    assert.equal(web.externalId, webId);
    assert.equal(web.id, `docker-${webId.slice(0, 12)}`);
    assert.equal(web.state, ContainerState.RUNNING);
    assert.equal(web.image, TEST_IMAGE);
    assert.equal(web.tty, true);
    assert.equal(web.composeProject, "shop");
    assert.equal(web.composeService, "web");
    assert.equal(web.pid, Number(d.docker("inspect", "-f", "{{.State.Pid}}", "web")));
    assert.equal(web.exitCode, undefined);
    assert.ok(web.startedAt && !web.finishedAt);
    const exited = byName(fresh, "exited3")!;
    assert.equal(exited.state, ContainerState.EXITED);
    assert.equal(exited.exitCode, 3);
    assert.equal(exited.pid, undefined);
    assert.ok(exited.finishedAt);
    const paused = byName(fresh, "paused")!;
    assert.equal(paused.state, ContainerState.PAUSED);
    assert.ok(paused.pid !== undefined && paused.pid > 0);
    // The long-running runtime saw them come by events, and agrees.
    await rec.waitFor("pause", is("paused", "pause"));
    assert.deepEqual(
      rt.containers().map((c) => [c.name, c.state, c.exitCode]).sort(),
      fresh.containers().map((c) => [c.name, c.state, c.exitCode]).sort(),
    );
    await fresh.close();
  });

  it("health() without a healthcheck and with --no-healthcheck: has_healthcheck false, NONE", async () => {
    run("--name", "nohc", "--no-healthcheck", "--init", TEST_IMAGE, "sleep", "3600");
    for (const name of ["web", "nohc"]) {
      const h = await rt.health(name);
      assert.equal(h.hasHealthcheck, false, name);
      assert.equal(h.status, HealthStatus.NONE, name);
    }
    await rejectsWith(rt.health("no-such-container"), Code.NotFound, /external_id/);
    // Docker's "/name" form of an unknown name: NOT_FOUND too (it once crashed the agent).
    await rejectsWith(rt.health("/no-such-container"), Code.NotFound, /external_id/);
  });

  it("engine events: a daemon reload (SIGHUP to this test's dockerd) is a node event; not in swarm mode, RuntimeInfo says there are no services", async () => {
    const info = rt.info();
    assert.deepEqual(info.resourceTypes, ["container", "node"]);
    assert.ok(
      info.resourceNotes.includes("service: the docker engine is not in swarm mode (Swarm.LocalNodeState inactive): it has no services to report"),
      info.resourceNotes.join("\n"),
    );
    assert.ok(info.resourceNotes.some((n) => /^node: .*no disk-space events/.test(n)), "the engine reports no disk-space events: said, not implied");
    const engineId = d.docker("info", "--format", "{{.ID}}");
    const mark = rec.mark;
    // Only the test's own engine (its pid): dockerd reloads its configuration on SIGHUP.
    assert.ok(d.pid, "the test dockerd's pid");
    const before = Date.now();
    process.kill(d.pid, "SIGHUP");
    const reload = await rec.waitFor("daemon reload", (e) => e.resourceType === "node" && e.action === "reload", mark);
    assert.equal(reload.runtime, "docker");
    assert.equal(reload.externalId, engineId);
    assert.equal(reload.instanceId, "", "an engine is not an instance");
    assert.equal(reload.attributes.engine_event, "daemon");
    assert.deepEqual(reload.labels, {});
    assert.ok(reload.timestamp && Math.abs(Number(reload.timestamp.seconds) * 1000 - before) < 10_000, "stamped by the engine, now");
    assert.deepEqual(rec.since(mark).filter((e) => e.resourceType === "container"), [], "no container event from a reload");
  });

  it("events: create, start, pause, unpause, die with exit code, destroy — in order, containers() up to date", async () => {
    const mark = rec.mark;
    const id = run("--name", "ev", "--label", "team=core", TEST_IMAGE, "sh", "-c", 'trap "exit 3" TERM; sleep 3600 & wait');
    await rec.waitFor("start", is("ev", "start"), mark);
    d.docker("pause", "ev");
    await rec.waitFor("pause", is("ev", "pause"), mark);
    assert.equal(byName(rt, "ev")?.state, ContainerState.PAUSED, "containers() reflects the event when it is emitted");
    d.docker("unpause", "ev");
    await rec.waitFor("unpause", is("ev", "unpause"), mark);
    d.docker("kill", "-s", "TERM", "ev");
    const die = await rec.waitFor("die", is("ev", "die"), mark);
    assert.equal(die.exitCode, 3);
    assert.equal(byName(rt, "ev")?.exitCode, 3);
    assert.equal(byName(rt, "ev")?.state, ContainerState.EXITED);
    d.docker("rm", "ev");
    await rec.waitFor("destroy", is("ev", "destroy"), mark);
    assert.equal(byName(rt, "ev"), undefined);

    const mine = rec.since(mark).filter((e) => e.externalId === id);
    assert.deepEqual(
      mine.map((e) => e.action).filter((a) => a !== "kill"),
      ["create", "start", "pause", "unpause", "die", "destroy"],
    );
    for (const e of mine) {
      assert.equal(e.runtime, "docker");
      assert.equal(e.resourceType, "container");
      assert.equal(e.instanceId, `docker-${id.slice(0, 12)}`);
      assert.equal(e.synthetic, false);
      assert.deepEqual(e.labels, { team: "core" });
      const ms = Number(e.timestamp!.seconds) * 1000;
      assert.ok(Math.abs(ms - Date.now()) < 60_000, `event time ${new Date(ms).toISOString()} is now, not decades away`);
    }
    const times = mine.map((e) => e.timestamp!.seconds * 1_000_000_000n + BigInt(e.timestamp!.nanos));
    assert.deepEqual([...times].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)), times, "in the order they happened");
  });

  it("OOM kill: an oom event, die 137, oom_killed true", async () => {
    const mark = rec.mark;
    run("--name", "oom", "-m", "8m", "--memory-swap", "8m", TEST_IMAGE, "sh", "-c", "head -c 50000000 /dev/zero | tail");
    await rec.waitFor("oom", is("oom", "oom"), mark);
    const die = await rec.waitFor("die", is("oom", "die"), mark);
    assert.equal(die.exitCode, 137);
    // The listed state follows the events; the engine may report the OOM after the die.
    // Up to 15 s: on a loaded machine the engine took more than 5 s to list it (a CI run).
    for (let i = 0; i < 300 && byName(rt, "oom")?.oomKilled !== true; i++) await new Promise((r) => setTimeout(r, 50));
    const c = byName(rt, "oom")!;
    assert.equal(c.oomKilled, true);
    assert.equal(c.exitCode, 137);
    assert.equal(c.state, ContainerState.EXITED);
  });

  it("docker stop (exit 137 after the engine's SIGKILL) is a requested stop; an exit on its own is not; a restart clears it", async () => {
    const mark = rec.mark;
    // busybox sleep as pid 1 ignores SIGTERM: `docker stop -t 1` ends it with SIGKILL, 137.
    run("--name", "stopped-by-user", TEST_IMAGE, "sleep", "1000");
    run("--name", "exits-alone", TEST_IMAGE, "sh", "-c", "sleep 1; exit 3");
    await rec.waitFor("start", is("stopped-by-user", "start"), mark);
    d.docker("stop", "-t", "1", "stopped-by-user");
    const die = await rec.waitFor("die", is("stopped-by-user", "die"), mark);
    assert.equal(die.exitCode, 137);
    await rec.waitFor("die", is("exits-alone", "die"), mark);
    for (let i = 0; i < 100 && byName(rt, "stopped-by-user")?.state !== ContainerState.EXITED; i++) await new Promise((r) => setTimeout(r, 50));
    const stopped = byName(rt, "stopped-by-user")!;
    assert.equal(stopped.exitCode, 137);
    assert.equal(stopped.stopRequested, true);
    assert.equal(causeOf(undefined, stopped), "request", "metered stop-user");
    const alone = byName(rt, "exits-alone")!;
    assert.equal(alone.exitCode, 3);
    assert.equal(alone.stopRequested, false);
    assert.equal(causeOf(undefined, alone), "crash", "metered stop-crash");
    const restarted = rec.mark;
    d.docker("start", "stopped-by-user");
    await rec.waitFor("start", is("stopped-by-user", "start"), restarted);
    for (let i = 0; i < 100 && byName(rt, "stopped-by-user")?.state !== ContainerState.RUNNING; i++) await new Promise((r) => setTimeout(r, 50));
    assert.equal(byName(rt, "stopped-by-user")!.stopRequested, false);
    d.docker("rm", "-f", "stopped-by-user", "exits-alone");
  });

  it("health transitions: unhealthy → healthy → unhealthy as the probe flips; health() follows", async () => {
    const mark = rec.mark;
    run("--name", "hc", "--init", "--health-cmd", "test -f /tmp/ok", "--health-interval", "1s", "--health-retries", "1", TEST_IMAGE, "sleep", "3600");
    const first = await rec.waitFor("unhealthy", (e) => e.name === "hc" && e.action === "health_status", mark);
    assert.equal(first.healthStatus, "unhealthy");
    let h = await rt.health("hc");
    assert.equal(h.hasHealthcheck, true);
    assert.equal(h.status, HealthStatus.UNHEALTHY);
    assert.ok(h.failingStreak >= 1);
    assert.equal(h.lastExitCode, 1);
    assert.ok(h.lastProbeAt);
    assert.equal(byName(rt, "hc")?.health?.status, HealthStatus.UNHEALTHY);

    d.docker("exec", "hc", "touch", "/tmp/ok");
    const healthy = await rec.waitFor("healthy", (e) => e.name === "hc" && e.healthStatus === "healthy", mark);
    assert.equal(healthy.action, "health_status");
    h = await rt.health("hc");
    assert.equal(h.status, HealthStatus.HEALTHY);
    assert.equal(h.failingStreak, 0);
    assert.equal(h.lastExitCode, 0);

    const afterHealthy = rec.mark;
    d.docker("exec", "hc", "rm", "/tmp/ok");
    await rec.waitFor("unhealthy again", (e) => e.name === "hc" && e.healthStatus === "unhealthy", afterHealthy);
    assert.equal((await rt.health("hc")).status, HealthStatus.UNHEALTHY);
    // Only lifecycle events: the probes' exec_* events are not followed.
    assert.ok(!rec.since(mark).some((e) => e.action.startsWith("exec_")));
  });

  it("stats of a CPU-burning container agree with `docker stats`; a one-off sample already has CPU%", async () => {
    run("--name", "burn", "-m", "256m", TEST_IMAGE, "sh", "-c", "while :; do :; done");
    // Capped at half a CPU by the kernel: a value both sides must land near, whatever else runs.
    run("--name", "half", "--cpus", "0.5", TEST_IMAGE, "sh", "-c", "while :; do :; done");
    await new Promise((r) => setTimeout(r, 1000));
    // A first sample: the engine's two reads (precpu_stats), as `docker stats --no-stream` takes
    // them, over the same second.
    const cliHalf = execFileAsync("docker", ["-H", d.host, "stats", "--no-stream", "--format", "{{.CPUPerc}}", "half"], { encoding: "utf8" });
    const half = await rt.stats("half");
    const cliHalfCpu = Number((await cliHalf).stdout.trim().replace("%", ""));
    assert.ok(half.cpuPercent !== undefined, `a first sample has CPU% (${half.unavailable.join("; ")})`);
    // The kernel caps it at 50% (a busy shared machine may give it less, never more).
    assert.ok(half.cpuPercent > 0 && half.cpuPercent <= 65, `--cpus 0.5: at most ≈ 50%, got ${half.cpuPercent.toFixed(1)}%`);
    assert.ok(Math.abs(half.cpuPercent - cliHalfCpu) <= 15, `ours ${half.cpuPercent.toFixed(1)}% vs docker stats ${cliHalfCpu}%`);
    d.docker("rm", "-f", "half"); // the burner below gets the CPU to itself
    const first = await rt.stats("burn");
    assert.ok(first.cpuPercent !== undefined && first.cpuPercent > 0 && first.cpuPercent <= 110, `first sample: one busy core, at most ≈ 100%, got ${first.cpuPercent}`);
    assert.ok(!first.unavailable.some((u) => u.startsWith("cpu_percent: ")));
    // The CLI samples over ~1 s; take ours (one-shot, against the previous sample) at the end of the same second.
    const cli = execFileAsync("docker", ["-H", d.host, "stats", "--no-stream", "--format", "{{.CPUPerc}}|{{.MemUsage}}", "burn"], { encoding: "utf8" });
    await new Promise((r) => setTimeout(r, 1000));
    const second = await rt.stats("burn");
    const [cpuText, memText] = (await cli).stdout.trim().split("|");
    const cliCpu = Number(cpuText!.replace("%", ""));
    const [cliUsage, cliLimit] = memText!.split(" / ");
    assert.ok(second.cpuPercent !== undefined, `second sample has CPU% (${second.unavailable.join("; ")})`);
    assert.ok(second.cpuPercent > 20 && second.cpuPercent <= 110, `one busy core ≈ 100%, got ${second.cpuPercent}`);
    assert.ok(Math.abs(second.cpuPercent - cliCpu) <= 40, `ours ${second.cpuPercent.toFixed(1)}% vs docker stats ${cliCpu}%`);
    assert.ok(second.cpuUsageNsec! > first.cpuUsageNsec!);
    const ws = Number(second.memoryWorkingSetBytes);
    const cliWs = cliBytes(cliUsage!);
    assert.ok(Math.abs(ws - cliWs) <= Math.max(512 * 1024, cliWs * 0.25), `working set ${ws} vs docker stats ${cliWs}`);
    assert.equal(second.memoryLimitBytes, 256n * 1024n * 1024n);
    assert.equal(Number(second.memoryLimitBytes), cliBytes(cliLimit!));
    assert.equal(second.memoryUnlimited, false);
    assert.equal(second.netRxBytes, undefined, "--network none: no network counters");
    assert.ok(second.unavailable.some((u) => u.startsWith("net_rx_bytes: ")));
    assert.ok(second.pids !== undefined && second.pids >= 1n);
    assert.equal(second.name, "burn");
    // No limit: unlimited, not the host's memory.
    const web = await rt.stats("web");
    assert.equal(web.memoryUnlimited, true);
    assert.equal(web.memoryLimitBytes, undefined);
    // Not running: unset with reasons.
    const exited = await rt.stats("exited3");
    assert.equal(exited.cpuUsageNsec, undefined);
    assert.ok(exited.unavailable.every((u) => u.endsWith("container is not running")));
    d.docker("rm", "-f", "burn");
  });

  it("pause / unpause (the docker standby driver): by name and id prefix; wrong state and unknown fail cleanly", async () => {
    const mark = rec.mark;
    const id = d.docker("inspect", "-f", "{{.Id}}", "web");
    await rt.pause("web");
    assert.equal(d.docker("inspect", "-f", "{{.State.Paused}}", "web"), "true");
    await rec.waitFor("pause", is("web", "pause"), mark);
    await rejectsWith(rt.pause("web"), Code.FailedPrecondition, /paused/);
    await rt.unpause(id.slice(0, 10));
    assert.equal(d.docker("inspect", "-f", "{{.State.Paused}}", "web"), "false");
    await rec.waitFor("unpause", is("web", "unpause"), mark);
    await rejectsWith(rt.unpause("web"), Code.FailedPrecondition, /not paused/);
    await rejectsWith(rt.pause("exited3"), Code.FailedPrecondition, /not running/);
    await rejectsWith(rt.pause("no-such-container"), Code.NotFound);
    await rejectsWith(rt.pause(""), Code.InvalidArgument, /^external_id: /);
  });

  it("logs go through docker-logs.ts by name (TTY from inspect); close() ends a following stream", async () => {
    run("--name", "talk", "--init", TEST_IMAGE, "sh", "-c", "echo out; echo err >&2; sleep 3600");
    const mine = createDockerRuntime({ host: d.host });
    others.push(mine);
    await mine.start();
    let fetched: Awaited<ReturnType<ContainerRuntime["fetchLogs"]>> = { lines: [], tty: false };
    for (let i = 0; i < 50 && fetched.lines.length < 2; i++) {
      fetched = await mine.fetchLogs("talk", { tail: 0, timestamps: false });
      if (fetched.lines.length < 2) await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(fetched.tty, false);
    assert.deepEqual(fetched.lines.map((l) => l.text).sort(), ["err", "out"]);
    assert.equal((await mine.fetchLogs("web", { tail: 0, timestamps: false })).tty, true, "web runs with -t");
    await rejectsWith(mine.fetchLogs("no-such-container", { tail: 0, timestamps: false }), Code.NotFound);

    const following = (async () => {
      const batches = [];
      for await (const b of mine.streamLogs("talk", { tail: 0, timestamps: false, follow: true }, new AbortController().signal)) batches.push(b);
      return batches;
    })();
    await new Promise((r) => setTimeout(r, 300));
    const t0 = Date.now();
    await mine.close();
    const batches = await following;
    assert.ok(Date.now() - t0 < 5_000, "close() ended the stream");
    assert.ok(batches.flatMap((b) => b.lines).some((l) => l.text === "out"));
    d.docker("rm", "-f", "talk");
  });

  it("a connection cut without an engine restart: the engine's replay tells what happened, once, as real events", async () => {
    // A second runtime behind a proxy we can cut; dockerd keeps running (and its event buffer).
    const proxy = new SocketProxy(join(scratch.path, "proxy.sock"), d.socketPath);
    await proxy.listen();
    const viaProxy = createDockerRuntime({ host: `unix://${proxy.path}` });
    others.push(viaProxy);
    const seen = new EventRecorder(viaProxy);
    await viaProxy.start();
    assert.equal(viaProxy.info().connected, true);
    const before = new Map(viaProxy.containers().map((c) => [c.name, c]));
    assert.ok(before.has("oom"));

    const disconnected = once(viaProxy, "disconnected");
    await proxy.cut();
    await disconnected;
    assert.throws(() => viaProxy.containers(), (e: unknown) => e instanceof ConnectError && e.code === Code.Unavailable);
    const mark = seen.mark;
    const r1 = run("--name", "r1", TEST_IMAGE, "sh", "-c", "exit 4");
    d.docker("wait", "r1");
    d.docker("rm", "oom");
    const reconnected = once(viaProxy, "connected");
    await proxy.listen();
    await reconnected;
    const got = seen.since(mark);
    const summary = got.map((e) => `${e.name}:${e.action}${e.synthetic ? "*" : ""}`);
    assert.deepEqual(
      summary.filter((s) => s.startsWith("r1:")),
      ["r1:create", "r1:start", "r1:die"],
      summary.join(", "),
    );
    assert.equal(got.find((e) => e.externalId === r1 && e.action === "die")?.exitCode, 4);
    assert.deepEqual(summary.filter((s) => s.startsWith("oom:")), ["oom:destroy"], summary.join(", "));
    assert.equal(got.length, 4, `nothing else: ${summary.join(", ")}`);
    assert.ok(got.every((e) => !e.synthetic), "the engine still had these events: real ones, not made up");
    assert.equal(viaProxy.info().reconnects, 1);
    assert.equal(byName(viaProxy, "r1")?.exitCode, 4);
    assert.equal(byName(viaProxy, "oom"), undefined);
    await proxy.cut();
    await viaProxy.close();
  });

  it("dockerd restarts while a container is removed and another started: destroy and create/start once each, nothing invented", async () => {
    // A quiet engine: only containers this test reasons about. Running ones would (truly) die
    // in the restart; leave exited ones, which a restart does not change.
    const removing = rec.mark;
    for (const c of rt.containers()) if (c.state !== ContainerState.EXITED && c.state !== ContainerState.CREATED) d.docker("rm", "-f", c.externalId);
    const a = run("--name", "gone-a", TEST_IMAGE, "true");
    d.docker("wait", "gone-a");
    await rec.waitFor("die of a", (e) => e.externalId === a && e.action === "die", removing);
    for (const name of ["web", "paused", "nohc", "hc"]) await rec.waitFor(`destroy ${name}`, is(name, "destroy"), removing);
    const unchanged = rt.containers().filter((c) => c.externalId !== a);
    assert.ok(unchanged.length >= 2, "exited containers stay through the restart");

    const disconnected = once(rt, "disconnected");
    await d.stopEngine();
    await disconnected;
    const mark = rec.mark;
    // Change things on another socket, where the runtime cannot see them.
    const other = join(scratch.path, "other.sock");
    await d.startEngine(other);
    const onOther = (...args: string[]) =>
      execFileAsync("docker", ["-H", `unix://${other}`, ...args], { encoding: "utf8" }).then((r) => r.stdout.trim());
    await onOther("rm", "-f", a);
    const b = await onOther("run", "-d", "--network", "none", "--init", "--name", "new-b", TEST_IMAGE, "sleep", "3600");
    await d.stopEngine();
    const reconnected = once(rt, "connected");
    await d.startEngine();
    await reconnected;

    const got = rec.since(mark);
    const summary = got.map((e) => `${e.name}:${e.action}`);
    assert.deepEqual(got.filter((e) => e.externalId === a).map((e) => e.action), ["destroy"], summary.join(", "));
    // b was started, then stopped by the second engine shutdown: the diff says so, once each.
    const bActions = got.filter((e) => e.externalId === b).map((e) => e.action);
    assert.deepEqual(bActions, ["create", "start", "die"], summary.join(", "));
    assert.equal(got.length, 4, `no events for containers that did not change: ${summary.join(", ")}`);
    assert.ok(got.every((e) => e.synthetic), "made from the relist: the restarted engine has no event buffer");
    const bNow = rt.containers().find((c) => c.externalId === b)!;
    assert.equal(bNow.state, ContainerState.EXITED);
    assert.equal(got.find((e) => e.action === "die")?.exitCode, bNow.exitCode);
    for (const c of unchanged) assert.deepEqual(rt.containers().find((x) => x.externalId === c.externalId)?.state, c.state);
    const info = rt.info();
    assert.equal(info.connected, true);
    assert.equal(info.reconnects, 1);
    assert.equal(info.containers, rt.containers().length);
  });
});
