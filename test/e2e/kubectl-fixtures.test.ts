import { afterAll, beforeAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { setTimeout as sleep } from "node:timers/promises";
import {
  badRequestStatus,
  expiredStatus,
  forbiddenStatus,
  KUBE_FIXTURES,
  KubeApiDouble,
  NO_RESOURCE_STATUS,
  notFoundStatus,
  UNAUTHORIZED_STATUS,
} from "../helpers/kube-api-double.js";
import { mustRunInCi } from "../helpers/root.js";
import { tempDir } from "../helpers/temp-dir.js";

// The real kubectl against the API double (testing.md "Kubernetes"): a fixture, a Status body, a
// watch line or a discovery document that a real client would reject fails here, so the double
// the runtime is tested against cannot drift from what the API server really sends.

const KUBECTL = "/usr/bin/kubectl";
const skip = mustRunInCi(existsSync(KUBECTL) ? false : `needs kubectl at ${KUBECTL} (installed on the project's machines)`);
const run = promisify(execFile);

const fixture = (path: string) => JSON.parse(readFileSync(join(KUBE_FIXTURES, path), "utf8")) as unknown;

describe.skipIf(skip)("kubectl against the Kubernetes API double", () => {
  let double: KubeApiDouble;
  let dir: ReturnType<typeof tempDir>;
  let env: NodeJS.ProcessEnv;

  beforeAll(async () => {
    double = await KubeApiDouble.start();
    dir = tempDir("kubectl");
    // Never the machine's ~/.kube: a kubeconfig, a home and a discovery cache of our own.
    double.writeKubeconfig(join(dir.path, "config"));
    env = { PATH: process.env.PATH, HOME: dir.path, KUBECONFIG: join(dir.path, "config") };
  });
  afterAll(async () => {
    await double.close();
    dir.remove();
  });

  async function kubectl(args: string[], options: { env?: NodeJS.ProcessEnv } = {}): Promise<{ code: number; stdout: string; stderr: string }> {
    try {
      const { stdout, stderr } = await run(KUBECTL, [...args, "--cache-dir", join(dir.path, "cache"), "--request-timeout", "10s"], { env: options.env ?? env, timeout: 20_000 });
      return { code: 0, stdout, stderr };
    } catch (e) {
      const err = e as { code?: number; stdout?: string; stderr?: string };
      if (typeof err.code !== "number") throw e;
      return { code: err.code, stdout: err.stdout ?? "", stderr: err.stderr ?? "" };
    }
  }

  /** The rows of kubectl's table output, split on runs of spaces. */
  const rows = (stdout: string) => stdout.trim().split("\n").map((l) => l.trim().split(/\s{2,}/));

  it("the double's Status bodies are the recorded ones", () => {
    assert.deepEqual(UNAUTHORIZED_STATUS, fixture("status/401-unauthorized.json"));
    assert.deepEqual(notFoundStatus("pods", "ghost"), fixture("status/404-pod-not-found.json"));
    assert.deepEqual(NO_RESOURCE_STATUS, fixture("status/404-no-resource.json"));
    assert.deepEqual(expiredStatus(48213, 48302), fixture("status/410-expired.json"));
    assert.deepEqual(forbiddenStatus("pods/log", "web-7d4b9c8f6-x2x9k", "shop"), fixture("status/403-forbidden-pods-log.json"));
    assert.deepEqual(badRequestStatus("container sidecar is not valid for pod web-7d4b9c8f6-x2x9k"), fixture("status/400-container-not-valid.json"));
  });

  it("get pods -A -o json: discovery and the pod list decode; every fixture pod comes back", async () => {
    const r = await kubectl(["get", "pods", "-A", "-o", "json"]);
    assert.equal(r.code, 0, r.stderr);
    const list = JSON.parse(r.stdout) as { kind: string; items: { kind: string; metadata: { namespace: string; name: string; uid: string } }[] };
    const recorded = fixture("pods.json") as { items: { metadata: { namespace: string; name: string; uid: string } }[] };
    assert.equal(list.kind, "List");
    assert.deepEqual(
      list.items.map((p) => `${p.kind} ${p.metadata.namespace}/${p.metadata.name} ${p.metadata.uid}`),
      recorded.items.map((p) => `Pod ${p.metadata.namespace}/${p.metadata.name} ${p.metadata.uid}`).sort(),
    );
  });

  it("get pods -A: the server-side Table, with the statuses kubectl users know", async () => {
    const r = await kubectl(["get", "pods", "-A"]);
    assert.equal(r.code, 0, r.stderr);
    const t = rows(r.stdout);
    assert.deepEqual(t[0], ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE"]);
    const row = (name: string) => t.find((cells) => cells[1] === name)!.slice(0, 4);
    assert.deepEqual(row("web-7d4b9c8f6-x2x9k"), ["shop", "web-7d4b9c8f6-x2x9k", "2/2", "Running"]);
    assert.deepEqual(row("web-7d4b9c8f6-q8h2n"), ["shop", "web-7d4b9c8f6-q8h2n", "1/2", "Running"]);
    assert.deepEqual(row("worker-5f6d7c8b9-tlz4p"), ["shop", "worker-5f6d7c8b9-tlz4p", "0/1", "CrashLoopBackOff"]);
    assert.deepEqual(row("report-9z8xw"), ["shop", "report-9z8xw", "0/1", "Error"]);
    assert.deepEqual(row("migrate-28871234-7fxkq"), ["shop", "migrate-28871234-7fxkq", "0/1", "Completed"]);
    assert.deepEqual(row("debug-shell"), ["default", "debug-shell", "0/1", "ContainerCreating"]);
    assert.deepEqual(row("api-typo-pull"), ["default", "api-typo-pull", "0/1", "ErrImagePull"]);
    assert.deepEqual(row("api-typo-backoff"), ["default", "api-typo-backoff", "0/1", "ImagePullBackOff"]);
    assert.match(t.find((cells) => cells[1] === "db-0")![4]!, /^1 \(\d+d ago\)$/, "restarts with the last restart's age");
    assert.equal(t.length, 11);
  });

  it("get pods -n NS NAME -o wide, and --chunk-size paging through continue tokens", async () => {
    const one = await kubectl(["get", "pods", "-n", "shop", "web-7d4b9c8f6-x2x9k", "-o", "wide"]);
    assert.equal(one.code, 0, one.stderr);
    const [head, row] = rows(one.stdout);
    assert.deepEqual(head, ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "NOMINATED NODE", "READINESS GATES"]);
    assert.deepEqual([row![0], row![5], row![6]], ["web-7d4b9c8f6-x2x9k", "10.244.1.12", "node-1"]);
    const paged = await kubectl(["get", "pods", "-A", "--chunk-size", "3", "-o", "name"]);
    assert.equal(paged.code, 0, paged.stderr);
    assert.equal(paged.stdout.trim().split("\n").length, 10);
    assert.ok(double.requestsTo("/api/v1/pods", (q) => q.query.get("limit") === "3" && q.query.has("continue")).length >= 2);
  });

  it("describe pod: the typed decoding of a pod (controller, OOM-killed last state, probes)", async () => {
    const db = await kubectl(["describe", "pod", "-n", "shop", "db-0"]);
    assert.equal(db.code, 0, db.stderr);
    assert.match(db.stdout, /Controlled By:\s+StatefulSet\/db/);
    assert.match(db.stdout, /Last State:\s+Terminated\n\s+Reason:\s+OOMKilled\n\s+Exit Code:\s+137/);
    assert.match(db.stdout, /Restart Count:\s+1/);
    const web = await kubectl(["describe", "pod", "-n", "shop", "web-7d4b9c8f6-q8h2n"]);
    assert.equal(web.code, 0, web.stderr);
    assert.match(web.stdout, /Readiness:\s+http-get http:\/\/:8080\/healthz delay=0s timeout=1s period=5s #success=1 #failure=3/);
    assert.match(web.stdout, /Controlled By:\s+ReplicaSet\/web-7d4b9c8f6/);
    // The image-pull failures: waiting reasons, and the limits the agent meters as the shape.
    const pull = await kubectl(["describe", "pod", "-n", "default", "api-typo-pull"]);
    assert.equal(pull.code, 0, pull.stderr);
    assert.match(pull.stdout, /State:\s+Waiting\n\s+Reason:\s+ErrImagePull/);
    assert.match(pull.stdout, /Limits:\n\s+cpu:\s+1500m\n\s+memory:\s+768Mi/);
    assert.match(pull.stdout, /QoS Class:\s+Guaranteed/);
    const backoff = await kubectl(["describe", "pod", "-n", "default", "api-typo-backoff"]);
    assert.equal(backoff.code, 0, backoff.stderr);
    assert.match(backoff.stdout, /State:\s+Waiting\n\s+Reason:\s+ImagePullBackOff/);
  });

  it("get deploy: Deployments as a Table", async () => {
    const r = await kubectl(["get", "deploy", "-n", "shop"]);
    assert.equal(r.code, 0, r.stderr);
    const t = rows(r.stdout);
    assert.deepEqual(t[0], ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]);
    assert.deepEqual(t.slice(1).map((c) => c.slice(0, 4)), [
      ["web", "1/2", "2", "1"],
      ["worker", "0/1", "1", "0"],
    ]);
  });

  it("metrics.k8s.io: get --raw returns the recorded PodMetricsList; kubectl top decodes it and its quantities", async () => {
    const raw = await kubectl(["get", "--raw", "/apis/metrics.k8s.io/v1beta1/pods"]);
    assert.equal(raw.code, 0, raw.stderr);
    assert.deepEqual(JSON.parse(raw.stdout), fixture("pod-metrics.json"));
    const top = await kubectl(["top", "pod", "-n", "shop"]);
    assert.equal(top.code, 0, top.stderr);
    const t = rows(top.stdout);
    assert.deepEqual(t[0], ["NAME", "CPU(cores)", "MEMORY(bytes)"]);
    assert.deepEqual(t.find((c) => c[0] === "db-0"), ["db-0", "1500m", "412Mi"]);
    assert.deepEqual(t.find((c) => c[0] === "web-7d4b9c8f6-x2x9k"), ["web-7d4b9c8f6-x2x9k", "6m", "23Mi"]);
  });

  it("logs: tail with timestamps, another container, a container the pod does not have", async () => {
    const r = await kubectl(["logs", "-n", "shop", "web-7d4b9c8f6-x2x9k", "--tail", "2", "--timestamps"]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.stdout.trim().split("\n").map((l) => l.split(" ")[0]), ["2025-11-22T08:00:03.52Z", "2025-11-22T08:00:06.004402117Z"]);
    const shipper = await kubectl(["logs", "-n", "shop", "web-7d4b9c8f6-x2x9k", "-c", "log-shipper"]);
    assert.equal(shipper.stdout, "Fluent Bit v3.1.9\n[2025/11/20 09:14:06] [ info] [output:stdout:stdout.0] worker #0 started\n");
    const bad = await kubectl(["logs", "-n", "shop", "web-7d4b9c8f6-x2x9k", "-c", "sidecar"]);
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /container sidecar is not valid for pod web-7d4b9c8f6-x2x9k/);
  });

  it("logs -f: follows until the stream ends", async () => {
    const child = spawn(KUBECTL, ["logs", "-f", "-n", "shop", "db-0", "--tail", "1", "--cache-dir", join(dir.path, "cache")], { env });
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((r) => child.on("exit", (code) => r(code)));
    try {
      const deadline = Date.now() + 10_000;
      while (double.logFollowers === 0 && Date.now() < deadline) await sleep(20);
      double.appendLog("shop", "db-0", "postgres", ["checkpoint complete"]);
      while (!out.includes("checkpoint complete") && Date.now() < deadline) await sleep(20);
      double.endLogFollowers("shop", "db-0");
      assert.equal(await exited, 0);
      assert.equal(out, "2025-11-21 03:12:08.900 UTC [1] LOG:  database system is ready to accept connections\ncheckpoint complete\n");
    } finally {
      child.kill();
    }
  });

  it("get pods --watch: the Table watch prints the change; -o json --output-watch-events shows the raw watch events", async () => {
    const table = spawn(KUBECTL, ["get", "pods", "-n", "default", "--watch", "--cache-dir", join(dir.path, "cache")], { env });
    const json = spawn(KUBECTL, ["get", "pods", "-n", "default", "--watch-only", "-o", "json", "--output-watch-events", "--cache-dir", join(dir.path, "cache")], { env });
    let tableOut = "";
    let jsonOut = "";
    table.stdout.on("data", (d: Buffer) => (tableOut += d.toString()));
    json.stdout.on("data", (d: Buffer) => (jsonOut += d.toString()));
    try {
      const deadline = Date.now() + 10_000;
      while (double.openWatches < 2 && Date.now() < deadline) await sleep(20);
      assert.equal(double.openWatches, 2, "both kubectl watches are open");
      double.updatePod("default", "debug-shell", (p) => {
        p.status.phase = "Running";
        p.status.podIP = "10.244.2.50";
        p.status.containerStatuses[0].state = { running: { startedAt: "2025-11-22T08:10:05Z" } };
      });
      while ((!/debug-shell\s+0\/1\s+Running/.test(tableOut) || !jsonOut.includes("10.244.2.50")) && Date.now() < deadline) await sleep(20);
      const lines = tableOut.trim().split("\n");
      assert.match(lines[0]!, /^NAME\s+READY\s+STATUS\s+RESTARTS\s+AGE$/);
      // The namespace's three pods first (in the double's order), then the change.
      assert.equal(lines.length, 5);
      assert.ok(lines.slice(1, 4).some((l) => /^debug-shell\s+0\/1\s+ContainerCreating\s+0\s+/.test(l)), tableOut);
      assert.ok(lines.slice(1, 4).some((l) => /^api-typo-pull\s+0\/1\s+ErrImagePull\s+0\s+/.test(l)), tableOut);
      assert.match(lines[4]!, /^debug-shell\s+0\/1\s+Running\s+0\s+/);
      const event = JSON.parse(jsonOut) as { type: string; object: { kind: string; status: { podIP: string } } };
      assert.equal(event.type, "MODIFIED");
      assert.equal(event.object.kind, "Pod");
      assert.equal(event.object.status.podIP, "10.244.2.50");
    } finally {
      table.kill();
      json.kill();
    }
  });

  it("get nodes -o json and describe node: conditions, cordon and taints decode as kubectl shows them", async () => {
    const r = await kubectl(["get", "nodes", "-o", "json"]);
    assert.equal(r.code, 0, r.stderr);
    const list = JSON.parse(r.stdout) as { items: { kind: string; metadata: { name: string; uid: string } }[] };
    const recorded = fixture("nodes.json") as { items: { metadata: { name: string; uid: string } }[] };
    assert.deepEqual(
      list.items.map((n) => `${n.kind} ${n.metadata.name} ${n.metadata.uid}`),
      recorded.items.map((n) => `Node ${n.metadata.name} ${n.metadata.uid}`),
    );
    const cordoned = await kubectl(["describe", "node", "node-2"]);
    assert.equal(cordoned.code, 0, cordoned.stderr);
    assert.match(cordoned.stdout, /Taints:\s+node\.kubernetes\.io\/unschedulable:NoSchedule/);
    assert.match(cordoned.stdout, /Unschedulable:\s+true/);
    assert.match(cordoned.stdout, /Ready\s+True\s+.*KubeletReady\s+kubelet is posting ready status/);
    assert.match(cordoned.stdout, /Kubelet Version:\s+v1\.32\.4/);
    const lost = await kubectl(["describe", "node", "node-3"]);
    assert.equal(lost.code, 0, lost.stderr);
    assert.match(lost.stdout, /Ready\s+Unknown\s+.*NodeStatusUnknown\s+Kubelet stopped posting node status\./);
    assert.match(lost.stdout, /MemoryPressure\s+Unknown/);
    assert.match(lost.stdout, /Unschedulable:\s+false/);
    const one = await kubectl(["get", "nodes", "-o", "name", "--field-selector", "spec.unschedulable=true"]);
    assert.equal(one.code, 0, one.stderr);
    assert.equal(one.stdout.trim(), "node/node-2");
  });

  it("get services and endpointslices -o json, and describe service: ports, selector, load balancer ingress", async () => {
    const svc = await kubectl(["get", "services", "-A", "-o", "json"]);
    assert.equal(svc.code, 0, svc.stderr);
    const services = JSON.parse(svc.stdout) as { items: { kind: string; metadata: { namespace: string; name: string } }[] };
    assert.deepEqual(services.items.map((s) => `${s.kind} ${s.metadata.namespace}/${s.metadata.name}`), ["Service default/kubernetes", "Service shop/db", "Service shop/web", "Service shop/web-public"]);
    const slices = await kubectl(["get", "endpointslices", "-n", "shop", "-l", "kubernetes.io/service-name=web", "-o", "json"]);
    assert.equal(slices.code, 0, slices.stderr);
    const web = JSON.parse(slices.stdout) as { items: { kind: string; metadata: { name: string }; endpoints: { addresses: string[]; conditions: { ready: boolean } }[] }[] };
    assert.deepEqual(web.items.map((s) => `${s.kind} ${s.metadata.name}`), ["EndpointSlice web-5hq4m"]);
    assert.deepEqual(web.items[0]!.endpoints.map((e) => `${e.addresses[0]} ${e.conditions.ready}`), ["10.244.1.12 true", "10.244.2.7 false"]);
    const described = await kubectl(["describe", "service", "-n", "shop", "web-public"]);
    assert.equal(described.code, 0, described.stderr);
    assert.match(described.stdout, /Type:\s+LoadBalancer/);
    assert.match(described.stdout, /Selector:\s+app=web/);
    assert.match(described.stdout, /LoadBalancer Ingress:\s+203\.0\.113\.10 \(VIP\)/);
    assert.match(described.stdout, /NodePort:\s+http\s+31380\/TCP/);
  });

  it("get nodes --watch-only -o json: a cordon arrives as a MODIFIED Node", async () => {
    const child = spawn(KUBECTL, ["get", "nodes", "--watch-only", "-o", "json", "--output-watch-events", "--cache-dir", join(dir.path, "cache")], { env });
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    try {
      const deadline = Date.now() + 10_000;
      while (double.watchesOf("nodes") === 0 && Date.now() < deadline) await sleep(20);
      double.updateObject("nodes", "", "node-1", (n) => (n.spec.unschedulable = true));
      while (!out.includes("unschedulable") && Date.now() < deadline) await sleep(20);
      const event = JSON.parse(out) as { type: string; object: { kind: string; metadata: { name: string }; spec: { unschedulable: boolean } } };
      assert.deepEqual([event.type, event.object.kind, event.object.metadata.name, event.object.spec.unschedulable], ["MODIFIED", "Node", "node-1", true]);
    } finally {
      child.kill();
      double.updateObject("nodes", "", "node-1", (n) => delete n.spec.unschedulable);
    }
  });

  it("a missing pod: kubectl's NotFound message from the Status body", async () => {
    const r = await kubectl(["get", "pods", "-n", "shop", "ghost"]);
    assert.equal(r.code, 1);
    assert.equal(r.stderr.trim(), 'Error from server (NotFound): pods "ghost" not found');
    const ns = await kubectl(["get", "pods", "-n", "nowhere", "ghost"]);
    assert.equal(ns.stderr.trim(), 'Error from server (NotFound): namespaces "nowhere" not found', "kubectl looks the namespace up then");
  });

  it("a wrong token: kubectl's 401 message", async () => {
    double.token = "right";
    try {
      const config = join(dir.path, "wrong-token");
      double.writeKubeconfig(config, { token: "wrong" });
      const r = await kubectl(["get", "pods", "-A"], { env: { ...env, KUBECONFIG: config } });
      assert.equal(r.code, 1);
      assert.match(r.stderr, /error: You must be logged in to the server/);
    } finally {
      double.token = undefined;
    }
  });
});
