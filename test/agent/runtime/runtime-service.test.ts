import { afterAll, beforeAll, beforeEach, describe, it } from "vitest";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import {
  ContainerState,
  LogEndReason,
  RuntimeEventSchema,
  RuntimeService,
  WatchRuntimeEventsResponseType as T,
  type WatchRuntimeEventsResponse,
} from "../../../gen/fleetlet/agent/v1/runtime_pb.js";
import { RuntimeEventLog } from "../../../agent/runtime/runtime-event-log.js";
import { createRuntimeService, WATCH_QUEUE_LIMIT } from "../../../agent/runtime/runtime-service.js";
import { RuntimeSet } from "../../../agent/runtime/runtime-set.js";
import { parseHostPort } from "../../../lib/listen-address.js";
import { createLogger } from "../../../lib/rpc/logger.js";
import { startGrpcServer, type RunningGrpcServer } from "../../../lib/rpc/grpc-server.js";
import { createGrpcJsTransport } from "../../../lib/rpc/grpc-transport.js";
import { serviceRegistration } from "../../../lib/rpc/service-adapter.js";
import { FakeRuntime, logLine } from "../../helpers/fake-runtime.js";

// RuntimeService over fake runtimes, through a real gRPC server: the parts that are the same
// for every runtime (selection, validation, cursors, resync, stats fan-out, log relay).

let server: RunningGrpcServer;
let transport: ReturnType<typeof createGrpcJsTransport>;
let client: Client<typeof RuntimeService>;
let docker: FakeRuntime;
let kube: FakeRuntime;
let log: RuntimeEventLog;

beforeAll(async () => {
  docker = new FakeRuntime("docker");
  kube = new FakeRuntime("kubernetes");
  log = new RuntimeEventLog("inc1", 64);
  for (const r of [docker, kube]) r.on("event", (e) => log.append(e));
  server = await startGrpcServer({
    listen: parseHostPort("127.0.0.1:0"),
    logger: createLogger("test", "silent"),
    services: [serviceRegistration(RuntimeService, createRuntimeService(new RuntimeSet([docker, kube]), log))],
  });
  transport = createGrpcJsTransport(server.address);
  client = createClient(RuntimeService, transport);
});

afterAll(async () => {
  transport.close();
  await server.close(1000);
});

beforeEach(() => {
  for (const r of [docker, kube]) {
    r.known.clear();
    r.connected = true;
    r.statsDelayMs.clear();
  }
});

async function rejectsWith(p: Promise<unknown>, code: Code, message: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    const c = ConnectError.from(e);
    assert.equal(c.code, code, `${Code[c.code]}: ${c.rawMessage}`);
    assert.match(c.rawMessage, message);
    return true;
  });
}

/** Reads a watch stream message by message. */
function reader(stream: AsyncIterable<WatchRuntimeEventsResponse>) {
  const it = stream[Symbol.asyncIterator]();
  return {
    async next(): Promise<WatchRuntimeEventsResponse> {
      const r = await it.next();
      assert.ok(!r.done, "stream ended");
      return r.value;
    },
  };
}

