import { afterEach, describe, it } from "vitest";
import assert from "node:assert/strict";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { ContainerState, HealthStatus, LogEndReason, type RuntimeEvent } from "../../../../gen/fleetlet/agent/v1/runtime_pb.js";
import type { LogBatch } from "../../../../agent/runtime/container-runtime.js";
import { createKubernetesRuntime, type KubernetesRuntime, type KubernetesRuntimeOptions } from "../../../../agent/runtime/kubernetes/kubernetes-runtime.js";
import { forbiddenStatus, KubeApiDouble, type KubeApiDoubleOptions } from "../../../helpers/kube-api-double.js";
import { tempDir } from "../../../helpers/temp-dir.js";

// biome-ignore lint/suspicious/noExplicitAny: fixture pods are raw JSON, read field by field
type Json = Record<string, any>;

interface Harness {
  double: KubeApiDouble;
  runtime: KubernetesRuntime;
  events: RuntimeEvent[];
  transitions: string[];
}

const open: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const close of open.splice(0).reverse()) await close();
});

async function harness(options: { double?: KubeApiDoubleOptions; token?: string; runtime?: Partial<KubernetesRuntimeOptions>; start?: boolean; down?: boolean } = {}): Promise<Harness> {
  const double = await KubeApiDouble.start(options.double);
  const dir = tempDir("kube");
  const kubeconfig = join(dir.path, "config");
  double.writeKubeconfig(kubeconfig, { token: options.token });
  const runtime = createKubernetesRuntime({ kubeconfig, backoff: { initialMs: 20, maxMs: 200 }, ...options.runtime });
  const events: RuntimeEvent[] = [];
  const transitions: string[] = [];
  runtime.on("event", (e: RuntimeEvent) => events.push(e));
  runtime.on("connected", () => transitions.push("connected"));
  runtime.on("disconnected", () => transitions.push("disconnected"));
  open.push(async () => {
    await runtime.close();
    await double.close();
    dir.remove();
  });
  if (options.down) await double.down();
  if (options.start !== false) await runtime.start();
  return { double, runtime, events, transitions };
}

