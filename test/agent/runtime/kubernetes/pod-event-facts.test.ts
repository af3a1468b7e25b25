import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { timestampDate, timestampNow } from "@bufbuild/protobuf/wkt";
import { HealthStatus, type Container } from "../../../../gen/fleetlet/agent/v1/runtime_pb.js";
import { toPod, type Pod } from "../../../../agent/runtime/kubernetes/kube-objects.js";
import { podFacts, podFailingStreak } from "../../../../agent/runtime/kubernetes/pod-event-facts.js";
import { podActions, podEvent } from "../../../../agent/runtime/kubernetes/pod-events.js";
import { podLimits } from "../../../../agent/runtime/kubernetes/pod-limits.js";
import { podHealth, podToContainer } from "../../../../agent/runtime/kubernetes/pod-to-container.js";
import { KUBE_FIXTURES } from "../../../helpers/kube-api-double.js";

// What a pod object says about when its changes happened, why it fails and what it may use
// (error_detail, event times, failing streak, limits), from the recorded-shape pods.

// biome-ignore lint/suspicious/noExplicitAny: fixture pods are raw JSON, edited field by field
type Json = Record<string, any>;
const raw = JSON.parse(readFileSync(join(KUBE_FIXTURES, "pods.json"), "utf8")) as { items: Json[] };
const rawPod = (name: string): Json => structuredClone(raw.items.find((p) => p.metadata.name === name)!);
const pod = (name: string, edit?: (p: Json) => void): Pod => {
  const p = rawPod(name);
  edit?.(p);
  return toPod(p);
};
const container = (p: Pod): Container => podToContainer(p, undefined);
const iso = (e: { timestamp?: Parameters<typeof timestampDate>[0] }) => timestampDate(e.timestamp!).toISOString();

describe("error_detail from container state reasons and messages", () => {
  it("CrashLoopBackOff, ErrImagePull, ImagePullBackOff, a failed Job (exit code), an OOM-killed last run; nothing for healthy or starting pods", () => {
    assert.equal(
      podFacts(pod("worker-5f6d7c8b9-tlz4p")).errorDetail,
      "worker: CrashLoopBackOff: back-off 2m40s restarting failed container=worker pod=worker-5f6d7c8b9-tlz4p_shop(d2e3f4a5-b6c7-4d8e-9f0a-1b2c3d4e5f68)",
    );
    assert.equal(podFacts(pod("worker-5f6d7c8b9-tlz4p")).lastRunDetail, "worker: Error (exit code 1)");
    assert.match(podFacts(pod("api-typo-pull")).errorDetail, /^app: ErrImagePull: failed to pull and unpack image "docker\.io\/library\/ngnix:1\.27": .*pull access denied/);
    assert.equal(podFacts(pod("api-typo-backoff")).errorDetail, 'app: ImagePullBackOff: Back-off pulling image "docker.io/library/ngnix:1.27"');
    assert.equal(podFacts(pod("report-9z8xw")).errorDetail, "report: Error (exit code 2)");
    assert.equal(podFacts(pod("db-0")).errorDetail, "", "running again after its OOM kill");
    assert.equal(podFacts(pod("db-0")).lastRunDetail, "postgres: OOMKilled (exit code 137)");
    for (const ok of ["web-7d4b9c8f6-x2x9k", "migrate-28871234-7fxkq", "debug-shell"]) {
      assert.equal(podFacts(pod(ok)).errorDetail, "", `${ok}: Completed and ContainerCreating are not errors`);
    }
    // The pod's own reason (eviction) comes first.
    const evicted = pod("report-9z8xw", (p) => {
      p.status.reason = "Evicted";
      p.status.message = "The node was low on resource: memory.";
    });
    assert.equal(podFacts(evicted).errorDetail, "pod: Evicted: The node was low on resource: memory.; report: Error (exit code 2)");
  });

  it("events carry it: die of a failed pod, oom + die of an OOM restart (the ended run's), create of a pod already failing", () => {
    const report = pod("report-9z8xw");
    const dying = podActions({ ...container(report), state: container(pod("debug-shell")).state } as Container, container(report), podFacts(report));
    assert.deepEqual(dying.map((a) => [a.action, a.errorDetail]), [["die", "report: Error (exit code 2)"]]);
    const db = pod("db-0");
    const beforeRestart = { ...container(db), restartCount: 0, oomKilled: false } as Container;
    const restart = podActions(beforeRestart, container(db), podFacts(db));
    assert.deepEqual(restart.map((a) => [a.action, a.errorDetail ?? ""]), [
      ["oom", "postgres: OOMKilled (exit code 137)"],
      ["die", "postgres: OOMKilled (exit code 137)"],
      ["restart", ""],
    ]);
    const created = podActions(undefined, container(pod("api-typo-pull")), podFacts(pod("api-typo-pull")));
    assert.deepEqual(created.map((a) => a.action), ["create"]);
    assert.match(created[0]!.errorDetail ?? "", /ErrImagePull/);
  });

  it("a new error with no other change is an 'error' event, once per detail", () => {
    const creating = pod("debug-shell");
    const pulling = pod("debug-shell", (p) => {
      p.status.containerStatuses[0].state = { waiting: { reason: "ErrImagePull", message: "pull access denied" } };
    });
    const backoff = pod("debug-shell", (p) => {
      p.status.containerStatuses[0].state = { waiting: { reason: "ImagePullBackOff", message: 'Back-off pulling image "docker.io/library/busybox:1.36.1"' } };
    });
    const first = podActions(container(creating), container(pulling), podFacts(pulling), podFacts(creating).errorDetail);
    assert.deepEqual(first.map((a) => [a.action, a.errorDetail]), [["error", "shell: ErrImagePull: pull access denied"]]);
    assert.deepEqual(podActions(container(pulling), container(pulling), podFacts(pulling), podFacts(pulling).errorDetail), [], "the same error again is not news");
    const second = podActions(container(pulling), container(backoff), podFacts(backoff), podFacts(pulling).errorDetail);
    assert.deepEqual(second.map((a) => a.action), ["error"]);
    const e = podEvent(container(backoff), second[0]!, false);
    assert.equal(e.errorDetail, 'shell: ImagePullBackOff: Back-off pulling image "docker.io/library/busybox:1.36.1"');
    // The API dates no waiting reason: the time the agent saw it.
    assert.ok(Math.abs(timestampDate(e.timestamp!).getTime() - timestampDate(timestampNow()).getTime()) < 5_000);
  });
});

