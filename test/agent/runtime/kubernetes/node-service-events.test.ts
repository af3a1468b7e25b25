import { afterEach, describe, it } from "vitest";
import assert from "node:assert/strict";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import type { RuntimeEvent } from "../../../../gen/fleetlet/agent/v1/runtime_pb.js";
import { createKubernetesRuntime, type KubernetesRuntime, type KubernetesRuntimeOptions } from "../../../../agent/runtime/kubernetes/kubernetes-runtime.js";
import { forbiddenStatus, KubeApiDouble } from "../../../helpers/kube-api-double.js";
import { tempDir } from "../../../helpers/temp-dir.js";

// biome-ignore lint/suspicious/noExplicitAny: fixture objects are raw JSON, patched field by field
type Json = Record<string, any>;

// Seed 004's "node" and "service" resource types: Nodes and Services (with their EndpointSlices)
// watched next to the pods, against the API double serving recorded-shape fixtures.

const open: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const close of open.splice(0).reverse()) await close();
});

async function harness(options: Partial<KubernetesRuntimeOptions> = {}, prepare?: (d: KubeApiDouble) => void, watching: ("nodes" | "services" | "endpointslices")[] = ["nodes", "services", "endpointslices"]) {
  const double = await KubeApiDouble.start();
  prepare?.(double);
  const dir = tempDir("kube-nodes");
  const kubeconfig = join(dir.path, "config");
  double.writeKubeconfig(kubeconfig);
  const runtime: KubernetesRuntime = createKubernetesRuntime({ kubeconfig, backoff: { initialMs: 20, maxMs: 200 }, ...options });
  const events: RuntimeEvent[] = [];
  runtime.on("event", (e: RuntimeEvent) => events.push(e));
  open.push(async () => {
    await runtime.close();
    await double.close();
    dir.remove();
  });
  await runtime.start();
  await waitFor(() => watching.every((r) => double.watchesOf(r) === 1), `the ${watching.join(", ")} watches`);
  return { double, runtime, events };
}