async function waitFor(cond: () => boolean, what: string, timeoutMs = 5_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

async function rejectsWith(p: Promise<unknown> | (() => unknown), code: Code, message?: RegExp): Promise<ConnectError> {
  try {
    await (typeof p === "function" ? p() : p);
  } catch (e) {
    assert.ok(e instanceof ConnectError, `not a ConnectError: ${String(e)}`);
    assert.equal(e.code, code, `${Code[e.code]}: ${e.message}`);
    if (message) assert.match(e.message, message);
    return e;
  }
  assert.fail(`expected ${Code[code]}`);
}

/** "<action>[(exit)][:health] <external id>[ synthetic]" — an event in one string. */
const describeEvent = (e: RuntimeEvent) =>
  `${e.action}${e.exitCode !== undefined ? `(${e.exitCode})` : ""}${e.healthStatus ? `:${e.healthStatus}` : ""} ${e.externalId}${e.synthetic ? " synthetic" : ""}`;

const byName = (h: Harness, name: string) => h.runtime.containers().find((c) => c.name === name)!;

/** A new pod built from a fixture pod (new name and uid), as the API server would return it. */
function newPod(h: Harness, from: string, name: string, uid: string): Json {
  const p = h.double.fixturePod(from);
  p.metadata.name = name;
  p.metadata.uid = uid;
  return p;
}

async function collect(stream: AsyncIterable<LogBatch>, until?: (batches: LogBatch[]) => boolean): Promise<LogBatch[]> {
  const batches: LogBatch[] = [];
  for await (const b of stream) {
    batches.push(b);
    if (until?.(batches)) break;
  }
  return batches;
}

describe("Kubernetes runtime against the API double", () => {
  it("lists pods as containers with their controllers (a Deployment through its ReplicaSet, one GET per ReplicaSet)", async () => {
    const h = await harness();
    const info = h.runtime.info();
    assert.equal(info.connected, true);
    assert.equal(info.name, "kubernetes");
    assert.equal(info.endpoint, h.double.url);
    assert.equal(info.containers, 10);
    assert.ok(info.connectedSince);
    await waitFor(() => h.runtime.info().version === "v1.32.4", "the server version");

    const cs = h.runtime.containers();
    assert.deepEqual(cs.map((c) => c.externalId).sort(), [
      "default/api-typo-backoff",
      "default/api-typo-pull",
      "default/debug-shell",
      "kube-system/node-exporter-5kq7z",
      "shop/db-0",
      "shop/migrate-28871234-7fxkq",
      "shop/report-9z8xw",
      "shop/web-7d4b9c8f6-q8h2n",
      "shop/web-7d4b9c8f6-x2x9k",
      "shop/worker-5f6d7c8b9-tlz4p",
    ]);
    const controller = (name: string) => `${byName(h, name).controllerKind}/${byName(h, name).controllerName}`;
    assert.equal(controller("web-7d4b9c8f6-x2x9k"), "Deployment/web");
    assert.equal(controller("web-7d4b9c8f6-q8h2n"), "Deployment/web");
    assert.equal(controller("worker-5f6d7c8b9-tlz4p"), "Deployment/worker");
    assert.equal(controller("db-0"), "StatefulSet/db");
    assert.equal(controller("node-exporter-5kq7z"), "DaemonSet/node-exporter");
    assert.equal(controller("migrate-28871234-7fxkq"), "Job/migrate-28871234");
    assert.equal(controller("debug-shell"), "/");
    assert.deepEqual(
      h.double.requestsTo(/\/replicasets\//).map((r) => r.path).sort(),
      ["/apis/apps/v1/namespaces/shop/replicasets/web-7d4b9c8f6", "/apis/apps/v1/namespaces/shop/replicasets/worker-5f6d7c8b9"],
      "two pods of web-7d4b9c8f6 cost one GET",
    );
    assert.equal(byName(h, "worker-5f6d7c8b9-tlz4p").state, ContainerState.RESTARTING);
    assert.equal(byName(h, "db-0").oomKilled, true);
    assert.equal(h.events.length, 0, "the initial list is a snapshot, not events");
  });

  it("bookmark before list: watches from the list's resourceVersion, asking for bookmarks", async () => {
    const h = await harness();
    await waitFor(() => h.double.openWatches === 1, "the watch");
    const [list] = h.double.requestsTo("/api/v1/pods", (r) => !r.query.has("watch"));
    assert.equal(list!.query.get("limit"), "500");
    const [watch] = h.double.requestsTo("/api/v1/pods", (r) => r.query.get("watch") === "true");
    assert.equal(watch!.query.get("resourceVersion"), "48213", "the list's version");
    assert.equal(watch!.query.get("allowWatchBookmarks"), "true");
    assert.ok(Number(watch!.query.get("timeoutSeconds")) > 0);
  });

  it("watch events become normalised events, in order, and keep containers() current", async () => {
    const h = await harness();
    await waitFor(() => h.double.openWatches === 1, "the watch");
    let listChanges = 0;
    h.runtime.on("containers", () => listChanges++);

    h.double.addPod(newPod(h, "web-7d4b9c8f6-x2x9k", "web-7d4b9c8f6-zz9cc", "11111111-2222-4333-8444-555555555555"));
    h.double.updatePod("shop", "db-0", (p) => {
      // The postgres container is OOM-killed again and restarted.
      const s = p.status.containerStatuses[0];
      s.restartCount = 2;
      s.lastState = { terminated: { exitCode: 137, reason: "OOMKilled", startedAt: "2025-11-21T03:12:08Z", finishedAt: "2025-11-22T08:10:00Z" } };
      s.state = { running: { startedAt: "2025-11-22T08:10:01Z" } };
    });
    h.double.updatePod("default", "debug-shell", (p) => {
      p.status.phase = "Running";
      p.status.podIP = "10.244.2.50";
      p.status.containerStatuses[0].state = { running: { startedAt: "2025-11-22T08:10:05Z" } };
    });
    h.double.updatePod("shop", "report-9z8xw", () => {});
    h.double.deletePod("shop", "report-9z8xw");

    await waitFor(() => h.events.length >= 8, "the events");
    await sleep(50);
    assert.deepEqual(h.events.map(describeEvent), [
      "create shop/web-7d4b9c8f6-zz9cc",
      "start shop/web-7d4b9c8f6-zz9cc",
      "health_status:healthy shop/web-7d4b9c8f6-zz9cc",
      "oom shop/db-0",
      "die(137) shop/db-0",
      "restart shop/db-0",
      "start default/debug-shell",
      "destroy shop/report-9z8xw",
    ]);
    for (const e of h.events) {
      assert.equal(e.runtime, "kubernetes");
      assert.equal(e.resourceType, "container");
      assert.equal(e.synthetic, false);
      assert.ok(e.timestamp);
      assert.match(e.instanceId, /^k8s-[0-9a-f-]{36}$/);
    }
    const created = h.events[0]!;
    assert.equal(created.name, "web-7d4b9c8f6-zz9cc");
    assert.equal(created.instanceId, "k8s-11111111-2222-4333-8444-555555555555");
    assert.equal(created.labels.app, "web");
    assert.equal(created.attributes.namespace, "shop");
    assert.equal(created.attributes.controller_kind, "Deployment");

    const names = h.runtime.containers().map((c) => c.name);
    assert.ok(names.includes("web-7d4b9c8f6-zz9cc"));
    assert.ok(!names.includes("report-9z8xw"));
    assert.equal(byName(h, "db-0").restartCount, 2);
    assert.equal(byName(h, "debug-shell").state, ContainerState.RUNNING);
    assert.equal(byName(h, "debug-shell").ip, "10.244.2.50");
    assert.ok(listChanges >= 5, `'containers' fired per change (${listChanges})`);
    assert.equal(h.runtime.resourceVersion, h.double.resourceVersion, "the resume point follows the events");
    assert.equal(h.double.requestsTo(/\/replicasets\//).length, 2, "the new pod's ReplicaSet was cached");
  });

  it("bookmarks move the resume point: after the server ends the watch, it resumes from the bookmark without a relist", async () => {
    const h = await harness();
    await waitFor(() => h.double.openWatches === 1, "the watch");
    // Other objects of the cluster change: the version moves on without pod events.
    for (let i = 0; i < 5; i++) h.double.touchOther();
    h.double.bookmark();
    await waitFor(() => h.runtime.resourceVersion === h.double.resourceVersion, "the bookmark's version");
    assert.equal(h.runtime.watchCounters.bookmarks, 1);
    // The history before the bookmark is gone: only the bookmark avoids a 410 now.
    h.double.compact();
    h.double.closeWatches();
    await waitFor(() => h.double.requestsTo("/api/v1/pods", (r) => r.query.get("watch") === "true").length === 2 && h.double.openWatches === 1, "the second watch");
    const rewatch = h.double.requestsTo("/api/v1/pods", (r) => r.query.get("watch") === "true")[1]!;
    assert.equal(rewatch.query.get("resourceVersion"), h.double.resourceVersion);
    assert.equal(h.double.expiredWatches, 0);
    assert.equal(h.runtime.watchCounters.lists, 1, "no relist");
    h.double.deletePod("shop", "report-9z8xw");
    await waitFor(() => h.events.length === 1, "the delete");
    assert.equal(describeEvent(h.events[0]!), "destroy shop/report-9z8xw");
    assert.deepEqual(h.transitions, ["connected"], "a watch the server ends is not a disconnection");
  });

  it("the double sends BOOKMARKs only to watches that asked for them", async () => {
    const double = await KubeApiDouble.start();
    open.push(() => double.close());
    const read = async (query: string) => {
      const controller = new AbortController();
      const res = await fetch(`${double.url}/api/v1/pods?watch=true&resourceVersion=${double.resourceVersion}${query}`, { signal: controller.signal });
      const reader = res.body!.getReader();
      await waitFor(() => double.openWatches > 0, "the watch");
      double.bookmark();
      double.touchOther();
      double.closeWatches();
      let text = "";
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        text += Buffer.from(value).toString();
      }
      return text;
    };
    assert.match(await read("&allowWatchBookmarks=true"), /^\{"type":"BOOKMARK","object":\{"kind":"Pod","apiVersion":"v1","metadata":\{"resourceVersion":"48213"/);
    assert.equal(await read(""), "");
  });

  it("410 Expired as a watch ERROR event → relist and diff: the pods removed and added during the gap both appear, nothing invented", async () => {
    const h = await harness();
    await waitFor(() => h.double.openWatches === 1, "the watch");
    const before = h.runtime.resourceVersion;
    await h.double.down();
    await waitFor(() => h.transitions.includes("disconnected"), "the disconnection");
    // While the agent cannot see: one pod goes, one comes, one changes, and the history is compacted.
    h.double.deletePod("shop", "report-9z8xw");
    h.double.addPod(newPod(h, "db-0", "db-1", "22222222-3333-4444-8555-666666666666"));
    h.double.updatePod("shop", "worker-5f6d7c8b9-tlz4p", (p) => {
      p.status.containerStatuses[0].restartCount = 6;
    });
    h.double.compact();
    await h.double.up();
    await waitFor(() => h.events.length >= 5, "the synthetic events");
    await sleep(100);
    assert.equal(h.double.expiredWatches, 1, "the watch from the old version was answered with 410");
    const rewatches = h.double.requestsTo("/api/v1/pods", (r) => r.query.get("watch") === "true");
    assert.ok(rewatches.some((r) => r.query.get("resourceVersion") === before), "resumed from the last version first");
    assert.equal(h.runtime.watchCounters.lists, 2, "one relist");
    assert.deepEqual(h.events.map(describeEvent).sort(), [
      "create shop/db-1 synthetic",
      "destroy shop/report-9z8xw synthetic",
      "die(1) shop/worker-5f6d7c8b9-tlz4p synthetic",
      "restart shop/worker-5f6d7c8b9-tlz4p synthetic",
      "start shop/db-1 synthetic",
    ]);
    assert.deepEqual(
      h.runtime.containers().map((c) => c.externalId).sort(),
      ["default/api-typo-backoff", "default/api-typo-pull", "default/debug-shell", "kube-system/node-exporter-5kq7z", "shop/db-0", "shop/db-1", "shop/migrate-28871234-7fxkq", "shop/web-7d4b9c8f6-q8h2n", "shop/web-7d4b9c8f6-x2x9k", "shop/worker-5f6d7c8b9-tlz4p"],
    );
    assert.equal(h.runtime.resourceVersion, h.double.resourceVersion);
    assert.deepEqual(h.transitions, ["connected", "disconnected", "connected"]);
    assert.equal(h.runtime.info().reconnects, 1);
    // And the watch goes on from the relist's version.
    h.double.deletePod("shop", "db-1");
    await waitFor(() => h.events.some((e) => describeEvent(e) === "destroy shop/db-1"), "a live event after the relist");
  });

  it("410 as an HTTP status of the watch request → the same relist", async () => {
    const h = await harness();
    await waitFor(() => h.double.openWatches === 1, "the watch");
    h.double.expireWith = "http";
    h.double.deletePod("kube-system", "node-exporter-5kq7z");
    await waitFor(() => h.events.length === 1, "the live delete");
    h.double.pauseWatches();
    h.double.addPod(newPod(h, "db-0", "db-2", "33333333-4444-4555-8666-777777777777"));
    // The add is held back; the watch is cut and the history compacted before it arrives.
    h.double.compact();
    await h.double.down();
    await h.double.up();
    h.double.resumeWatches();
    await waitFor(() => h.events.length >= 3, "the synthetic create");
    assert.equal(h.double.expiredWatches, 1);
    assert.deepEqual(h.events.map(describeEvent), ["destroy kube-system/node-exporter-5kq7z", "create shop/db-2 synthetic", "start shop/db-2 synthetic"]);
  });

  it("server down: calls are UNAVAILABLE with the reason, info says so; back up: reconnects and the watch replays what it missed as real events", async () => {
    const h = await harness();
    await waitFor(() => h.double.openWatches === 1, "the watch");
    await h.double.down();
    await waitFor(() => !h.runtime.info().connected, "the disconnection");
    const info = h.runtime.info();
    assert.match(info.lastError, /ECONNREFUSED|cannot reach/);
    assert.equal(info.connectedSince, undefined);
    await rejectsWith(() => h.runtime.containers(), Code.Unavailable, /not connected to the API server.*ECONNREFUSED/);
    await rejectsWith(h.runtime.stats("shop/db-0"), Code.Unavailable);
    await rejectsWith(h.runtime.fetchLogs("shop/db-0", { tail: 1, timestamps: false }), Code.Unavailable);
    await rejectsWith(h.runtime.health("shop/db-0"), Code.Unavailable);
    h.double.deletePod("shop", "migrate-28871234-7fxkq");
    await sleep(300);
    const attempts = h.double.requestsTo("/api/v1/pods").length;
    await h.double.up();
    await waitFor(() => h.runtime.info().connected, "the reconnection", 3_000);
    await waitFor(() => h.events.length === 1, "the replayed delete");
    assert.equal(describeEvent(h.events[0]!), "destroy shop/migrate-28871234-7fxkq", "replayed by the watch: not synthetic");
    assert.equal(h.runtime.watchCounters.lists, 1, "no relist needed");
    assert.equal(h.runtime.info().lastError, "");
    assert.equal(h.runtime.info().reconnects, 1);
    assert.equal(h.runtime.containers().length, 9);
    assert.ok(attempts < 40, `retries backed off while down (${attempts} requests in 300 ms)`);
  });

  it("an API server that is down at start: start() still resolves, then the runtime connects when it comes up", async () => {
    const h = await harness({ down: true });
    const info = h.runtime.info();
    assert.equal(info.connected, false);
    assert.match(info.lastError, /ECONNREFUSED/);
    assert.deepEqual(h.transitions, ["disconnected"]);
    await h.double.up();
    await waitFor(() => h.runtime.info().connected, "the connection", 3_000);
    assert.equal(h.runtime.containers().length, 10);
    assert.equal(h.events.length, 0, "the first list is a snapshot even after failed attempts");
  });

  it("401: the Status message in last_error and UNAVAILABLE; connects once the credentials work", async () => {
    const h = await harness({ double: { token: "right" }, token: "wrong" });
    assert.equal(h.runtime.info().connected, false);
    assert.match(h.runtime.info().lastError, /^401 Unauthorized: Unauthorized/);
    await rejectsWith(() => h.runtime.containers(), Code.Unavailable, /Unauthorized/);
    assert.equal(h.double.requests[0]!.authorization, "Bearer wrong", "the kubeconfig's token was sent");
    h.double.token = "wrong";
    await waitFor(() => h.runtime.info().connected, "the connection");
    assert.equal(h.runtime.containers().length, 10);
  });

  it("404/403 Status bodies become NOT_FOUND, PERMISSION_DENIED with the server's message; an unknown container is INVALID_ARGUMENT naming the field", async () => {
    const h = await harness();
    await waitFor(() => h.double.openWatches === 1, "the watch");
    // Deleted on the server, the watch event not yet delivered: the API server's 404.
    h.double.pauseWatches();
    h.double.deletePod("shop", "db-0");
    await rejectsWith(h.runtime.fetchLogs("shop/db-0", { tail: 0, timestamps: false }), Code.NotFound, /kubernetes: logs of pod shop\/db-0: pods "db-0" not found/);
    h.double.resumeWatches();
    await waitFor(() => h.events.length === 1, "the delete");
    await rejectsWith(h.runtime.stats("shop/db-0"), Code.NotFound, /pod shop\/db-0 not found/);
    await rejectsWith(h.runtime.health("default/nothing-here"), Code.NotFound);

    h.double.forbid((p) => p.endsWith("/log"), forbiddenStatus("pods/log", "web-7d4b9c8f6-x2x9k", "shop"));
    await rejectsWith(
      h.runtime.fetchLogs("shop/web-7d4b9c8f6-x2x9k", { tail: 1, timestamps: false }),
      Code.PermissionDenied,
      /cannot get resource "pods\/log" in API group "" in the namespace "shop"/,
    );
    const h2 = await harness();
    await rejectsWith(h2.runtime.fetchLogs("shop/web-7d4b9c8f6-x2x9k", { tail: 1, timestamps: false, container: "sidecar" }), Code.InvalidArgument, /^\[invalid_argument\] container: pod shop\/web-7d4b9c8f6-x2x9k has no container "sidecar" \(it has /);
    for (const bad of ["db-0", "shop/", "/db-0", "Shop/db-0", "shop/db_0", "shop/db-0/x"]) {
      await rejectsWith(h2.runtime.stats(bad), Code.InvalidArgument, /^\[invalid_argument\] external_id: /);
    }
  });

  it("a malformed watch line or a non-410 ERROR event restarts the watch from the last version; nothing is lost", async () => {
    const h = await harness();
    await waitFor(() => h.double.openWatches === 1, "the watch");
    h.double.deletePod("shop", "report-9z8xw");
    await waitFor(() => h.events.length === 1, "the first event");
    const rv = h.runtime.resourceVersion;
    h.double.injectWatchLine('{"type":"ADDED","object":{"kind":"Pod"'); // cut JSON
    await waitFor(() => h.double.requestsTo("/api/v1/pods", (r) => r.query.get("watch") === "true").length === 2 && h.double.openWatches === 1, "the re-watch");
    assert.equal(h.double.requestsTo("/api/v1/pods", (r) => r.query.get("watch") === "true")[1]!.query.get("resourceVersion"), rv);
    h.double.injectWatchLine(JSON.stringify({ type: "ERROR", object: { kind: "Status", apiVersion: "v1", metadata: {}, status: "Failure", message: "etcd timeout", reason: "InternalError", code: 500 } }));
    await waitFor(() => h.double.requestsTo("/api/v1/pods", (r) => r.query.get("watch") === "true").length === 3 && h.double.openWatches === 1, "the third watch");
    h.double.deletePod("shop", "migrate-28871234-7fxkq");
    await waitFor(() => h.events.length === 2, "the next event");
    assert.deepEqual(h.events.map(describeEvent), ["destroy shop/report-9z8xw", "destroy shop/migrate-28871234-7fxkq"]);
    assert.equal(h.runtime.watchCounters.lists, 1);
    assert.ok(h.runtime.info().connected);
  });

  it("metrics.k8s.io: stats of every pod from one cached list, not a GET per pod", async () => {
    const h = await harness();
    const running = h.runtime.containers().filter((c) => c.state === ContainerState.RUNNING);
    assert.equal(running.length, 4);
    const all = await Promise.all(h.runtime.containers().map((c) => h.runtime.stats(c.externalId)));
    assert.equal(h.double.requestsTo("/apis/metrics.k8s.io/v1beta1/pods").length, 1, "one list for 10 pods");
    assert.equal(h.double.requestsTo(/^\/apis\/metrics\.k8s\.io\/v1beta1\/namespaces\//).length, 0, "no per-pod GET");
    const s = (name: string) => all.find((x) => x.name === name)!;
    assert.equal(s("db-0").cpuPercent, 150);
    assert.equal(s("db-0").memoryWorkingSetBytes, 412n * 1024n * 1024n);
    assert.equal(s("db-0").memoryUnlimited, true);
    assert.ok(Math.abs(s("node-exporter-5kq7z").cpuPercent! - 1.2345678) < 1e-9);
    assert.equal(s("web-7d4b9c8f6-q8h2n").memoryWorkingSetBytes, 13900n * 1024n + 21n * 1024n * 1024n);
    assert.equal(s("web-7d4b9c8f6-q8h2n").memoryLimitBytes, 320n * 1024n * 1024n);
    assert.equal(s("worker-5f6d7c8b9-tlz4p").cpuPercent, undefined);
    assert.ok(s("worker-5f6d7c8b9-tlz4p").unavailable.some((u) => /^cpu_percent: metrics\.k8s\.io has no sample/.test(u)));
    await h.runtime.stats("shop/db-0");
    assert.equal(h.double.requestsTo("/apis/metrics.k8s.io/v1beta1/pods").length, 1, "still cached");
  });

  it("metrics.k8s.io: refreshed once the list is older than the maximum age; a cluster without it gets reasons, not errors", async () => {
    const h = await harness({ runtime: { metricsMaxAgeMs: 50 } });
    await h.runtime.stats("shop/db-0");
    await sleep(60);
    await Promise.all([h.runtime.stats("shop/db-0"), h.runtime.stats("shop/web-7d4b9c8f6-x2x9k")]);
    assert.equal(h.double.requestsTo("/apis/metrics.k8s.io/v1beta1/pods").length, 2);

    const bare = await harness({ double: { metrics: false } });
    const s = await bare.runtime.stats("shop/db-0");
    assert.equal(s.cpuPercent, undefined);
    assert.ok(s.unavailable.some((u) => /^cpu_percent: metrics\.k8s\.io is not served by this cluster .*could not find the requested resource/.test(u)), s.unavailable.join("; "));
    assert.equal(s.memoryUnlimited, true, "the limit comes from the spec anyway");
  });

  it("logs: tail, timestamps (stripped into LogLine.timestamp), the default container, a named one", async () => {
    const h = await harness();
    const { lines, tty } = await h.runtime.fetchLogs("shop/web-7d4b9c8f6-x2x9k", { tail: 2, timestamps: true });
    assert.equal(tty, false);
    assert.deepEqual(lines.map((l) => l.text), [
      '10.244.2.7 - - [22/Nov/2025:08:00:03 +0000] "GET /api/cart HTTP/1.1" 200 512 "-" "curl/8.5.0"',
      '10.244.1.1 - - [22/Nov/2025:08:00:06 +0000] "GET /healthz HTTP/1.1" 200 2 "-" "kube-probe/1.32"',
    ]);
    assert.equal(timestampDate(lines[1]!.timestamp!).toISOString(), "2025-11-22T08:00:06.004Z");
    assert.equal(lines[1]!.timestamp!.nanos, 4402117);
    const [req] = h.double.requestsTo("/api/v1/namespaces/shop/pods/web-7d4b9c8f6-x2x9k/log");
    assert.equal(req!.query.get("container"), "web", "the default-container annotation");
    assert.equal(req!.query.get("tailLines"), "2");
    assert.equal(req!.query.get("timestamps"), "true");
    assert.equal(req!.query.has("follow"), false);

    const all = await h.runtime.fetchLogs("shop/web-7d4b9c8f6-x2x9k", { tail: 0, timestamps: false, container: "log-shipper" });
    assert.deepEqual(all.lines.map((l) => [l.text, l.timestamp]), [
      ["Fluent Bit v3.1.9", undefined],
      ["[2025/11/20 09:14:06] [ info] [output:stdout:stdout.0] worker #0 started", undefined],
    ]);
    assert.equal(h.double.requestsTo("/api/v1/namespaces/shop/pods/web-7d4b9c8f6-x2x9k/log")[1]!.query.has("tailLines"), false, "tail 0 = all");
  });

  it("logs: a non-followed stream ends with END_OF_LOG; a followed one gets new lines and ends when the container exits", async () => {
    const h = await harness();
    const once = await collect(h.runtime.streamLogs("shop/db-0", { tail: 1, timestamps: true, follow: false }, new AbortController().signal));
    assert.deepEqual(once.flatMap((b) => b.lines.map((l) => l.text)), ["2025-11-21 03:12:08.900 UTC [1] LOG:  database system is ready to accept connections"]);
    assert.equal(once.at(-1)!.end?.reason, LogEndReason.END_OF_LOG);

    const stream = h.runtime.streamLogs("shop/db-0", { tail: 1, timestamps: false, follow: true }, new AbortController().signal);
    const batches: LogBatch[] = [];
    const done = (async () => {
      for await (const b of stream) batches.push(b);
    })();
    await waitFor(() => batches.length >= 1 && h.double.logFollowers === 1, "the first batch");
    h.double.appendLog("shop", "db-0", "postgres", ["checkpoint starting: time", "checkpoint complete"]);
    await waitFor(() => batches.flatMap((b) => b.lines).length === 3, "the appended lines");
    h.double.updatePod("shop", "db-0", (p) => {
      p.status.containerStatuses[0].state = { terminated: { exitCode: 0, reason: "Completed", startedAt: "2025-11-21T03:12:08Z", finishedAt: "2025-11-22T08:30:00Z" } };
    });
    h.double.endLogFollowers("shop", "db-0");
    await done;
    assert.deepEqual(batches.flatMap((b) => b.lines.map((l) => l.text)), [
      "2025-11-21 03:12:08.900 UTC [1] LOG:  database system is ready to accept connections",
      "checkpoint starting: time",
      "checkpoint complete",
    ]);
    assert.equal(batches.at(-1)!.end?.reason, LogEndReason.CONTAINER_EXITED);
    assert.match(batches.at(-1)!.end!.detail, /container postgres exited with code 0/);
    assert.equal(h.double.requestsTo("/api/v1/namespaces/shop/pods/db-0/log").at(-1)!.query.get("follow"), "true");
  });

  it("logs: a followed stream of a deleted pod ends with CONTAINER_REMOVED; aborting ends it quietly; close() ends open streams", async () => {
    const h = await harness();
    const batches: LogBatch[] = [];
    const removed = (async () => {
      for await (const b of h.runtime.streamLogs("shop/web-7d4b9c8f6-q8h2n", { tail: 0, timestamps: false, follow: true }, new AbortController().signal)) batches.push(b);
    })();
    await waitFor(() => h.double.logFollowers === 1, "the follower");
    h.double.deletePod("shop", "web-7d4b9c8f6-q8h2n");
    h.double.endLogFollowers("shop", "web-7d4b9c8f6-q8h2n");
    await removed;
    assert.equal(batches.at(-1)!.end?.reason, LogEndReason.CONTAINER_REMOVED);

    const abort = new AbortController();
    const aborted: LogBatch[] = [];
    const quiet = (async () => {
      for await (const b of h.runtime.streamLogs("shop/db-0", { tail: 0, timestamps: false, follow: true }, abort.signal)) aborted.push(b);
    })();
    await waitFor(() => h.double.logFollowers === 1, "the follower");
    abort.abort();
    await quiet;
    assert.ok(aborted.every((b) => b.end === undefined), "no end reason for a client that left");
    await waitFor(() => h.double.logFollowers === 0, "the server side closed");

    const closing: LogBatch[] = [];
    const ends = (async () => {
      for await (const b of h.runtime.streamLogs("shop/db-0", { tail: 0, timestamps: false, follow: true }, new AbortController().signal)) closing.push(b);
    })();
    await waitFor(() => h.double.logFollowers === 1, "the follower");
    await h.runtime.close();
    await ends;
    assert.equal(closing.at(-1)!.end?.reason, LogEndReason.RUNTIME_ERROR);
  });

  it("readiness as health: HEALTHY, then UNHEALTHY with the condition message and a health_status event, then healthy again", async () => {
    const h = await harness();
    await waitFor(() => h.double.openWatches === 1, "the watch");
    const id = "shop/web-7d4b9c8f6-x2x9k";
    assert.equal((await h.runtime.health(id)).status, HealthStatus.HEALTHY);
    const none = await h.runtime.health("shop/db-0");
    assert.deepEqual([none.hasHealthcheck, none.status], [false, HealthStatus.NONE]);
    assert.equal((await h.runtime.health("default/debug-shell")).status, HealthStatus.STARTING);
    const setReady = (ready: boolean) =>
      h.double.updatePod("shop", "web-7d4b9c8f6-x2x9k", (p) => {
        for (const c of p.status.conditions) {
          if (c.type !== "Ready" && c.type !== "ContainersReady") continue;
          c.status = ready ? "True" : "False";
          c.lastTransitionTime = new Date().toISOString().replace(/\.\d+Z$/, "Z");
          if (ready) delete c.message;
          else Object.assign(c, { reason: "ContainersNotReady", message: "containers with unready status: [web]" });
        }
        p.status.containerStatuses[1].ready = ready;
      });
    setReady(false);
    await waitFor(() => h.events.length === 1, "the health event");
    const unhealthy = await h.runtime.health(id);
    assert.equal(unhealthy.status, HealthStatus.UNHEALTHY);
    assert.equal(unhealthy.lastOutput, "containers with unready status: [web]");
    setReady(true);
    await waitFor(() => h.events.length === 2, "the second health event");
    assert.deepEqual(h.events.map(describeEvent), ["health_status:unhealthy shop/web-7d4b9c8f6-x2x9k", "health_status:healthy shop/web-7d4b9c8f6-x2x9k"]);
    assert.equal((await h.runtime.health(id)).status, HealthStatus.HEALTHY);
  });

  it("scope: a node's pods (field selector on list and watch), a namespace's pods and metrics", async () => {
    const h = await harness({ runtime: { nodeName: "node-2" } });
    await waitFor(() => h.double.openWatches === 1, "the watch");
    assert.deepEqual(h.runtime.containers().map((c) => c.name).sort(), ["api-typo-backoff", "api-typo-pull", "debug-shell", "migrate-28871234-7fxkq", "web-7d4b9c8f6-q8h2n"]);
    for (const r of h.double.requestsTo("/api/v1/pods")) assert.equal(r.query.get("fieldSelector"), "spec.nodeName=node-2");
    await rejectsWith(h.runtime.stats("shop/db-0"), Code.NotFound, /not found \(watching node node-2\)/);
    h.double.updatePod("shop", "db-0", () => {});
    h.double.deletePod("shop", "migrate-28871234-7fxkq");
    await waitFor(() => h.events.length === 1, "the node-2 event");
    assert.equal(describeEvent(h.events[0]!), "destroy shop/migrate-28871234-7fxkq", "node-1 changes are not seen");

    const ns = await harness({ runtime: { namespace: "kube-system" } });
    assert.deepEqual(ns.runtime.containers().map((c) => c.externalId), ["kube-system/node-exporter-5kq7z"]);
    assert.equal(ns.double.requestsTo("/api/v1/namespaces/kube-system/pods").length >= 1, true);
    assert.equal(ns.double.requestsTo("/api/v1/pods").length, 0);
    const s = await ns.runtime.stats("kube-system/node-exporter-5kq7z");
    assert.equal(s.memoryWorkingSetBytes, 18436n * 1024n);
    assert.equal(ns.double.requestsTo("/apis/metrics.k8s.io/v1beta1/namespaces/kube-system/pods").length, 1);
  });

  it("lists in pages (limit/continue) from one snapshot version", async () => {
    const h = await harness({ runtime: { listPageSize: 3 } });
    const lists = h.double.requestsTo("/api/v1/pods", (r) => !r.query.has("watch"));
    assert.equal(lists.length, 4);
    assert.deepEqual(lists.map((r) => r.query.has("continue")), [false, true, true, true]);
    assert.equal(h.runtime.containers().length, 10);
  });

  it("pods cannot be paused: UNIMPLEMENTED", async () => {
    const h = await harness({ start: false });
    await rejectsWith(h.runtime.pause("shop/db-0"), Code.Unimplemented, /kubernetes pods cannot be paused/);
    await rejectsWith(h.runtime.unpause("shop/db-0"), Code.Unimplemented, /kubernetes pods cannot be paused/);
  });

  it("watched changes carry the object's times and error details; limits follow the pod spec", async () => {
    const h = await harness();
    await waitFor(() => h.double.openWatches === 1, "the watch");
    assert.deepEqual(h.runtime.limits("default/api-typo-pull"), { cpuCores: 1.5, memoryBytes: 768n * 1024n * 1024n });
    assert.deepEqual(h.runtime.limits("shop/db-0"), {}, "no limits: no shape");
    assert.equal(h.runtime.limits("shop/ghost"), undefined);
    h.double.updatePod("default", "debug-shell", (p) => {
      p.status.containerStatuses[0].state = { waiting: { reason: "ErrImagePull", message: "pull access denied" } };
    });
    h.double.updatePod("shop", "worker-5f6d7c8b9-tlz4p", (p) => {
      const s = p.status.containerStatuses[0];
      s.restartCount = 6;
      s.lastState = { terminated: { exitCode: 1, reason: "Error", startedAt: "2025-11-22T07:57:44Z", finishedAt: "2025-11-22T07:57:46Z" } };
      s.state = { running: { startedAt: "2025-11-22T08:00:26Z" } };
    });
    h.double.updatePod("default", "api-typo-pull", (p) => {
      p.spec.containers[0].resources.limits = { cpu: "2500m", memory: "1Gi" };
    });
    await waitFor(() => h.events.length >= 4, "the events");
    await sleep(50);
    const seen = h.events.map((e) => [describeEvent(e), e.errorDetail, timestampDate(e.timestamp!).toISOString()]);
    assert.equal(seen[0]![0], "error default/debug-shell");
    assert.equal(seen[0]![1], "shell: ErrImagePull: pull access denied");
    assert.deepEqual(seen.slice(1), [
      ["die(1) shop/worker-5f6d7c8b9-tlz4p", "worker: Error (exit code 1)", "2025-11-22T07:57:46.000Z"],
      ["restart shop/worker-5f6d7c8b9-tlz4p", "", "2025-11-22T08:00:26.000Z"],
      ["start shop/worker-5f6d7c8b9-tlz4p", "", "2025-11-22T08:00:26.000Z"],
    ]);
    assert.deepEqual(h.runtime.limits("default/api-typo-pull"), { cpuCores: 2.5, memoryBytes: 1024n ** 3n });
  });
});