describe("event times from the objects, not from when the agent saw the change", () => {
  it("create, start, die, oom, restart and health_status carry the object's times", () => {
    const web = pod("web-7d4b9c8f6-x2x9k");
    const created = podActions(undefined, container(web), podFacts(web)).map((a) => [a.action, iso(podEvent(container(web), a, false))]);
    assert.deepEqual(created, [
      ["create", "2025-11-20T09:14:03.000Z"],
      ["start", "2025-11-20T09:14:06.000Z"],
      ["health_status", "2025-11-20T09:14:11.000Z"],
    ]);
    const db = pod("db-0");
    const restarted = podActions({ ...container(db), restartCount: 0, oomKilled: false } as Container, container(db), podFacts(db));
    assert.deepEqual(
      restarted.map((a) => [a.action, iso(podEvent(container(db), a, false))]),
      [
        ["oom", "2025-11-21T03:12:06.000Z"],
        ["die", "2025-11-21T03:12:06.000Z"],
        ["restart", "2025-11-21T03:12:08.000Z"],
      ],
    );
    const report = pod("report-9z8xw");
    const died = podActions(undefined, container(report), podFacts(report));
    assert.deepEqual(
      died.map((a) => [a.action, iso(podEvent(container(report), a, true))]),
      [
        ["create", "2025-11-22T05:30:12.000Z"],
        ["die", "2025-11-22T05:31:38.000Z"],
      ],
      "a relist's synthetic events are dated by the object too",
    );
  });

  it("a crash loop: the die reported at the restart is dated when that run ended", () => {
    const looping = pod("worker-5f6d7c8b9-tlz4p");
    const restarted = pod("worker-5f6d7c8b9-tlz4p", (p) => {
      const s = p.status.containerStatuses[0];
      s.restartCount = 6;
      s.lastState = { terminated: { exitCode: 1, reason: "Error", startedAt: "2025-11-22T07:57:44Z", finishedAt: "2025-11-22T07:57:46Z" } };
      s.state = { running: { startedAt: "2025-11-22T08:00:26Z" } };
    });
    const actions = podActions(container(looping), container(restarted), podFacts(restarted), podFacts(looping).errorDetail);
    assert.deepEqual(
      actions.map((a) => [a.action, iso(podEvent(container(restarted), a, false)), a.errorDetail ?? ""]),
      [
        ["die", "2025-11-22T07:57:46.000Z", "worker: Error (exit code 1)"],
        ["restart", "2025-11-22T08:00:26.000Z", ""],
        ["start", "2025-11-22T08:00:26.000Z", ""],
      ],
    );
  });
});

describe("failing streak", () => {
  it("the restart count of a not-ready container whose last run failed; 0 when ready or never restarted", () => {
    assert.equal(podFailingStreak(pod("worker-5f6d7c8b9-tlz4p")), 5, "CrashLoopBackOff after 5 restarts");
    assert.equal(podFailingStreak(pod("db-0")), 0, "ready again after its OOM restart");
    assert.equal(podFailingStreak(pod("api-typo-backoff")), 0, "never ran");
    // Through health: a probed crash-looping pod is UNHEALTHY with the streak.
    const probed = pod("worker-5f6d7c8b9-tlz4p", (p) => {
      p.spec.containers[0].readinessProbe = { httpGet: { path: "/ready", port: 8080 } };
    });
    const health = podHealth(probed);
    assert.equal(health.status, HealthStatus.UNHEALTHY);
    assert.equal(health.failingStreak, 5);
    assert.equal(podHealth(pod("web-7d4b9c8f6-x2x9k")).failingStreak, 0);
  });
});

describe("limits → shape", () => {
  it("containers' limits summed; one container without a limit makes that resource unlimited; a pod-level limit wins", () => {
    assert.deepEqual(podLimits(pod("api-typo-pull")), { cpuCores: 1.5, memoryBytes: 768n * 1024n * 1024n });
    assert.deepEqual(podLimits(pod("api-typo-backoff")), { cpuCores: 2, memoryBytes: 1024n ** 3n });
    // web: 500m + no cpu limit on the log shipper; 256Mi + 64Mi.
    assert.deepEqual(podLimits(pod("web-7d4b9c8f6-x2x9k")), { memoryBytes: 320n * 1024n * 1024n });
    assert.deepEqual(podLimits(pod("db-0")), {}, "requests only: no limits");
    const podLevel = pod("web-7d4b9c8f6-x2x9k", (p) => {
      p.spec.resources = { limits: { cpu: "3", memory: "1Gi" } };
    });
    assert.deepEqual(podLimits(podLevel), { cpuCores: 3, memoryBytes: 1024n ** 3n });
  });
});
