import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { dockerEventKey, normaliseDockerEvent, parseDockerEventLine } from "../../../../agent/runtime/docker/docker-events.js";
import { dockerSince, parseDockerTime, timestampFromNs } from "../../../../agent/runtime/docker/docker-time.js";
import { eventFilters } from "../../../../agent/runtime/docker/docker-engine-client.js";
import { eventLines } from "./docker-fixtures.js";

// events.jsonl lines: 0 create, 1 start, 2 exec_create, 3 exec_start, 4 exec_die,
// 5 health_status: healthy, 6 rename, 7 kill (HUP), 8 pause, 9 unpause, 10 kill (KILL), 11 die 137,
// 12 destroy — all of one container "ev1"/"ev2" labelled team=core; 13 a healthcheck exec_create,
// 14 oom, 15 die 7, 16 die 137 after the oom, 17 a network event.
const lines = eventLines();
const event = (i: number) => normaliseDockerEvent(parseDockerEventLine(lines[i]!));
const EV_ID = "10e7f9d61d6f92a64012c842daa5e51742969fe58e16c2df257ed54b9727dc71";

describe("docker events: timeNano", () => {
  it("reads timeNano exactly (JSON.parse would round it) and keeps the nanoseconds in the timestamp", () => {
    const m = parseDockerEventLine(lines[0]!);
    assert.equal(m.timeNano, 1795316896742821460n);
    assert.notEqual(BigInt(JSON.parse(lines[0]!).timeNano as number), 1795316896742821460n, "a Number cannot hold it");
    const e = normaliseDockerEvent(m);
    assert.equal(e.timestamp?.seconds, 1795316896n);
    assert.equal(e.timestamp?.nanos, 742821460);
  });

  it("puts the event at the time the engine said (its `time` seconds), not decades away", () => {
    for (const line of lines) {
      const m = parseDockerEventLine(line);
      const e = normaliseDockerEvent(m);
      const seconds = (JSON.parse(line) as { time: number }).time;
      assert.equal(Math.floor(timestampDate(e.timestamp!).getTime() / 1000), seconds, line.slice(0, 60));
    }
  });

  it("falls back to `time` (seconds) when an engine sends no timeNano", () => {
    const e = normaliseDockerEvent(parseDockerEventLine('{"Type":"container","Action":"start","Actor":{"ID":"abc","Attributes":{}},"time":1700000000}'));
    assert.equal(e.timestamp?.seconds, 1700000000n);
    assert.equal(e.timestamp?.nanos, 0);
  });

  it("a label whose value looks like a timeNano does not fool the reader", () => {
    const line = '{"Type":"container","Action":"start","Actor":{"ID":"abc","Attributes":{"x":"\\"timeNano\\":1","timeNano":"2"}},"time":1,"timeNano":1000000001}';
    assert.equal(parseDockerEventLine(line).timeNano, 1000000001n);
  });

  it("resume points: seconds.nanoseconds, zero-padded, and RFC 3339 SystemTime with a zone", () => {
    assert.equal(dockerSince(1795316896742821460n), "1795316896.742821460");
    assert.equal(dockerSince(1795316896000000001n), "1795316896.000000001");
    assert.equal(parseDockerTime("2026-11-22T03:05:55.869097737Z"), 1795316755869097737n);
    assert.equal(parseDockerTime("2026-11-22T04:05:55.869097737+01:00"), 1795316755869097737n, "the engine's local zone");
    assert.equal(parseDockerTime("2026-11-22T03:05:55Z"), 1795316755000000000n);
    assert.equal(parseDockerTime("2026-11-22T03:05:55.5Z"), 1795316755500000000n);
    assert.equal(parseDockerTime("0001-01-01T00:00:00Z"), undefined, "Go's zero time is unset");
    assert.equal(parseDockerTime(""), undefined);
    assert.equal(parseDockerTime("yesterday"), undefined);
    const before = timestampFromNs(-1n);
    assert.deepEqual([before.seconds, before.nanos], [-1n, 999999999]);
  });
});

