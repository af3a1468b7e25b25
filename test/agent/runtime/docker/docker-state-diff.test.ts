import { describe, it } from "vitest";
import assert from "node:assert/strict";
import type { Container, RuntimeEvent } from "../../../../gen/fleetlet/agent/v1/runtime_pb.js";
import { inspectToContainer } from "../../../../agent/runtime/docker/docker-container.js";
import type { DockerInspect } from "../../../../agent/runtime/docker/docker-api-types.js";
import { normaliseDockerEvent, parseDockerEventLine } from "../../../../agent/runtime/docker/docker-events.js";
import { applyEventToTold, diffTold, toldFromContainers } from "../../../../agent/runtime/docker/docker-state-diff.js";
import { inspectFixture } from "./docker-fixtures.js";

const AT = 1795316900123456789n;

/** A recorded container with State changed (and the rest as recorded). */
function container(name: string, state: Partial<NonNullable<DockerInspect["State"]>> = {}, extra: Partial<DockerInspect> = {}): Container {
  const raw = inspectFixture(name);
  return inspectToContainer({ ...raw, ...extra, State: { ...raw.State, ...state } });
}

const summary = (events: RuntimeEvent[]) => events.map((e) => `${e.name}:${e.action}${e.exitCode !== undefined ? `(${e.exitCode})` : ""}${e.healthStatus ? `(${e.healthStatus})` : ""}`);

function replayed(id: string, name: string, action: string, attributes: Record<string, string> = {}): RuntimeEvent {
  const line = JSON.stringify({ Type: "container", Action: action, Actor: { ID: id, Attributes: { name, ...attributes } }, time: 1795316899 });
  return normaliseDockerEvent(parseDockerEventLine(line));
}

describe("relist diff after a reconnect", () => {
  it("nothing changed: no events at all", () => {
    const now = ["running-tty-compose", "exited-7", "paused", "healthy", "created", "oom-killed"].map((n) => container(n));
    assert.deepEqual(diffTold(toldFromContainers(now), now, AT), []);
  });

  it("a container removed while away → one synthetic destroy, with its last name and labels", () => {
    const web = container("running-tty-compose");
    const events = diffTold(toldFromContainers([web, container("exited-7")]), [container("exited-7")], AT);
    assert.deepEqual(summary(events), ["web:destroy"]);
    const e = events[0]!;
    assert.equal(e.synthetic, true);
    assert.equal(e.externalId, web.externalId);
    assert.equal(e.instanceId, "docker-a95651712a13");
    assert.equal(e.resourceType, "container");
    assert.equal(e.labels.tier, "front");
    assert.equal(e.timestamp?.seconds, 1795316900n);
    assert.equal(e.timestamp?.nanos, 123456789);
  });

  it("new containers → create (+ start, + pause / die with exit code, + oom) as far as they got", () => {
    const events = diffTold(
      new Map(),
      [container("running-tty-compose"), container("created"), container("paused"), container("exited-7"), container("oom-killed")],
      AT,
    );
    assert.deepEqual(summary(events), [
      "web:create",
      "web:start",
      "created:create",
      "paused:create",
      "paused:start",
      "paused:pause",
      "exited7:create",
      "exited7:start",
      "exited7:die(7)",
      "oom:create",
      "oom:start",
      "oom:oom",
      "oom:die(137)",
    ]);
    assert.ok(events.every((e) => e.synthetic));
  });

  it("a new healthy container: create, start, health_status healthy", () => {
    assert.deepEqual(summary(diffTold(new Map(), [container("healthy")], AT)), ["hc:create", "hc:start", "hc:health_status(healthy)"]);
  });

  it("state changes while away: die with exit code, pause, unpause, start, start+die, restart", () => {
    const running = container("running-tty-compose");
    const cases: Array<[Container, Container, string[]]> = [
      [running, container("running-tty-compose", { Status: "exited", Running: false, ExitCode: 143, FinishedAt: "2026-11-22T03:09:00Z" }), ["web:die(143)"]],
      [running, container("running-tty-compose", { Status: "exited", Running: false, ExitCode: 137, OOMKilled: true }), ["web:oom", "web:die(137)"]],
      [running, container("running-tty-compose", { Status: "paused", Paused: true }), ["web:pause"]],
      [container("running-tty-compose", { Status: "paused" }), running, ["web:unpause"]],
      [container("exited-7"), container("exited-7", { Status: "running", StartedAt: "2026-11-22T03:10:00Z" }), ["exited7:start"]],
      [container("exited-7"), container("exited-7", { StartedAt: "2026-11-22T03:10:00Z", FinishedAt: "2026-11-22T03:10:01Z", ExitCode: 1 }), ["exited7:start", "exited7:die(1)"]],
      [container("created"), container("created", { Status: "exited", StartedAt: "2026-11-22T03:10:00Z", ExitCode: 0 }), ["created:start", "created:die(0)"]],
      [running, container("running-tty-compose", { StartedAt: "2026-11-22T03:10:00Z" }), ["web:restart"]],
    ];
    for (const [before, after, expected] of cases) {
      assert.deepEqual(summary(diffTold(toldFromContainers([before]), [after], AT)), expected, expected.join(" "));
    }
  });

  it("a rename while away", () => {
    const events = diffTold(toldFromContainers([container("exited-7")]), [container("exited-7", {}, { Name: "/renamed" })], AT);
    assert.deepEqual(summary(events), ["renamed:rename"]);
    assert.equal(events[0]!.attributes.oldName, "/exited7");
  });

  it("health changes of a running container; the reset to starting by a restart is not an event", () => {
    const healthy = container("healthy");
    const unhealthy = container("healthy", { Health: { Status: "unhealthy", FailingStreak: 2, Log: [] } });
    assert.deepEqual(summary(diffTold(toldFromContainers([healthy]), [unhealthy], AT)), ["hc:health_status(unhealthy)"]);
    // Restarted by the engine (restart policy after a dockerd restart): health starts over.
    const restarted = container("healthy", { StartedAt: "2026-11-22T03:20:00Z", Health: { Status: "starting", FailingStreak: 0, Log: [] } });
    assert.deepEqual(summary(diffTold(toldFromContainers([healthy]), [restarted], AT)), ["hc:restart"]);
  });

  it("events the engine replayed are applied first: the diff does not repeat them", () => {
    const web = container("running-tty-compose");
    const told = toldFromContainers([web]);
    applyEventToTold(told, replayed(web.externalId, "web", "die", { exitCode: "143" }));
    const exited = container("running-tty-compose", { Status: "exited", Running: false, ExitCode: 143, FinishedAt: "2026-11-22T03:09:00Z" });
    assert.deepEqual(diffTold(told, [exited], AT), []);

    const fresh = container("exited-7");
    applyEventToTold(told, replayed(fresh.externalId, "exited7", "create"));
    applyEventToTold(told, replayed(fresh.externalId, "exited7", "start"));
    applyEventToTold(told, replayed(fresh.externalId, "exited7", "die", { exitCode: "7" }));
    assert.deepEqual(diffTold(told, [exited, fresh], AT), []);

    applyEventToTold(told, replayed(fresh.externalId, "exited7", "destroy"));
    assert.deepEqual(diffTold(told, [exited], AT), []);
  });

  it("a replay that stops short leaves the rest to the diff", () => {
    const fresh = container("exited-7");
    const told = toldFromContainers([]);
    applyEventToTold(told, replayed(fresh.externalId, "exited7", "create"));
    assert.deepEqual(summary(diffTold(told, [fresh], AT)), ["exited7:start", "exited7:die(7)"]);
  });
});