async function waitFor(cond: () => boolean, what: string, timeoutMs = 5_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

const ofType = (events: RuntimeEvent[], type: string) => events.filter((e) => e.resourceType === type);
/** "<action> <external id>[ condition=<c> status=<s>]" */
const describe1 = (e: RuntimeEvent) => `${e.action} ${e.externalId}${e.attributes.condition ? ` ${e.attributes.condition}=${e.attributes.status}` : ""}`;
const iso = (e: RuntimeEvent) => timestampDate(e.timestamp!).toISOString();

function setCondition(node: Json, type: string, status: string, reason: string, message: string, at: string): void {
  const c = (node.status.conditions as Json[]).find((x) => x.type === type)!;
  Object.assign(c, { status, reason, message, lastTransitionTime: at, lastHeartbeatTime: at });
}

describe("Kubernetes nodes as runtime events", () => {
  it("the first list is the current state, not news; RuntimeInfo reports container, node and service", async () => {
    const h = await harness();
    const info = h.runtime.info();
    assert.deepEqual(info.resourceTypes, ["container", "node", "service"]);
    assert.deepEqual(info.resourceNotes, []);
    assert.deepEqual(ofType(h.events, "node"), []);
    assert.deepEqual(ofType(h.events, "service"), []);
  });

  it("a node going NotReady then Ready: not_ready / ready at the condition's lastTransitionTime, with the kubelet's reason", async () => {
    const h = await harness();
    h.double.updateObject("nodes", "", "node-1", (n) => setCondition(n, "Ready", "False", "KubeletNotReady", "container runtime network not ready: NetworkReady=false", "2025-11-22T08:20:00Z"));
    await waitFor(() => ofType(h.events, "node").length === 1, "not_ready");
    h.double.updateObject("nodes", "", "node-1", (n) => setCondition(n, "Ready", "True", "KubeletReady", "kubelet is posting ready status", "2025-11-22T08:21:30Z"));
    await waitFor(() => ofType(h.events, "node").length === 2, "ready");
    const [down, up] = ofType(h.events, "node");
    assert.deepEqual([down, up].map((e) => describe1(e!)), ["not_ready node-1 Ready=False", "ready node-1 Ready=True"]);
    assert.deepEqual([iso(down!), iso(up!)], ["2025-11-22T08:20:00.000Z", "2025-11-22T08:21:30.000Z"]);
    assert.equal(down!.errorDetail, "KubeletNotReady: container runtime network not ready: NetworkReady=false");
    assert.equal(up!.errorDetail, "");
    assert.equal(down!.runtime, "kubernetes");
    assert.equal(down!.name, "node-1");
    assert.equal(down!.labels["kubernetes.io/hostname"], "node-1");
    assert.equal(down!.attributes.kubelet_version, "v1.32.4");
    assert.equal(down!.synthetic, false);
  });

  it("a pressure condition: pressure with the condition, then pressure_cleared; Unknown after a lost kubelet is not_ready", async () => {
    const h = await harness();
    h.double.updateObject("nodes", "", "node-2", (n) => setCondition(n, "DiskPressure", "True", "KubeletHasDiskPressure", "kubelet has disk pressure", "2025-11-22T08:30:00Z"));
    h.double.updateObject("nodes", "", "node-2", (n) => setCondition(n, "DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure", "2025-11-22T08:35:00Z"));
    h.double.updateObject("nodes", "", "node-1", (n) => {
      for (const t of ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"]) setCondition(n, t, "Unknown", "NodeStatusUnknown", "Kubelet stopped posting node status.", "2025-11-22T08:40:00Z");
    });
    await waitFor(() => ofType(h.events, "node").length === 3, "three node events");
    const events = ofType(h.events, "node");
    assert.deepEqual(events.map(describe1), ["pressure node-2 DiskPressure=True", "pressure_cleared node-2 DiskPressure=False", "not_ready node-1 Ready=Unknown"]);
    assert.deepEqual(events.map(iso), ["2025-11-22T08:30:00.000Z", "2025-11-22T08:35:00.000Z", "2025-11-22T08:40:00.000Z"]);
    assert.equal(events[0]!.errorDetail, "KubeletHasDiskPressure: kubelet has disk pressure");
    assert.equal(events[0]!.attributes.reason, "KubeletHasDiskPressure");
  });

  it("cordon and uncordon (spec.unschedulable), network_unavailable, a node joining and leaving", async () => {
    const h = await harness();
    const before = Date.now();
    h.double.updateObject("nodes", "", "node-1", (n) => (n.spec.unschedulable = true));
    h.double.updateObject("nodes", "", "node-2", (n) => delete n.spec.unschedulable);
    h.double.updateObject("nodes", "", "node-1", (n) => setCondition(n, "NetworkUnavailable", "True", "NoRouteCreated", "Node created without a route", "2025-11-22T08:50:00Z"));
    const joining = h.double.fixtureObject("nodes", "node-3");
    joining.metadata.name = "node-4";
    joining.metadata.uid = "9d4b6f8e-5a7c-4b1d-8e3f-4a5b6c7d8e93";
    joining.metadata.creationTimestamp = "2025-11-22T08:55:00Z";
    h.double.addObject("nodes", joining);
    h.double.deleteObject("nodes", "", "node-3");
    await waitFor(() => ofType(h.events, "node").length === 6, "six node events");
    const events = ofType(h.events, "node");
    assert.deepEqual(events.map(describe1), [
      "cordon node-1",
      "uncordon node-2",
      "network_unavailable node-1 NetworkUnavailable=True",
      "create node-4",
      // A new node reports what is already wrong with it: node-3's copy is unreachable (Ready
      // Unknown); its pressure conditions are Unknown too, which is not pressure.
      "not_ready node-4 Ready=Unknown",
      "destroy node-3",
    ]);
    // No object time for a cordon: when the agent saw it.
    assert.ok(timestampDate(events[0]!.timestamp!).getTime() >= before - 1000);
    assert.equal(events[0]!.attributes.unschedulable, "true");
    assert.equal(iso(events[3]!), "2025-11-22T08:55:00.000Z", "create at creationTimestamp");
  });

  it("an agent of one node watches only that node", async () => {
    const h = await harness({ nodeName: "node-2" });
    for (const r of h.double.requestsTo("/api/v1/nodes")) assert.equal(r.query.get("fieldSelector"), "metadata.name=node-2");
    h.double.updateObject("nodes", "", "node-1", (n) => (n.spec.unschedulable = true));
    h.double.updateObject("nodes", "", "node-2", (n) => delete n.spec.unschedulable);
    await waitFor(() => ofType(h.events, "node").length >= 1, "a node event");
    await sleep(50);
    assert.deepEqual(ofType(h.events, "node").map(describe1), ["uncordon node-2"]);
  });

  it("a relist after the watch expired reports what changed meanwhile as synthetic events", async () => {
    const h = await harness();
    // The API server is away while the node is cordoned and its history is compacted: the
    // watch from the old version gets 410 and only a relist can tell.
    await h.double.down();
    h.double.updateObject("nodes", "", "node-1", (n) => (n.spec.unschedulable = true));
    h.double.compact();
    await h.double.up();
    await waitFor(() => ofType(h.events, "node").length === 1, "the relisted cordon");
    const [e] = ofType(h.events, "node");
    assert.equal(describe1(e!), "cordon node-1");
    assert.equal(e!.synthetic, true);
  });

  it("nodes the service account may not read: pods and services go on, RuntimeInfo says why", async () => {
    const h = await harness({}, (d) => d.forbid((p) => p.startsWith("/api/v1/nodes"), forbiddenStatus("nodes", "", "")), ["services", "endpointslices"]);
    const info = h.runtime.info();
    assert.equal(info.connected, true);
    assert.deepEqual(info.resourceTypes, ["container", "service"]);
    assert.equal(info.resourceNotes.length, 1);
    assert.match(info.resourceNotes[0]!, /^node: 403 Forbidden: nodes "" is forbidden/);
    assert.equal(h.runtime.containers().length, 10);
  });
});

describe("Kubernetes services as runtime events", () => {
  const newService = (d: KubeApiDouble): Json => {
    const s = d.fixtureObject("services", "web");
    s.metadata.name = "api";
    s.metadata.uid = "4c5d6e7f-8a9b-4c0d-8e1f-2a3b4c5d6e7f";
    s.metadata.creationTimestamp = "2025-11-22T09:00:00Z";
    s.spec.selector = { app: "api" };
    s.spec.clusterIP = "10.96.33.4";
    s.spec.clusterIPs = ["10.96.33.4"];
    return s;
  };
  const sliceFor = (d: KubeApiDouble, service: string, name: string, endpoints: { ip: string; ready: boolean }[], trigger: string): Json => {
    const s = d.fixtureObject("endpointslices", "web-5hq4m");
    s.metadata.name = name;
    s.metadata.uid = `${name}-0000-4000-8000-000000000000`;
    s.metadata.labels["kubernetes.io/service-name"] = service;
    s.metadata.annotations["endpoints.kubernetes.io/last-change-trigger-time"] = trigger;
    s.endpoints = endpoints.map((e, i) => ({ addresses: [e.ip], conditions: { ready: e.ready, serving: e.ready, terminating: false }, targetRef: { kind: "Pod", namespace: "shop", name: `${service}-${i}`, uid: `${service}-pod-${i}` }, nodeName: "node-1" }));
    return s;
  };

  it("created, endpoints changing, updated, deleted: create/update/destroy with the endpoint count and the objects' times", async () => {
    const h = await harness();
    const svc = newService(h.double);
    h.double.addObject("services", svc);
    await waitFor(() => ofType(h.events, "service").length === 1, "create");
    h.double.addObject("endpointslices", sliceFor(h.double, "api", "api-abcde", [{ ip: "10.244.1.50", ready: true }, { ip: "10.244.2.51", ready: false }], "2025-11-22T09:00:05Z"));
    await waitFor(() => ofType(h.events, "service").length === 2, "endpoints update");
    h.double.updateObject("services", "shop", "api", (s) => (s.spec.ports[0].port = 8081));
    await waitFor(() => ofType(h.events, "service").length === 3, "spec update");
    // A status-only write that changes nothing reported is not an event.
    h.double.updateObject("services", "shop", "api", (s) => (s.metadata.annotations = { "example.com/touched": "1" }));
    h.double.deleteObject("services", "shop", "api");
    await waitFor(() => ofType(h.events, "service").length === 4, "destroy");
    const events = ofType(h.events, "service");
    assert.deepEqual(
      events.map((e) => `${e.action} ${e.externalId} endpoints=${e.attributes.endpoints}/${e.attributes.endpoints_not_ready}${e.attributes.changed ? ` changed=${e.attributes.changed}` : ""}`),
      ["create shop/api endpoints=0/0", "update shop/api endpoints=1/1 changed=endpoints", "update shop/api endpoints=1/1 changed=ports", "destroy shop/api endpoints=1/1"],
    );
    assert.equal(iso(events[0]!), "2025-11-22T09:00:00.000Z", "create at creationTimestamp");
    assert.equal(iso(events[1]!), "2025-11-22T09:00:05.000Z", "endpoints at the slice's last-change-trigger-time");
    assert.equal(events[2]!.attributes.ports, "http:8081/TCP");
    assert.equal(events[0]!.attributes.type, "ClusterIP");
    assert.equal(events[0]!.attributes.cluster_ip, "10.96.33.4");
    assert.equal(events[0]!.attributes.selector, "app=api");
    assert.equal(events[0]!.attributes.namespace, "shop");
    assert.equal(events[0]!.name, "api");
    assert.equal(events[0]!.labels.tier, "frontend");
  });

  it("a service's endpoint count follows its pods' readiness across slices (a backend in two slices is one)", async () => {
    const h = await harness();
    h.double.updateObject("endpointslices", "shop", "web-5hq4m", (s) => {
      s.endpoints[1].conditions = { ready: true, serving: true, terminating: false };
      s.metadata.annotations["endpoints.kubernetes.io/last-change-trigger-time"] = "2025-11-22T09:10:00Z";
    });
    await waitFor(() => ofType(h.events, "service").length === 1, "web's update");
    const ipv6 = sliceFor(h.double, "web", "web-v6xyz", [], "2025-11-22T09:11:00Z");
    ipv6.addressType = "IPv6";
    const fixture = h.double.fixtureObject("endpointslices", "web-5hq4m");
    ipv6.endpoints = fixture.endpoints.map((e: Json, i: number) => ({ ...e, addresses: [`fd00::${i + 1}`] }));
    h.double.addObject("endpointslices", ipv6);
    h.double.deleteObject("endpointslices", "shop", "web-5hq4m");
    await waitFor(() => ofType(h.events, "service").length === 2, "web's second update");
    const events = ofType(h.events, "service");
    assert.deepEqual(events.map((e) => `${e.action} ${e.externalId} endpoints=${e.attributes.endpoints}/${e.attributes.endpoints_not_ready}`), ["update shop/web endpoints=2/0", "update shop/web endpoints=1/1"]);
    assert.equal(iso(events[0]!), "2025-11-22T09:10:00.000Z");
  });

  it("initial endpoint counts come from the fixtures' slices (the kubernetes service has no targetRef)", async () => {
    const h = await harness();
    h.double.updateObject("services", "default", "kubernetes", (s) => (s.metadata.labels.extra = "1"));
    h.double.updateObject("services", "shop", "web-public", (s) => (s.status.loadBalancer.ingress = [{ ip: "203.0.113.11", ipMode: "VIP" }]));
    await waitFor(() => ofType(h.events, "service").length === 2, "two updates");
    const [k, lb] = ofType(h.events, "service");
    assert.equal(`${k!.attributes.endpoints} ${k!.attributes.changed}`, "1 labels");
    assert.equal(`${lb!.attributes.endpoints}/${lb!.attributes.endpoints_not_ready} ${lb!.attributes.changed} ${lb!.attributes.load_balancer}`, "1/1 load_balancer 203.0.113.11");
  });

  it("endpoint slices that cannot be read: services without counts (not 0), and RuntimeInfo says so", async () => {
    const h = await harness({}, (d) => d.forbid((p) => p.includes("/endpointslices"), forbiddenStatus("endpointslices", "", "")), ["nodes", "services"]);
    assert.match(h.runtime.info().resourceNotes.join("\n"), /^service: endpoint counts unavailable: 403 Forbidden/);
    assert.deepEqual(h.runtime.info().resourceTypes, ["container", "node", "service"]);
    h.double.addObject("services", newService(h.double));
    await waitFor(() => ofType(h.events, "service").length === 1, "create");
    assert.equal(ofType(h.events, "service")[0]!.attributes.endpoints, undefined);
  }, 10_000);
});