describe("docker events: normalisation (recorded events)", () => {
  it("create/start/pause/unpause/destroy: action, ids, name, resource type, labels vs attributes", () => {
    const actions = [0, 1, 8, 9, 12].map((i) => event(i).action);
    assert.deepEqual(actions, ["create", "start", "pause", "unpause", "destroy"]);
    const e = event(0);
    assert.equal(e.runtime, "docker");
    assert.equal(e.externalId, EV_ID);
    assert.equal(e.instanceId, "docker-10e7f9d61d6f");
    assert.equal(e.name, "ev1");
    assert.equal(e.resourceType, "container");
    assert.deepEqual(e.labels, { team: "core" }, "the container's labels only");
    assert.deepEqual(e.attributes, { image: "fleetlet-test/busybox:1", name: "ev1" }, "the engine's own keys");
    assert.equal(e.exitCode, undefined);
    assert.equal(e.synthetic, false);
  });

  it("health_status: healthy → action health_status + health_status healthy", () => {
    const e = event(5);
    assert.equal(e.action, "health_status");
    assert.equal(e.healthStatus, "healthy");
    assert.deepEqual(e.labels, { team: "core" });
  });

  it("die carries the exit code; the OOM kill comes as its own oom event", () => {
    assert.equal(event(11).action, "die");
    assert.equal(event(11).exitCode, 137);
    assert.equal(event(15).exitCode, 7);
    assert.equal(event(14).action, "oom");
    assert.equal(event(14).name, "oom");
    assert.equal(event(16).exitCode, 137);
    assert.equal(event(7).exitCode, undefined, "only die has an exit code");
  });

  it("rename and kill keep their details as attributes", () => {
    const r = event(6);
    assert.equal(r.action, "rename");
    assert.equal(r.name, "ev2");
    assert.equal(r.attributes.oldName, "/ev1");
    const k = event(7);
    assert.equal(k.action, "kill");
    assert.equal(k.attributes.signal, "1");
    assert.equal(k.labels.signal, undefined);
  });

  it("exec_create: <command> → action exec_create, the command as an attribute", () => {
    const e = event(2);
    assert.equal(e.action, "exec_create");
    assert.equal(e.attributes.command, "/bin/sh -c true");
    assert.equal(e.attributes.execID, "9168e249cae76930c9f49d1d6cdb4818340e90ecebc39709a34a707979139864");
    assert.equal(e.healthStatus, "");
    assert.equal(event(4).attributes.exitCode, "0", "exec_die's exit code is the exec's, not the container's");
    assert.equal(event(4).exitCode, undefined);
  });

  it("a non-container event keeps its type", () => {
    const e = event(17);
    assert.equal(e.resourceType, "network");
    assert.equal(e.instanceId, "");
  });

  it("event keys: equal for the same event, distinct across the recorded ones", () => {
    const keys = lines.map((l) => dockerEventKey(parseDockerEventLine(l)));
    assert.equal(new Set(keys).size, keys.length);
    assert.equal(dockerEventKey(parseDockerEventLine(lines[3]!)), keys[3]);
  });

  it("the engine is asked for container lifecycle events only (no exec_* from every health probe)", () => {
    const f = eventFilters();
    // Containers, and the engine-level types that make "node" and "service" events.
    assert.deepEqual(f.type, ["container", "daemon", "node", "service"]);
    assert.ok(f.event.includes("reload") && f.event.includes("remove") && f.event.includes("update"));
    for (const a of ["create", "start", "die", "oom", "pause", "unpause", "destroy", "health_status", "rename", "restart"]) assert.ok(f.event.includes(a), a);
    assert.ok(!f.event.some((a) => a.startsWith("exec_")));
  });
});

describe("docker events: engine-level resource types", () => {
  // Shapes as the Engine writes them (daemon/reload.go, the swarm cluster event watcher).
  const reload =
    '{"Type":"daemon","Action":"reload","Actor":{"ID":"3c2e0b0a-7d52-4f7f-9a7e-1d3a0e1f5b2c","Attributes":{"debug":"false","default-runtime":"runc","labels":"[]","live-restore":"false","max-concurrent-downloads":"3","name":"host-1","shutdown-timeout":"15"}},"scope":"local","time":1795317000,"timeNano":1795317000123456789}';
  const serviceRemoved = '{"Type":"service","Action":"remove","Actor":{"ID":"mp8k0xq3b5l2r1m7vyf0t9d4e","Attributes":{"name":"web"}},"scope":"swarm","time":1795317001,"timeNano":1795317001000000001}';
  const swarmNode = '{"Type":"node","Action":"update","Actor":{"ID":"x1y2z3a4b5c6d7e8f9g0h1i2j","Attributes":{"name":"worker-1","state.new":"down","state.old":"ready"}},"scope":"swarm","time":1795317002,"timeNano":1795317002000000002}';

  it("a daemon reload is a node event of the engine: its configuration as attributes, no labels, no instance", () => {
    const e = normaliseDockerEvent(parseDockerEventLine(reload));
    assert.deepEqual([e.resourceType, e.action, e.externalId, e.name, e.instanceId], ["node", "reload", "3c2e0b0a-7d52-4f7f-9a7e-1d3a0e1f5b2c", "host-1", ""]);
    assert.deepEqual(e.labels, {});
    assert.equal(e.attributes["max-concurrent-downloads"], "3");
    assert.equal(e.attributes.engine_event, "daemon");
    assert.equal(timestampDate(e.timestamp!).toISOString(), "2026-11-22T03:10:00.123Z");
  });

  it("swarm services and nodes: service / node events; remove is destroy like every other type", () => {
    const s = normaliseDockerEvent(parseDockerEventLine(serviceRemoved));
    assert.deepEqual([s.resourceType, s.action, s.externalId, s.name, s.instanceId], ["service", "destroy", "mp8k0xq3b5l2r1m7vyf0t9d4e", "web", ""]);
    const n = normaliseDockerEvent(parseDockerEventLine(swarmNode));
    assert.deepEqual([n.resourceType, n.action, n.name, n.attributes["state.new"], n.attributes.engine_event], ["node", "update", "worker-1", "down", "swarm_node"]);
  });
});
