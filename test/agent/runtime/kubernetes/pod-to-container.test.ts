import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { ContainerState, HealthStatus, LogStream, type Container } from "../../../../gen/fleetlet/agent/v1/runtime_pb.js";
import { KubeObjectError, toPod, toPodMetricsList, type Pod } from "../../../../agent/runtime/kubernetes/kube-objects.js";
import { podActions } from "../../../../agent/runtime/kubernetes/pod-events.js";
import { PodLogReader } from "../../../../agent/runtime/kubernetes/pod-log-reader.js";
import { podStats } from "../../../../agent/runtime/kubernetes/pod-stats.js";
import { lastExitCode, podHealth, podToContainer } from "../../../../agent/runtime/kubernetes/pod-to-container.js";
import { KUBE_FIXTURES } from "../../../helpers/kube-api-double.js";
import { prng } from "../../../helpers/random-message.js";

type Json = Record<string, unknown>;
const raw = JSON.parse(readFileSync(join(KUBE_FIXTURES, "pods.json"), "utf8")) as { items: Json[] };
const metricsList = toPodMetricsList(JSON.parse(readFileSync(join(KUBE_FIXTURES, "pod-metrics.json"), "utf8")));
const rawPod = (name: string): Json => structuredClone(raw.items.find((p) => (p.metadata as { name: string }).name === name)!);
const pod = (name: string): Pod => toPod(rawPod(name));
const container = (name: string): Container => podToContainer(pod(name), undefined);
const iso = (c: Container, f: "createdAt" | "startedAt" | "finishedAt") => (c[f] ? timestampDate(c[f]).toISOString() : undefined);

describe("pod → Container", () => {
  it("a ready Deployment pod of two containers", () => {
    const c = podToContainer(pod("web-7d4b9c8f6-x2x9k"), { kind: "Deployment", name: "web" });
    assert.equal(c.id, "k8s-3f1c2a4e-8b7d-4c6e-9a1f-2b3c4d5e6f70");
    assert.equal(c.runtime, "kubernetes");
    assert.equal(c.externalId, "shop/web-7d4b9c8f6-x2x9k");
    assert.equal(c.name, "web-7d4b9c8f6-x2x9k");
    assert.equal(c.namespace, "shop");
    assert.equal(c.state, ContainerState.RUNNING);
    assert.equal(c.exitCode, undefined);
    assert.deepEqual(c.podContainers, ["web", "log-shipper"]);
    assert.equal(c.image, "docker.io/library/nginx:1.27.2", "the default container's image");
    assert.equal(c.ip, "10.244.1.12");
    assert.equal(c.node, "node-1");
    assert.equal(c.controllerKind, "Deployment");
    assert.equal(c.controllerName, "web");
    assert.equal(c.restartCount, 0);
    assert.equal(c.oomKilled, false);
    assert.deepEqual(c.labels, { app: "web", "pod-template-hash": "7d4b9c8f6", tier: "frontend" });
    assert.equal(iso(c, "createdAt"), "2025-11-20T09:14:03.000Z");
    assert.equal(iso(c, "startedAt"), "2025-11-20T09:14:03.000Z");
    assert.equal(c.finishedAt, undefined);
    assert.equal(c.health?.hasHealthcheck, true);
    assert.equal(c.health?.status, HealthStatus.HEALTHY);
  });

  it("states from phase and container statuses", () => {
    const cases: [string, ContainerState, number | undefined][] = [
      ["db-0", ContainerState.RUNNING, undefined],
      ["migrate-28871234-7fxkq", ContainerState.COMPLETED, 0],
      ["report-9z8xw", ContainerState.EXITED, 2],
      ["worker-5f6d7c8b9-tlz4p", ContainerState.RESTARTING, 1],
      ["debug-shell", ContainerState.CREATED, undefined],
    ];
    for (const [name, state, exit] of cases) {
      const c = container(name);
      assert.equal(c.state, state, name);
      assert.equal(c.exitCode, exit, name);
    }
    assert.equal(iso(container("migrate-28871234-7fxkq"), "finishedAt"), "2025-11-22T06:00:07.000Z");
    assert.equal(iso(container("report-9z8xw"), "finishedAt"), "2025-11-22T05:31:38.000Z");
    const unknown = rawPod("db-0");
    (unknown.status as Json).phase = "Unknown";
    assert.equal(podToContainer(toPod(unknown), undefined).state, ContainerState.UNSPECIFIED);
  });

  it("restarts summed, OOM kills seen in lastState, host-network pods get the node's IP", () => {
    const db = container("db-0");
    assert.equal(db.restartCount, 1);
    assert.equal(db.oomKilled, true);
    assert.equal(container("worker-5f6d7c8b9-tlz4p").restartCount, 5);
    assert.equal(container("node-exporter-5kq7z").ip, "192.168.49.2");
    assert.equal(container("debug-shell").ip, "");
    const dual = rawPod("db-0");
    Object.assign(dual.status as Json, { podIP: "fd00::13", podIPs: [{ ip: "fd00::13" }, { ip: "10.244.1.13" }] });
    assert.equal(podToContainer(toPod(dual), undefined).ip, "10.244.1.13", "the IPv4 address of a dual-stack pod");
    assert.equal(lastExitCode(pod("worker-5f6d7c8b9-tlz4p")), 1);
    assert.equal(lastExitCode(pod("db-0")), 137);
  });

  it("readiness as health: healthy, unhealthy (was ready), starting (not ready since it started), none", () => {
    assert.equal(podHealth(pod("web-7d4b9c8f6-x2x9k")).status, HealthStatus.HEALTHY);
    const unhealthy = podHealth(pod("web-7d4b9c8f6-q8h2n"));
    assert.equal(unhealthy.status, HealthStatus.UNHEALTHY);
    assert.equal(unhealthy.hasHealthcheck, true);
    assert.equal(unhealthy.lastOutput, "containers with unready status: [web]");
    assert.equal(podHealth(pod("debug-shell")).status, HealthStatus.STARTING, "pending with a probe");
    const none = podHealth(pod("db-0"));
    assert.equal(none.hasHealthcheck, false);
    assert.equal(none.status, HealthStatus.NONE);
    // The web container restarts after the pod went unready: starting again, not unhealthy.
    const restarted = rawPod("web-7d4b9c8f6-q8h2n");
    const web = ((restarted.status as Json).containerStatuses as Json[]).find((s) => s.name === "web")!;
    web.state = { running: { startedAt: "2025-11-22T07:59:30Z" } };
    assert.equal(podHealth(toPod(restarted)).status, HealthStatus.STARTING);
  });

  it("fuzz: pods with random fields replaced by random JSON give a Container or KubeObjectError", () => {
    const seed = Date.now() % 1e9;
    const rnd = prng(seed);
    const junk = (): unknown => [null, 0, -1, 1.5, "", "x", "2025-13-45T99:00:00Z", true, [], {}, [1, "a"], { a: 1 }][Math.floor(rnd() * 12)];
    const mutate = (v: unknown, depth: number): unknown => {
      if (rnd() < 0.08) return junk();
      if (Array.isArray(v)) return v.map((x) => mutate(x, depth + 1));
      if (v && typeof v === "object" && depth < 8) return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, mutate(x, depth + 1)]));
      return v;
    };
    let ok = 0;
    for (let i = 0; i < 2_000; i++) {
      const p = mutate(raw.items[Math.floor(rnd() * raw.items.length)], 0);
      try {
        const c = podToContainer(toPod(p), undefined);
        assert.equal(typeof c.externalId, "string");
        podStats(toPod(p), { metrics: metricsList[0] });
        ok++;
      } catch (e) {
        assert.ok(e instanceof KubeObjectError, `seed ${seed}: ${String(e)}`);
      }
    }
    assert.ok(ok > 100, `seed ${seed}: ${ok}`);
  });
});