describe("RuntimeService", () => {
  it("GetRuntimeInfo and ListContainers: all runtimes, one, running only, a down one", async () => {
    docker.put({ externalId: "a1", state: ContainerState.RUNNING });
    docker.put({ externalId: "a2", state: ContainerState.EXITED, exitCode: 3 });
    kube.put({ externalId: "ns/p1", state: ContainerState.RUNNING });
    const info = await client.getRuntimeInfo({});
    assert.deepEqual(info.runtimes.map((r) => [r.name, r.connected, r.containers]), [["docker", true, 2], ["kubernetes", true, 1]]);
    assert.equal((await client.listContainers({})).containers.length, 3);
    assert.deepEqual((await client.listContainers({ runtime: "docker", runningOnly: true })).containers.map((c) => c.externalId), ["a1"]);
    kube.connected = false;
    const partial = await client.listContainers({});
    assert.deepEqual(partial.containers.map((c) => c.externalId).sort(), ["a1", "a2"]);
    assert.deepEqual(partial.unavailable, ["kubernetes: kubernetes is down"]);
    await rejectsWith(client.listContainers({ runtime: "kubernetes" }), Code.Unavailable, /kubernetes is down/);
  });

  it("bad input names the field; an unknown container is NOT_FOUND", async () => {
    await rejectsWith(client.listContainers({ runtime: "podman" }), Code.InvalidArgument, /^runtime: must be one of docker, kubernetes/);
    await rejectsWith(client.getContainerStats({ runtime: "docker", externalId: "" }), Code.InvalidArgument, /^external_id: is required/);
    await rejectsWith(client.getContainerStats({ runtime: "docker", externalId: "a\u0001" }), Code.InvalidArgument, /^external_id: must not contain control characters/);
    await rejectsWith(client.getContainerStats({ externalId: "a1" }), Code.InvalidArgument, /^runtime: is required when the agent has several runtimes/);
    await rejectsWith(client.getContainerHealth({ runtime: "docker", externalId: "nope" }), Code.NotFound, /nope/);
    await rejectsWith(client.watchRuntimeEvents({ cursor: "garbage" })[Symbol.asyncIterator]().next(), Code.InvalidArgument, /^cursor: /);
    await rejectsWith(client.listContainerStats({ perContainerTimeout: durationFromMs(0) }), Code.InvalidArgument, /^per_container_timeout: /);
  });

  it("a runtime not configured here is FAILED_PRECONDITION", async () => {
    const own = await startGrpcServer({
      listen: parseHostPort("127.0.0.1:0"),
      logger: createLogger("test", "silent"),
      services: [serviceRegistration(RuntimeService, createRuntimeService(new RuntimeSet([docker]), log))],
    });
    const t = createGrpcJsTransport(own.address);
    try {
      await rejectsWith(createClient(RuntimeService, t).listContainers({ runtime: "kubernetes" }), Code.FailedPrecondition, /not configured on this agent \(configured: docker\)/);
    } finally {
      t.close();
      await own.close(1000);
    }
  });

  it("WatchRuntimeEvents: SNAPSHOT, live events with cursors, resume after a cursor, filter by runtime", async () => {
    docker.put({ externalId: "w1", state: ContainerState.RUNNING });
    const ac = new AbortController();
    const r = reader(client.watchRuntimeEvents({ runtime: "docker" }, { signal: ac.signal }));
    const snap = await r.next();
    assert.equal(snap.type, T.SNAPSHOT);
    assert.deepEqual(snap.containers.map((c) => c.externalId), ["w1"]);
    kube.put({ externalId: "ns/x" }, "create"); // other runtime: filtered out
    docker.put({ externalId: "w2" }, "create");
    docker.put({ externalId: "w2", state: ContainerState.RUNNING }, "start");
    const e1 = await r.next();
    const e2 = await r.next();
    assert.deepEqual([e1.type, e1.event?.action, e1.event?.externalId], [T.EVENT, "create", "w2"]);
    assert.deepEqual([e2.type, e2.event?.action], [T.EVENT, "start"]);
    ac.abort();

    // Resume from the first event's cursor: exactly the events after it, then live.
    const ac2 = new AbortController();
    const r2 = reader(client.watchRuntimeEvents({ runtime: "docker", cursor: e1.cursor }, { signal: ac2.signal }));
    const again = await r2.next();
    assert.deepEqual([again.type, again.event?.action, again.cursor], [T.EVENT, "start", e2.cursor]);
    docker.drop("w1");
    const live = await r2.next();
    assert.deepEqual([live.event?.action, live.event?.externalId], ["destroy", "w1"]);
    ac2.abort();
  });

  it("WatchRuntimeEvents: resource_types filters events (live and resumed); without container the SNAPSHOT has no containers", async () => {
    docker.put({ externalId: "c1", state: ContainerState.RUNNING });
    const nodeEvent = (runtime: FakeRuntime, action: string, id: string) => create(RuntimeEventSchema, { action, runtime: runtime.name, externalId: id, name: id, resourceType: "node" });
    const serviceEvent = (runtime: FakeRuntime, action: string, id: string) => create(RuntimeEventSchema, { action, runtime: runtime.name, externalId: id, name: id, resourceType: "service" });
    const ac = new AbortController();
    const r = reader(client.watchRuntimeEvents({ resourceTypes: ["node", "service"] }, { signal: ac.signal }));
    const snap = await r.next();
    assert.equal(snap.type, T.SNAPSHOT);
    assert.deepEqual(snap.containers, [], "no containers asked for");
    docker.put({ externalId: "c2" }, "create"); // a container event: filtered out
    kube.emit("event", nodeEvent(kube, "not_ready", "node-1"));
    docker.emit("event", serviceEvent(docker, "create", "svc1"));
    const e1 = await r.next();
    const e2 = await r.next();
    assert.deepEqual([e1.event?.resourceType, e1.event?.action, e1.event?.externalId], ["node", "not_ready", "node-1"]);
    assert.deepEqual([e2.event?.resourceType, e2.event?.action, e2.event?.runtime], ["service", "create", "docker"]);
    ac.abort();

    // Resumed with only "node" (and one runtime): the backlog is filtered the same way.
    const ac2 = new AbortController();
    const r2 = reader(client.watchRuntimeEvents({ runtime: "kubernetes", resourceTypes: ["node"], cursor: snap.cursor }, { signal: ac2.signal }));
    const again = await r2.next();
    assert.deepEqual([again.event?.action, again.cursor], ["not_ready", e1.cursor]);
    docker.emit("event", nodeEvent(docker, "reload", "engine")); // another runtime
    kube.emit("event", nodeEvent(kube, "ready", "node-1"));
    const live = await r2.next();
    assert.deepEqual([live.event?.runtime, live.event?.action], ["kubernetes", "ready"]);
    ac2.abort();

    // With "container": the snapshot has the containers.
    const ac3 = new AbortController();
    const r3 = reader(client.watchRuntimeEvents({ runtime: "docker", resourceTypes: ["container"] }, { signal: ac3.signal }));
    assert.deepEqual((await r3.next()).containers.map((c) => c.externalId).sort(), ["c1", "c2"]);
    ac3.abort();
  });

  it("WatchRuntimeEvents: an unknown resource type is INVALID_ARGUMENT naming resource_types", async () => {
    await rejectsWith(client.watchRuntimeEvents({ resourceTypes: ["node", "pod"] })[Symbol.asyncIterator]().next(), Code.InvalidArgument, /^resource_types: must hold only container, node, service, got "pod"/);
    await rejectsWith(client.watchRuntimeEvents({ resourceTypes: [""] })[Symbol.asyncIterator]().next(), Code.InvalidArgument, /^resource_types: /);
  });

  it("a cursor from another incarnation or older than what is kept: RESYNC then SNAPSHOT", async () => {
    for (const cursor of ["other.5", `inc1.0`]) {
      // inc1.0 is older than the 64 events kept once more than 64 happened.
      for (let i = 0; i < 70; i++) docker.put({ externalId: `old${i}` }, "create");
      const ac = new AbortController();
      const r = reader(client.watchRuntimeEvents({ cursor }, { signal: ac.signal }));
      const first = await r.next();
      assert.equal(first.type, T.RESYNC, cursor);
      assert.equal(first.cursor, "", "a RESYNC carries no cursor to resume from");
      assert.match(first.resyncReason, cursor.startsWith("other") ? /another agent incarnation/ : /older than the 64 events kept/);
      const snap = await r.next();
      assert.equal(snap.type, T.SNAPSHOT);
      assert.equal(snap.containers.length, docker.known.size + kube.known.size);
      ac.abort();
    }
  });

  it("a client that falls behind gets RESYNC and a fresh SNAPSHOT, not a silent gap", async () => {
    const ac = new AbortController();
    const r = reader(client.watchRuntimeEvents({ runtime: "docker" }, { signal: ac.signal }));
    assert.equal((await r.next()).type, T.SNAPSHOT);
    // More events in one tick than a stream may queue.
    for (let i = 0; i <= WATCH_QUEUE_LIMIT + 10; i++) docker.emit("event", docker.event("restart", docker.put({ externalId: "busy" })));
    let m = await r.next();
    let events = 0;
    while (m.type === T.EVENT) {
      events++;
      m = await r.next();
    }
    assert.ok(events < WATCH_QUEUE_LIMIT + 11, `${events} events before the resync`);
    assert.equal(m.type, T.RESYNC);
    assert.match(m.resyncReason, /fell more than 1024 events behind/);
    const snap = await r.next();
    assert.equal(snap.type, T.SNAPSHOT);
    assert.ok(snap.containers.some((c) => c.externalId === "busy"));
    // Nothing the snapshot already holds comes again: the next event is the next new one.
    docker.put({ externalId: "later" }, "create");
    const next = await r.next();
    assert.deepEqual([next.type, next.event?.externalId], [T.EVENT, "later"]);
    assert.ok(Number(next.cursor.split(".")[1]) > Number(snap.cursor.split(".")[1]), "cursors only go forward");
    ac.abort();
  });

  it("a runtime that was down at the snapshot: RESYNC + SNAPSHOT with it when it is back", async () => {
    kube.put({ externalId: "ns/p" });
    kube.connected = false;
    const ac = new AbortController();
    const r = reader(client.watchRuntimeEvents({}, { signal: ac.signal }));
    const snap = await r.next();
    assert.ok(!snap.containers.some((c) => c.runtime === "kubernetes"));
    assert.deepEqual(snap.unavailable, ["kubernetes: kubernetes is down"], "the snapshot says what it lacks");
    // Asked for that runtime alone: UNAVAILABLE, not an empty snapshot that reads as "none".
    await rejectsWith(client.watchRuntimeEvents({ runtime: "kubernetes" })[Symbol.asyncIterator]().next(), Code.Unavailable, /kubernetes is down/);
    kube.comeBack();
    const resync = await r.next();
    assert.equal(resync.type, T.RESYNC);
    assert.match(resync.resyncReason, /kubernetes is reachable again/);
    const snap2 = await r.next();
    assert.ok(snap2.containers.some((c) => c.externalId === "ns/p"));
    ac.abort();
  });

  it("ListContainerStats: every running container, a slow one costs only its own timeout", async () => {
    for (let i = 0; i < 20; i++) docker.put({ externalId: `s${i}`, state: ContainerState.RUNNING });
    docker.put({ externalId: "stopped", state: ContainerState.EXITED });
    docker.statsDelayMs.set("s7", 10_000);
    const t0 = performance.now();
    const res = await client.listContainerStats({ runtime: "docker", perContainerTimeout: durationFromMs(300) });
    const ms = performance.now() - t0;
    assert.equal(res.stats.length, 19);
    assert.ok(!res.stats.some((s) => s.externalId === "stopped" || s.externalId === "s7"));
    assert.deepEqual(res.errors.map((e) => [e.externalId, e.code]), [["s7", "DEADLINE_EXCEEDED"]]);
    assert.ok(ms < 2000, `took ${ms} ms`);
  });

  it("logs: fetch and stream pass lines through; the stream ends with its reason", async () => {
    docker.put({ externalId: "l1", state: ContainerState.RUNNING });
    docker.logLines = [logLine("one"), logLine("two")];
    assert.deepEqual((await client.fetchContainerLogs({ runtime: "docker", externalId: "l1" })).lines.map((l) => l.text), ["one", "two"]);
    const got: string[] = [];
    let end: LogEndReason | undefined;
    for await (const m of client.streamContainerLogs({ runtime: "docker", externalId: "l1" })) {
      got.push(...m.lines.map((l) => l.text));
      if (m.endReason) end = m.endReason;
    }
    assert.deepEqual(got, ["one", "two"]);
    assert.equal(end, LogEndReason.END_OF_LOG);
  });
});
