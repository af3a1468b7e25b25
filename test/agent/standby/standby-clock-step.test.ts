import { afterEach, describe, it, vi } from "vitest";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { InstanceState } from "../../../gen/fleetlet/agent/v1/inventory_pb.js";
import { StandbyPolicySchema } from "../../../gen/fleetlet/agent/v1/standby_pb.js";
import { StandbyController, SYSTEM_STANDBY_CLOCK, type StandbyClock, type StandbyInstance } from "../../../agent/standby/standby-controller.js";
import type { StandbyRuntime } from "../../../agent/standby/standby-runtime-store.js";
import { FakeClock, FakeFlowSource, settle } from "./fake-clock.js";

// Durations on the monotonic clock, timestamps on the wall clock (issue 12 point 14).

const MIN = 60_000;
const HOUR = 60 * MIN;
const WALL = Date.UTC(2026, 10, 22, 11, 0, 0);

function setUp(clock: StandbyClock, saved?: StandbyRuntime) {
  const instance: StandbyInstance = {
    id: "vm1",
    state: InstanceState.RUNNING,
    networkEnabled: true,
    ip: "192.168.100.10",
    hasVgpu: false,
    policy: create(StandbyPolicySchema, { enabled: true, idleTimeout: "10m0s" }),
  };
  const runtime = new Map<string, StandbyRuntime>(saved ? [["vm1", saved]] : []);
  const standbys: string[] = [];
  const controller = new StandbyController({
    clock,
    syncMs: 24 * HOUR,
    source: new FakeFlowSource(),
    instances: { list: () => [instance], get: (id) => (id === "vm1" ? instance : undefined) },
    runtime: { get: (id) => runtime.get(id), set: (id, r) => (r ? runtime.set(id, r) : runtime.delete(id)) },
    standby: async (i) => void standbys.push(i.id),
    wake: async () => {},
    setState: async () => {},
  });
  return { controller, runtime, standbys };
}

afterEach(() => {
  vi.useRealTimers();
});

describe("StandbyController on the production clock, across a wall-clock step", () => {
  it("a wall clock stepped an hour forward does not put an idle instance on standby early", async () => {
    // Only Date is faked: the wall clock jumps, the monotonic clock and the timers do not.
    vi.useFakeTimers({ toFake: ["Date"] });
    const { controller, standbys } = setUp(SYSTEM_STANDBY_CLOCK);
    await controller.start();
    vi.setSystemTime(Date.now() + HOUR);
    await controller.refresh("vm1"); // re-seeds and re-arms the countdown
    await new Promise((r) => setTimeout(r, 20));
    await settle();
    const d = controller.describe("vm1");
    controller.close();
    assert.deepEqual(standbys, [], "no standby: 10 minutes have not passed");
    assert.equal(d.status, "IDLE_COUNTDOWN");
    assert.ok(d.countdownRemainingMs! > 10 * MIN - 1000, `countdown ${d.countdownRemainingMs} ms`);
    assert.ok(Math.abs(d.nextStandbyAt! - (Date.now() + 10 * MIN)) < 1000, "reported on the stepped wall clock");
  });
});

describe("StandbyController with separate monotonic and wall clocks (fake)", () => {
  it("a wall clock stepped back an hour does not delay standby; reported moments follow the wall clock", async () => {
    const clock = new FakeClock(5_000, WALL);
    const { controller, standbys } = setUp(clock);
    await controller.start();
    assert.equal(controller.describe("vm1").nextStandbyAt, WALL + 10 * MIN);
    await clock.advance(4 * MIN);
    clock.stepWall(-HOUR);
    await controller.refresh("vm1");
    const d = controller.describe("vm1");
    assert.equal(d.countdownRemainingMs, 6 * MIN);
    assert.equal(d.idleSince, WALL - HOUR, "idle since: the same moment, as the stepped wall clock reads it");
    assert.equal(d.nextStandbyAt, WALL - HOUR + 10 * MIN);
    await clock.advance(6 * MIN);
    controller.close();
    assert.deepEqual(standbys, ["vm1"], "on standby 10 monotonic minutes after idle");
  });

  it("a hold is answered and persisted in wall time, and kept on the monotonic clock", async () => {
    const clock = new FakeClock(5_000, WALL);
    const { controller, runtime, standbys } = setUp(clock);
    await controller.start();
    assert.equal(controller.hold("vm1", 30 * MIN), WALL + 30 * MIN);
    assert.equal(runtime.get("vm1")?.holdUntil, WALL + 30 * MIN);
    assert.equal(runtime.get("vm1")?.idleSince, WALL);
    clock.stepWall(HOUR);
    await clock.advance(30 * MIN - 1);
    assert.deepEqual(standbys, [], "the hold runs 30 monotonic minutes whatever the wall clock does");
    await clock.advance(1);
    controller.close();
    assert.deepEqual(standbys, ["vm1"]);
  });

  it("a persisted hold (wall time) is converted once at restart: honoured to the millisecond", async () => {
    // A restarted agent: its monotonic clock starts near 0, the wall clock goes on.
    const clock = new FakeClock(1_000, WALL);
    const { controller, standbys } = setUp(clock, { idleSince: WALL - 20 * MIN, holdUntil: WALL + 15 * MIN });
    await controller.start();
    const d = controller.describe("vm1");
    assert.equal(d.status, "IDLE_COUNTDOWN");
    assert.equal(d.reason, "HOLD");
    assert.equal(d.holdUntil, WALL + 15 * MIN);
    assert.equal(d.countdownRemainingMs, 15 * MIN);
    clock.stepWall(-HOUR); // after the load, wall steps no longer move the deadline
    await clock.advance(15 * MIN - 1);
    assert.deepEqual(standbys, []);
    await clock.advance(1);
    controller.close();
    assert.deepEqual(standbys, ["vm1"]);
  });
});