describe("pod changes → actions", () => {
  const running = container("db-0");
  const names = (prev: Container | undefined, next: Container, last?: number) => podActions(prev, next, { lastExitCode: last }).map((a) => a.action + (a.exitCode !== undefined ? `(${a.exitCode})` : "") + (a.healthStatus ? `:${a.healthStatus}` : ""));

  it("a new pod: create, plus start when running, die when already finished; a first 'starting' is not news", () => {
    assert.deepEqual(names(undefined, container("web-7d4b9c8f6-x2x9k")), ["create", "start", "health_status:healthy"]);
    assert.deepEqual(names(undefined, container("report-9z8xw")), ["create", "die(2)"]);
    assert.deepEqual(names(undefined, container("debug-shell")), ["create"]);
  });

  it("transitions: start, die with the exit code, oom + die + restart on an OOM restart, health changes", () => {
    assert.deepEqual(names(container("debug-shell"), { ...container("debug-shell"), state: ContainerState.RUNNING } as Container), ["start"]);
    assert.deepEqual(names(running, { ...running, state: ContainerState.EXITED, exitCode: 3 } as Container), ["die(3)"]);
    const before = { ...running, restartCount: 0, oomKilled: false } as Container;
    assert.deepEqual(names(before, running, 137), ["oom", "die(137)", "restart"]);
    const healthy = container("web-7d4b9c8f6-x2x9k");
    const unhealthy = { ...healthy, health: podHealth(pod("web-7d4b9c8f6-q8h2n")) } as Container;
    assert.deepEqual(names(healthy, unhealthy), ["health_status:unhealthy"]);
    assert.deepEqual(names(unhealthy, healthy), ["health_status:healthy"]);
    assert.deepEqual(names(running, running), [], "no change, no event");
  });
});

