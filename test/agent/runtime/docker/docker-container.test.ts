import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { ContainerState, HealthStatus } from "../../../../gen/fleetlet/agent/v1/runtime_pb.js";
import { dockerInstanceId, dockerLimits, dockerState, inspectToContainer, inspectToHealth } from "../../../../agent/runtime/docker/docker-container.js";
import type { DockerInspect } from "../../../../agent/runtime/docker/docker-api-types.js";
import { inspectFixture } from "./docker-fixtures.js";

describe("docker inspect → Container (recorded inspect JSON)", () => {
  it("maps a running TTY container with compose labels", () => {
    const raw = inspectFixture("running-tty-compose");
    const c = inspectToContainer(raw);
    assert.equal(c.id, "docker-a95651712a13");
    assert.equal(c.id, dockerInstanceId(raw.Id));
    assert.equal(c.runtime, "docker");
    assert.equal(c.externalId, "a95651712a13747952a8ca0dc4d86200ec9c477e2b59ada775acb62248902cfd");
    assert.equal(c.name, "web", "no leading /");
    assert.equal(c.image, "fleetlet-test/busybox:1", "the reference, not the sha");
    assert.equal(c.state, ContainerState.RUNNING);
    assert.equal(c.exitCode, undefined, "not exited: no exit code");
    assert.equal(c.oomKilled, false);
    assert.equal(c.pid, 28232);
    assert.equal(c.tty, true);
    assert.equal(c.composeProject, "shop");
    assert.equal(c.composeService, "web");
    assert.deepEqual(c.labels, { "com.docker.compose.project": "shop", "com.docker.compose.service": "web", tier: "front" });
    assert.equal(c.restartCount, 0);
    assert.equal(c.ip, "", "--network none has no address");
    assert.equal(c.startedAt?.seconds, BigInt(Date.parse("2026-11-22T03:05:15Z") / 1000));
    assert.equal(c.startedAt?.nanos, 719209832, "nanoseconds kept");
    assert.equal(c.createdAt?.nanos, 545663761);
    assert.equal(c.finishedAt, undefined, "Go's zero time is unset, not year 1");
    assert.equal(c.health?.hasHealthcheck, false);
    assert.equal(c.health?.status, HealthStatus.NONE);
  });

  it("maps an exited container with its exit code and finish time", () => {
    const c = inspectToContainer(inspectFixture("exited-7"));
    assert.equal(c.name, "exited7");
    assert.equal(c.state, ContainerState.EXITED);
    assert.equal(c.exitCode, 7);
    assert.equal(c.pid, undefined, "no pid once exited");
    assert.equal(c.tty, false);
    assert.equal(c.labels.a, "b");
    assert.equal(c.composeProject, "");
    assert.equal(c.finishedAt?.seconds, BigInt(Date.parse("2026-11-22T03:05:37Z") / 1000));
    assert.equal(c.finishedAt?.nanos, 765560521);
  });

  it("maps an OOM-killed container: exit 137 and oom_killed from State.OOMKilled", () => {
    const c = inspectToContainer(inspectFixture("oom-killed"));
    assert.equal(c.state, ContainerState.EXITED);
    assert.equal(c.exitCode, 137);
    assert.equal(c.oomKilled, true);
  });

  it("maps paused (pid kept: the process exists, frozen) and created (never started)", () => {
    const p = inspectToContainer(inspectFixture("paused"));
    assert.equal(p.state, ContainerState.PAUSED);
    assert.equal(p.pid, 28382);
    assert.equal(p.exitCode, undefined);
    const c = inspectToContainer(inspectFixture("created"));
    assert.equal(c.state, ContainerState.CREATED);
    assert.equal(c.exitCode, undefined, "ExitCode 0 of a container that never ran is not an exit");
    assert.equal(c.startedAt, undefined);
    assert.equal(c.finishedAt, undefined);
    assert.equal(c.pid, undefined);
  });

  it("takes the IP from the container's network", () => {
    const c = inspectToContainer(inspectFixture("network-limited"));
    assert.equal(c.ip, "172.17.0.2");
  });

  it("maps every State.Status, including removing and dead", () => {
    const withStatus = (Status: string): DockerInspect => ({ Id: "f".repeat(64), State: { Status } });
    assert.equal(dockerState(withStatus("removing").State), ContainerState.REMOVING);
    assert.equal(dockerState(withStatus("dead").State), ContainerState.DEAD);
    assert.equal(dockerState(withStatus("restarting").State), ContainerState.RESTARTING);
    assert.equal(inspectToContainer({ ...withStatus("dead"), State: { Status: "dead", ExitCode: 255 } }).exitCode, 255, "dead has exited");
    // Engines that leave Status out: the booleans.
    assert.equal(dockerState({ Running: true, Paused: true }), ContainerState.PAUSED);
    assert.equal(dockerState({ Running: true }), ContainerState.RUNNING);
    assert.equal(dockerState(undefined), ContainerState.UNSPECIFIED);
  });

  it("survives null Labels, Networks and Health", () => {
    const c = inspectToContainer({
      Id: "a".repeat(64),
      Name: "/x",
      State: { Status: "running", Pid: 5, Health: null },
      Config: { Labels: null, Healthcheck: null },
      NetworkSettings: { Networks: null },
    });
    assert.deepEqual(c.labels, {});
    assert.equal(c.ip, "");
    assert.equal(c.health?.hasHealthcheck, false);
  });
});