describe("pod stats from metrics.k8s.io", () => {
  const metricsOf = (name: string) => metricsList.find((m) => m.name === name);

  it("cpu_percent = cores × 100, working set summed, limits summed; the rest unset with reasons", () => {
    const s = podStats(pod("web-7d4b9c8f6-x2x9k"), { metrics: metricsOf("web-7d4b9c8f6-x2x9k") });
    assert.ok(Math.abs(s.cpuPercent! - (0.001204331 + 0.004517452) * 100) < 1e-9, String(s.cpuPercent));
    assert.equal(s.memoryWorkingSetBytes, (14556n + 9764n) * 1024n);
    assert.equal(s.memoryLimitBytes, (256n + 64n) * 1024n * 1024n);
    assert.equal(s.memoryUnlimited, false);
    assert.equal(s.netRxBytes, undefined);
    assert.equal(s.blockReadBytes, undefined);
    assert.equal(s.cpuUsageNsec, undefined);
    for (const f of ["net_rx_bytes", "net_tx_bytes", "block_read_bytes", "block_write_bytes", "cpu_usage_nsec", "memory_usage_bytes"]) {
      assert.ok(s.unavailable.some((u) => u.startsWith(`${f}: `)), f);
    }
    assert.equal(timestampDate(s.timestamp!).toISOString(), "2025-11-22T08:02:03.000Z", "the metrics sample's time");
    assert.equal(s.instanceId, "k8s-3f1c2a4e-8b7d-4c6e-9a1f-2b3c4d5e6f70");
  });

  it("a container without a memory limit makes the pod unlimited; no sample = unset with the reason", () => {
    const db = podStats(pod("db-0"), { metrics: metricsOf("db-0") });
    assert.equal(db.cpuPercent, 150);
    assert.equal(db.memoryUnlimited, true);
    assert.equal(db.memoryLimitBytes, undefined);
    const worker = podStats(pod("worker-5f6d7c8b9-tlz4p"), {});
    assert.equal(worker.cpuPercent, undefined);
    assert.equal(worker.memoryWorkingSetBytes, undefined);
    assert.equal(worker.memoryLimitBytes, 1024n * 1024n * 1024n);
    assert.ok(worker.unavailable.some((u) => u.startsWith("cpu_percent: metrics.k8s.io has no sample")));
    const none = podStats(pod("db-0"), { unavailable: "metrics.k8s.io is not served" });
    assert.ok(none.unavailable.includes("memory_working_set_bytes: metrics.k8s.io is not served"));
  });
});

describe("pod log text → LogLines", () => {
  const enc = (s: string) => Buffer.from(s);

  it("moves the kubelet's RFC3339Nano prefix into the timestamp, keeps nanoseconds, every line STDOUT", () => {
    const r = new PodLogReader(true);
    const lines = [...r.push(enc("2025-11-22T08:00:01.004417912Z first line\n2025-11-22T08:00:03.52Z sec")), ...r.push(enc("ond\nno timestamp here\n")), ...r.end()];
    assert.deepEqual(lines.map((l) => l.text), ["first line", "second", "no timestamp here"]);
    assert.equal(lines[0]!.timestamp!.nanos, 4417912);
    assert.equal(lines[1]!.timestamp!.nanos, 520000000);
    assert.equal(lines[2]!.timestamp, undefined);
    assert.ok(lines.every((l) => l.stream === LogStream.STDOUT));
  });

  it("without timestamps the text is untouched; an unterminated end is flagged", () => {
    const r = new PodLogReader(false);
    const lines = [...r.push(enc("2025-11-22T08:00:01Z kept as text\ntail")), ...r.end()];
    assert.deepEqual(lines.map((l) => [l.text, l.unterminated]), [["2025-11-22T08:00:01Z kept as text", false], ["tail", true]]);
  });

  it("a line over 64 KiB: pieces continued, the timestamp stripped once and given to every piece", () => {
    const r = new PodLogReader(true);
    const long = "x".repeat(150 * 1024);
    const lines = [...r.push(enc(`2025-11-22T08:00:01.5Z ${long}\n2025-11-22T08:00:02Z next\n`)), ...r.end()];
    assert.equal(lines.length, 4);
    assert.deepEqual(lines.map((l) => l.continued), [true, true, false, false]);
    assert.equal(lines.slice(0, 3).map((l) => l.text).join(""), long);
    for (const l of lines.slice(0, 3)) assert.equal(l.timestamp!.nanos, 500000000);
    assert.equal(lines[3]!.text, "next");
    assert.equal(lines[3]!.timestamp!.nanos, 0);
  });

  it("invalid UTF-8 after the prefix: raw keeps the bytes without the prefix", () => {
    const r = new PodLogReader(true);
    const [line] = r.push(Buffer.concat([enc("2025-11-22T08:00:01Z a"), Buffer.from([0xff, 0xfe]), enc("b\n")]));
    assert.deepEqual([...line!.raw], [0x61, 0xff, 0xfe, 0x62]);
    assert.equal(line!.text, "a\ufffd\ufffdb");
  });
});