describe("docker health (recorded inspect JSON)", () => {
  it("healthy: status, failing streak 0, the last probe's output, exit code and end time", () => {
    const h = inspectToHealth(inspectFixture("healthy"));
    assert.equal(h.hasHealthcheck, true);
    assert.equal(h.status, HealthStatus.HEALTHY);
    assert.equal(h.failingStreak, 0);
    assert.equal(h.lastOutput, "");
    assert.equal(h.lastExitCode, 0);
    // End of the last log entry (2026-11-22T03:08:09.433517338Z).
    assert.equal(h.lastProbeAt?.seconds, BigInt(Date.parse("2026-11-22T03:08:09Z") / 1000));
    assert.equal(h.lastProbeAt?.nanos, 433517338);
  });

  it("unhealthy: failing streak and the last probe's output", () => {
    const h = inspectToHealth(inspectFixture("unhealthy"));
    assert.equal(h.status, HealthStatus.UNHEALTHY);
    assert.ok(h.failingStreak >= 3);
    assert.equal(h.lastOutput, "probe-failed\n");
    assert.equal(h.lastExitCode, 3);
  });

  it('--no-healthcheck (Test ["NONE"]) is no healthcheck, status NONE', () => {
    const raw = inspectFixture("no-healthcheck");
    assert.deepEqual(raw.Config?.Healthcheck?.Test, ["NONE"]);
    const h = inspectToHealth(raw);
    assert.equal(h.hasHealthcheck, false);
    assert.equal(h.status, HealthStatus.NONE);
    assert.equal(h.lastExitCode, undefined);
  });

  it("a healthcheck not probed yet: STARTING while running, UNSPECIFIED when not running", () => {
    const base = inspectFixture("healthy");
    const running: DockerInspect = { ...base, State: { ...base.State, Health: undefined } };
    assert.equal(inspectToHealth(running).status, HealthStatus.STARTING);
    const created: DockerInspect = { ...base, State: { Status: "created" } };
    assert.equal(inspectToHealth(created).status, HealthStatus.UNSPECIFIED);
    assert.equal(inspectToHealth(created).hasHealthcheck, true);
  });

  it("an empty Test is no healthcheck", () => {
    assert.equal(inspectToHealth({ Id: "b".repeat(64), Config: { Healthcheck: { Test: [] } } }).hasHealthcheck, false);
  });
});

describe("docker limits (recorded inspect JSON)", () => {
  it("--cpus 1.5 --memory 256m: NanoCpus and Memory", () => {
    assert.deepEqual(dockerLimits(inspectFixture("cpus-memory-limited").HostConfig), { cpuCores: 1.5, memoryBytes: 268435456n });
  });

  it("--cpu-quota 50000 --cpu-period 100000: half a CPU, no memory limit", () => {
    assert.deepEqual(dockerLimits(inspectFixture("cpu-quota").HostConfig), { cpuCores: 0.5 });
  });

  it("no limits: nothing set (Memory 0, NanoCpus 0, CpuQuota 0); a quota with the default period; -1 is no quota", () => {
    assert.deepEqual(dockerLimits(inspectFixture("running-tty-compose").HostConfig), {});
    assert.deepEqual(dockerLimits({ CpuQuota: 250000, CpuPeriod: 0 }), { cpuCores: 2.5 }, "period 0 = the kernel's 100 ms");
    assert.deepEqual(dockerLimits({ CpuQuota: -1, CpuPeriod: 100000 }), {});
    assert.deepEqual(dockerLimits(undefined), {});
    // NanoCpus wins (the engine refuses both together, but an older one may report both).
    assert.deepEqual(dockerLimits({ NanoCpus: 2e9, CpuQuota: 50000, CpuPeriod: 100000 }), { cpuCores: 2 });
  });
});
