import { beforeEach, describe, it } from "vitest";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { InstanceState } from "../../../gen/fleetlet/agent/v1/inventory_pb.js";
import { StandbyPolicySchema } from "../../../gen/fleetlet/agent/v1/standby_pb.js";
import { StandbyController, type StandbyControllerDeps, type StandbyInstance } from "../../../agent/standby/standby-controller.js";
import type { StandbyRuntime } from "../../../agent/standby/standby-runtime-store.js";
import { FakeClock, FakeFlowSource, settle } from "./fake-clock.js";
import { Code, ConnectError } from "@connectrpc/connect";
import { DriverError } from "../../../agent/standby/drivers/standby-driver.js";

const IP = "192.168.100.10";
const MIN = 60_000;

let clock: FakeClock;
let source: FakeFlowSource;
let instances: Map<string, StandbyInstance>;
let runtime: Map<string, StandbyRuntime>;
let driverCalls: string[];
let failStandby: number;
let failWake: Error | undefined;
/** The interface's rx+tx byte counter per instance (undefined: none). */
let ifBytes: Map<string, bigint>;
let ifDevice: string;
let controller: StandbyController;

function vm(overrides: Partial<StandbyInstance> = {}): StandbyInstance {
  return {
    id: "vm1",
    state: InstanceState.RUNNING,
    networkEnabled: true,
    ip: IP,
    hasVgpu: false,
    policy: create(StandbyPolicySchema, { enabled: true, idleTimeout: "10m0s", wakeOnTraffic: true }),
    ...overrides,
  };
}

function build(supported = true, syncMs = 24 * 60 * MIN, extra: Partial<StandbyControllerDeps> = {}): StandbyController {
  return new StandbyController({
    ...extra,
    clock,
    syncMs,
    source: supported ? source : undefined,
    instances: { list: () => [...instances.values()], get: (id) => instances.get(id) },
    runtime: { get: (id) => runtime.get(id), set: (id, r) => (r ? runtime.set(id, r) : runtime.delete(id)) },
    standby: async (i) => {
      driverCalls.push(`standby:${i.id}`);
      if (failStandby > 0) {
        failStandby--;
        throw new Error("driver failed: exit status 1");
      }
    },
    wake: async (i) => {
      driverCalls.push(`wake:${i.id}`);
      if (failWake) throw failWake;
    },
    setState: async (id, state) => {
      const i = instances.get(id)!;
      instances.set(id, { ...i, state });
    },
    interfaceBytes: (id) => {
      const bytes = ifBytes.get(id);
      return bytes === undefined ? undefined : { device: ifDevice, bytes };
    },
  });
}

const client = (srcPort: number, tcpState = 3) => ({ srcIp: "1.2.3.4", srcPort, dstIp: IP, dstPort: 8080, tcpState });

beforeEach(() => {
  clock = new FakeClock();
  source = new FakeFlowSource();
  instances = new Map([["vm1", vm()]]);
  runtime = new Map();
  driverCalls = [];
  failStandby = 0;
  failWake = undefined;
  ifBytes = new Map();
  ifDevice = "vi-vm1";
  controller = build();
});

describe("StandbyController (fake clock, fake conntrack)", () => {
  it("check 5: restart with a persisted idle_since and a live inbound flow → ACTIVE, idle_since cleared", async () => {
    runtime.set("vm1", { idleSince: clock.now() - 5 * MIN });
    source.open(client(40000), true);
    await controller.start();
    const d = controller.describe("vm1");
    assert.equal(d.status, "ACTIVE");
    assert.equal(d.activeInboundCount, 1);
    assert.equal(runtime.get("vm1")?.idleSince, undefined);
  });

  it("check 6: persisted idle_since 10:55, timeout 10m, no flows, now 11:00 → countdown to 11:05", async () => {
    runtime.set("vm1", { idleSince: clock.now() - 5 * MIN });
    await controller.start();
    const d = controller.describe("vm1");
    assert.equal(d.status, "IDLE_COUNTDOWN");
    assert.equal(d.nextStandbyAt, clock.now() + 5 * MIN);
    assert.equal(d.countdownRemainingMs, 5 * MIN);
  });

  it("check 7: NEW then DESTROY → countdown from the DESTROY; a second DESTROY changes nothing", async () => {
    await controller.start();
    const f = source.open(client(40000));
    assert.equal(controller.describe("vm1").status, "ACTIVE");
    await clock.advance(30_000);
    const destroyedAt = clock.now();
    source.close(f);
    assert.equal(controller.describe("vm1").idleSince, destroyedAt);
    await clock.advance(1000);
    source.emit("flow", { ...f, kind: "destroy", tcpState: 0 });
    const d = controller.describe("vm1");
    assert.equal(d.idleSince, destroyedAt);
    assert.equal(d.activeInboundCount, 0);
    assert.equal(d.nextStandbyAt, destroyedAt + 10 * MIN);
  });

  it("check 8: two flows, one destroyed → still ACTIVE", async () => {
    await controller.start();
    const a = source.open(client(40000));
    source.open(client(40001));
    source.close(a);
    const d = controller.describe("vm1");
    assert.equal(d.status, "ACTIVE");
    assert.equal(d.activeInboundCount, 1);
  });

  it("an open connection keeps the instance awake well past its timeout; after it closes, standby exactly once", async () => {
    await controller.start();
    const f = source.open(client(40000));
    await clock.advance(60 * MIN);
    assert.deepEqual(driverCalls, []);
    assert.equal(controller.describe("vm1").status, "ACTIVE");
    source.close(f);
    await clock.advance(10 * MIN - 1);
    assert.deepEqual(driverCalls, []);
    await clock.advance(1);
    assert.deepEqual(driverCalls, ["standby:vm1"]);
    assert.equal(instances.get("vm1")!.state, InstanceState.STANDBY);
    assert.equal(controller.describe("vm1").status, "IN_STANDBY");
    await clock.advance(60 * MIN);
    assert.deepEqual(driverCalls, ["standby:vm1"], "exactly once");
  });

  it("check 9: NEW events lost → the confirm dump finds the flow → ACTIVE, no standby", async () => {
    await controller.start();
    source.open(client(40000), true); // the event never arrives
    await clock.advance(10 * MIN);
    assert.deepEqual(driverCalls, []);
    assert.equal(controller.describe("vm1").status, "ACTIVE");
    assert.equal(controller.counters.confirmFoundFlows, 1);
  });

  it("a failed confirm dump counts as busy: no standby, countdown restarted", async () => {
    await controller.start();
    source.failDumps = true;
    await clock.advance(10 * MIN);
    assert.deepEqual(driverCalls, []);
    assert.equal(controller.describe("vm1").nextStandbyAt, clock.now() + 10 * MIN);
  });

  it("check 10: a failing driver is retried one timeout later; success → STANDBY exactly once", async () => {
    failStandby = 1;
    await controller.start();
    await clock.advance(10 * MIN);
    assert.deepEqual(driverCalls, ["standby:vm1"]);
    assert.equal(instances.get("vm1")!.state, InstanceState.RUNNING);
    assert.match(controller.describe("vm1").lastError ?? "", /driver failed: exit status 1/);
    await clock.advance(10 * MIN);
    assert.deepEqual(driverCalls, ["standby:vm1", "standby:vm1"]);
    assert.equal(instances.get("vm1")!.state, InstanceState.STANDBY);
    assert.equal(controller.counters.standby.failed, 1);
    assert.equal(controller.counters.standby.ok, 1);
  });

  it("check 11: overflow → resync by dump, no false standby", async () => {
    await controller.start();
    source.open(client(40000), true); // lost in the overflow
    source.emit("overflow");
    await settle();
    assert.equal(controller.describe("vm1").status, "ACTIVE");
    await clock.advance(30 * MIN);
    assert.deepEqual(driverCalls, []);
    assert.equal(controller.counters.resyncs, 1);
  });

  it("reconcile every 2 s replaces the active set from one dump (a missed DESTROY starts the countdown)", async () => {
    await controller.start();
    const f = source.open(client(40000));
    source.close(f, true); // DESTROY lost
    assert.equal(controller.describe("vm1").status, "ACTIVE");
    await clock.advance(2000);
    const d = controller.describe("vm1");
    assert.equal(d.status, "IDLE_COUNTDOWN");
    assert.equal(d.idleSince, clock.now());
  });

  it("ignored ports and source networks and outbound flows do not keep it awake", async () => {
    instances.set("vm1", vm({ policy: create(StandbyPolicySchema, { enabled: true, idleTimeout: "10m0s", ignoreDestinationPorts: [22], ignoreSourceCidrs: ["10.0.0.0/8"] }) }));
    await controller.start();
    source.open({ srcIp: "1.2.3.4", srcPort: 1, dstIp: IP, dstPort: 22, tcpState: 3 });
    source.open({ srcIp: "10.1.2.3", srcPort: 2, dstIp: IP, dstPort: 8080, tcpState: 3 });
    source.open({ srcIp: IP, srcPort: 3, dstIp: "8.8.8.8", dstPort: 443, tcpState: 3 });
    await clock.advance(10 * MIN);
    assert.deepEqual(driverCalls, ["standby:vm1"]);
  });

  it("wake on traffic: a NEW inbound flow to an instance on standby wakes it and it is RUNNING again", async () => {
    await controller.start();
    await clock.advance(10 * MIN);
    assert.equal(instances.get("vm1")!.state, InstanceState.STANDBY);
    source.open(client(40100, 1)); // SYN_SENT
    await settle();
    assert.deepEqual(driverCalls, ["standby:vm1", "wake:vm1"]);
    assert.equal(instances.get("vm1")!.state, InstanceState.RUNNING);
    assert.equal(controller.describe("vm1").status, "ACTIVE", "the waking flow counts");
  });

  it("WakeInstance on a running instance is FAILED_PRECONDITION", async () => {
    await controller.start();
    await assert.rejects(controller.wake("vm1"), /is not on standby/);
  });

  it("a wake whose driver fails is a ConnectError (FAILED_PRECONDITION for a driver's refusal, INTERNAL otherwise), not UNKNOWN", async () => {
    await controller.start();
    await clock.advance(10 * MIN);
    assert.equal(instances.get("vm1")!.state, InstanceState.STANDBY);
    failWake = new DriverError("signal driver: instance vm1 has no pid");
    await assert.rejects(controller.wake("vm1"), (e: unknown) => {
      assert.ok(e instanceof ConnectError);
      assert.equal(e.code, Code.FailedPrecondition);
      assert.equal(e.rawMessage, "wake vm1: signal driver: instance vm1 has no pid");
      return true;
    });
    failWake = new Error("EPERM: operation not permitted, write");
    await assert.rejects(controller.wake("vm1"), (e: unknown) => e instanceof ConnectError && e.code === Code.Internal);
    assert.equal(instances.get("vm1")!.state, InstanceState.STANDBY, "still on standby");
    assert.match(controller.describe("vm1").lastError ?? "", /^wake: EPERM/);
  });

  it("blind conntrack (no flows at all) never sleeps an instance whose interface carries traffic; once it is quiet, standby", async () => {
    ifBytes.set("vm1", 0n);
    await controller.start();
    // 250 KB/s for 2 minutes, in 1-minute steps (one busy sample each), and not one conntrack
    // event: traffic keeps it awake.
    for (let m = 0; m < 2; m++) {
      ifBytes.set("vm1", ifBytes.get("vm1")! + 250_000n * 60n);
      await clock.advance(MIN);
      assert.equal(instances.get("vm1")!.state, InstanceState.RUNNING, `minute ${m + 1}: still running`);
    }
    assert.deepEqual(driverCalls, [], "no standby while the interface was busy");
    assert.ok(controller.counters.confirmFoundTraffic >= 2);
    const d = controller.describe("vm1");
    assert.equal(d.status, "ACTIVE");
    assert.equal(d.reason, "INTERFACE_TRAFFIC");
    assert.match(d.lastError ?? "", /^\d{6,} bytes\/s on the instance's interface and no tracked inbound connection/);
    assert.equal(d.trackingMode, "conntrack_netlink_v4_tcp+interface_bytes");
    // A third busy minute with nothing in conntrack, not even in a fresh dump: conntrack is
    // blind for this instance (the demo's namespace without a conntrack rule). ERROR, and no
    // countdown: asleep, nothing would wake it.
    ifBytes.set("vm1", ifBytes.get("vm1")! + 250_000n * 60n);
    await clock.advance(MIN);
    const blind = controller.describe("vm1");
    assert.deepEqual([blind.status, blind.reason], ["ERROR", "CONNTRACK_BLIND"]);
    assert.match(blind.lastError ?? "", /conntrack shows no flow of 192\.168\.100\.10 while its interface carried \d+ bytes\/s in 3 samples/);
    // Quiet for three timeouts: still no standby.
    for (let m = 0; m < 30; m++) {
      ifBytes.set("vm1", ifBytes.get("vm1")! + 60n);
      await clock.advance(MIN);
    }
    assert.deepEqual(driverCalls, [], "never on standby while conntrack does not see it");
    assert.equal(controller.describe("vm1").reason, "CONNTRACK_BLIND");
    // Conntrack shows a flow of it (an outbound one counts: tracking sees this address): the
    // countdown starts again, and a quiet timeout later it is on standby.
    const out = source.open({ srcIp: IP, srcPort: 41000, dstIp: "8.8.8.8", dstPort: 443, tcpState: 3 });
    assert.equal(controller.describe("vm1").status, "IDLE_COUNTDOWN");
    source.close(out);
    await clock.advance(10 * MIN + 2000);
    assert.deepEqual(driverCalls, ["standby:vm1"]);
    assert.equal(instances.get("vm1")!.state, InstanceState.STANDBY);
  });

  it("busy interface and conntrack sees the address only in a dump (a long outbound flow, no events): not blind", async () => {
    ifBytes.set("vm1", 0n);
    await controller.start();
    // A download the instance started before the agent: in the table, no events.
    source.open({ srcIp: IP, srcPort: 41000, dstIp: "8.8.8.8", dstPort: 443, tcpState: 3 }, true);
    for (let s = 0; s < 60; s += 2) {
      ifBytes.set("vm1", ifBytes.get("vm1")! + 400_000n);
      await clock.advance(2000);
    }
    const d = controller.describe("vm1");
    assert.deepEqual([d.status, d.reason], ["ACTIVE", "INTERFACE_TRAFFIC"]);
    assert.ok(source.dumps >= 2, "a dump was asked before calling it blind");
    // Download over: one quiet timeout later, standby.
    source.table = [];
    await clock.advance(10 * MIN + 2000);
    assert.deepEqual(driverCalls, ["standby:vm1"]);
  });

  it("a burst on the interface inside the window restarts it; an interface recreated (counter back) is not idle", async () => {
    ifBytes.set("vm1", 1_000_000n);
    await controller.start();
    await clock.advance(5 * MIN);
    ifBytes.set("vm1", 1_000_000n + 5_000_000n); // 5 MB once, in the middle of the window
    await clock.advance(5 * MIN);
    assert.equal(instances.get("vm1")!.state, InstanceState.RUNNING, "the window with the burst is not idle");
    ifBytes.set("vm1", 10n); // the veth was recreated: its counters start again
    await clock.advance(10 * MIN);
    assert.equal(instances.get("vm1")!.state, InstanceState.RUNNING, "unknown traffic is not idleness");
    await clock.advance(10 * MIN);
    assert.equal(instances.get("vm1")!.state, InstanceState.STANDBY, "a quiet window after that: standby");
  });

  it("traffic in the last minute of a long window is not averaged away (20 KB/s for 60 s of a 10-minute window)", async () => {
    ifBytes.set("vm1", 0n);
    await controller.start();
    // Outbound traffic conntrack sees (one event each), so this is not blindness.
    const seen = () => source.close(source.open({ srcIp: IP, srcPort: 41000, dstIp: "8.8.8.8", dstPort: 443, tcpState: 3 }));
    await clock.advance(9 * MIN);
    for (let s = 0; s < 60; s += 2) {
      seen();
      ifBytes.set("vm1", ifBytes.get("vm1")! + 40_000n);
      await clock.advance(2000);
    }
    assert.equal(instances.get("vm1")!.state, InstanceState.RUNNING);
    assert.equal(controller.describe("vm1").reason, "INTERFACE_TRAFFIC");
    await clock.advance(10 * MIN);
    assert.equal(instances.get("vm1")!.state, InstanceState.STANDBY, "quiet for a whole timeout: standby");
  });

  it("after a restart with a long-past idle_since, a busy instance is measured for a whole timeout before anything", async () => {
    runtime.set("vm1", { idleSince: clock.now() - 60 * MIN });
    ifBytes.set("vm1", 0n);
    await controller.start();
    for (let m = 0; m < 15; m++) {
      // 100 KB/s, in steps the fake clock's timers see.
      for (let s = 0; s < 60; s += 2) {
        ifBytes.set("vm1", ifBytes.get("vm1")! + 200_000n);
        await clock.advance(2000);
      }
      assert.equal(instances.get("vm1")!.state, InstanceState.RUNNING, `minute ${m + 1} after the restart`);
    }
    assert.deepEqual(driverCalls, []);
  });

  it("a new interface (tap_device changed) starts the window again instead of being compared with the old counter", async () => {
    ifBytes.set("vm1", 50_000_000n);
    await controller.start();
    await clock.advance(5 * MIN);
    ifDevice = "vi-new";
    ifBytes.set("vm1", 50_300_000n); // the new veth's own count, from zero: real traffic
    await clock.advance(5 * MIN);
    assert.equal(instances.get("vm1")!.state, InstanceState.RUNNING, "not judged against the old interface's mark");
    await clock.advance(6 * MIN);
    assert.equal(instances.get("vm1")!.state, InstanceState.STANDBY, "a whole quiet timeout on the new interface");
  });

  it("without interface counters (no TAP / veth known) idleness is conntrack's alone, as before", async () => {
    await controller.start();
    await clock.advance(10 * MIN);
    assert.equal(instances.get("vm1")!.state, InstanceState.STANDBY);
  });

  it("HoldStandby postpones the standby; ResetIdle restarts the countdown", async () => {
    await controller.start();
    controller.hold("vm1", 40 * MIN);
    assert.equal(controller.describe("vm1").reason, "HOLD");
    await clock.advance(20 * MIN);
    assert.deepEqual(driverCalls, []);
    controller.resetIdle("vm1");
    assert.equal(controller.describe("vm1").idleSince, clock.now());
    await clock.advance(10 * MIN);
    assert.deepEqual(driverCalls, [], "idle long enough at minute 30, but held until minute 40");
    await clock.advance(10 * MIN);
    assert.deepEqual(driverCalls, ["standby:vm1"]);
  });

  it("the periodic sync picks up a flow whose events were lost, before the countdown ends", async () => {
    controller = build(true, 5 * MIN);
    await controller.start();
    source.open(client(40000), true);
    await clock.advance(5 * MIN);
    assert.equal(controller.describe("vm1").status, "ACTIVE");
    await clock.advance(30 * MIN);
    assert.deepEqual(driverCalls, []);
  });

  it("the Describe table, row by row", async () => {
    const noSupport = build(false);
    assert.deepEqual([noSupport.describe("vm1").status, noSupport.describe("vm1").reason, noSupport.describe("vm1").supported], ["UNSUPPORTED", "UNSUPPORTED_PLATFORM", false]);
    await controller.start();
    const row = (over: Partial<StandbyInstance>) => {
      instances.set("vm1", vm(over));
      const d = controller.describe("vm1");
      return `${d.status}/${d.reason}`;
    };
    assert.equal(row({ policy: undefined }), "DISABLED/POLICY_MISSING");
    assert.equal(row({ policy: create(StandbyPolicySchema, { enabled: false, idleTimeout: "5m0s" }) }), "DISABLED/POLICY_DISABLED");
    assert.equal(row({ state: InstanceState.STANDBY }), "IN_STANDBY/STANDBY");
    assert.equal(row({ state: InstanceState.STOPPED }), "INELIGIBLE/INSTANCE_NOT_RUNNING");
    assert.equal(row({ networkEnabled: false }), "INELIGIBLE/NETWORK_DISABLED");
    assert.equal(row({ ip: "" }), "INELIGIBLE/MISSING_IP");
    assert.equal(row({ hasVgpu: true }), "INELIGIBLE/HAS_VGPU");
    assert.equal(row({}), "IDLE_COUNTDOWN/IDLE_TIMEOUT_NOT_ELAPSED");
    source.failDumps = true;
    source.emit("error", new Error("netlink socket closed"));
    await settle();
    assert.equal(row({}), "ERROR/OBSERVER_ERROR");
    source.failDumps = false;
    source.emit("overflow");
    await settle();
    source.open(client(40000));
    assert.equal(row({}), "ACTIVE/ACTIVE_INBOUND_CONNECTIONS");
    assert.equal(controller.describe("vm1").trackingMode, "conntrack_netlink_v4_tcp");
  });

  it("Describe rows while work is in flight: READY_FOR_STANDBY (confirming), STANDBY_REQUESTED (driver running), WAKING", async () => {
    let releaseDump!: () => void;
    let releaseStandby!: () => void;
    let releaseWake!: () => void;
    const gatedSource = new FakeFlowSource();
    let gateDumps = false;
    const origDump = gatedSource.dump.bind(gatedSource);
    gatedSource.dump = async () => {
      if (gateDumps) await new Promise<void>((r) => (releaseDump = r));
      return origDump();
    };
    const c = new StandbyController({
      clock,
      syncMs: 24 * 60 * MIN,
      source: gatedSource,
      instances: { list: () => [...instances.values()], get: (id) => instances.get(id) },
      runtime: { get: (id) => runtime.get(id), set: (id, r) => (r ? runtime.set(id, r) : runtime.delete(id)) },
      standby: () => new Promise<void>((r) => (releaseStandby = r)),
      wake: () => new Promise<void>((r) => (releaseWake = r)),
      setState: async (id, state) => void instances.set(id, { ...instances.get(id)!, state }),
    });
    await c.start();
    gateDumps = true;
    await clock.advance(10 * MIN);
    assert.equal(c.describe("vm1").status, "READY_FOR_STANDBY", "countdown over, confirming dump under way");
    gateDumps = false;
    releaseDump();
    await settle();
    assert.equal(c.describe("vm1").status, "STANDBY_REQUESTED");
    releaseStandby();
    await settle();
    assert.equal(c.describe("vm1").status, "IN_STANDBY");
    const waking = c.wake("vm1");
    await settle();
    assert.equal(c.describe("vm1").status, "WAKING");
    releaseWake();
    await waking;
    assert.equal(instances.get("vm1")!.state, InstanceState.RUNNING);
    c.close();
  });

  it("a client that connects while the standby driver is still working is not stranded: woken right after", async () => {
    let release!: () => void;
    const c = new StandbyController({
      clock,
      syncMs: 24 * 60 * MIN,
      source,
      instances: { list: () => [...instances.values()], get: (id) => instances.get(id) },
      runtime: { get: (id) => runtime.get(id), set: (id, r) => (r ? runtime.set(id, r) : runtime.delete(id)) },
      standby: () => new Promise<void>((r) => (release = r)),
      wake: async (i) => void driverCalls.push(`wake:${i.id}`),
      setState: async (id, state) => void instances.set(id, { ...instances.get(id)!, state }),
    });
    await c.start();
    await clock.advance(10 * MIN);
    assert.equal(c.describe("vm1").status, "STANDBY_REQUESTED");
    source.open(client(40200, 1)); // arrives while the (slow) driver runs
    release();
    await settle();
    assert.deepEqual(driverCalls, ["wake:vm1"]);
    assert.equal(instances.get("vm1")!.state, InstanceState.RUNNING);
    c.close();
  });

  it("flow events carry the moment they were observed: last inbound and idle_since are those, not when handled", async () => {
    await controller.start();
    await clock.advance(60_000);
    // Delivered late (a burst queued in the source): observed 3 s and 1 s before now.
    source.emit("flow", { kind: "new", id: 1, ...client(40000), observedAt: clock.now() - 3000 });
    assert.equal(controller.describe("vm1").lastInboundActivityAt, clock.now() - 3000);
    source.emit("flow", { kind: "destroy", id: 1, ...client(40000, 0), observedAt: clock.now() - 1000 });
    const d = controller.describe("vm1");
    assert.equal(d.idleSince, clock.now() - 1000);
    assert.equal(d.nextStandbyAt, clock.now() - 1000 + 10 * MIN);
    // A moment later than now (it cannot be) is taken as now.
    source.emit("flow", { kind: "new", id: 2, ...client(40001), observedAt: clock.now() + 5000 });
    assert.equal(controller.describe("vm1").lastInboundActivityAt, clock.now());
  });

  it("seed 002: {enabled: false} without an idle timeout is POLICY_DISABLED; no policy at all is POLICY_MISSING", async () => {
    await controller.start();
    instances.set("vm1", vm({ policy: create(StandbyPolicySchema, { enabled: false }) }));
    const off = controller.describe("vm1");
    assert.deepEqual([off.status, off.reason, off.configured, off.enabled], ["DISABLED", "POLICY_DISABLED", true, false]);
    instances.set("vm1", vm({ policy: undefined }));
    const none = controller.describe("vm1");
    assert.deepEqual([none.status, none.reason, none.configured], ["DISABLED", "POLICY_MISSING", false]);
  });

  it("a hold placed on an ineligible (stopped) instance survives refreshes and an agent restart", async () => {
    instances.set("vm1", vm({ state: InstanceState.STOPPED }));
    await controller.start();
    const until = controller.hold("vm1", 60 * MIN);
    await controller.refresh("vm1");
    assert.equal(runtime.get("vm1")?.holdUntil, until, "kept in the runtime file across a refresh");
    controller.close();
    // Restart: a new controller over the same runtime file.
    await clock.advance(5 * MIN);
    controller = build();
    await controller.start();
    assert.equal(controller.describe("vm1").holdUntil, until);
    assert.equal(runtime.get("vm1")?.holdUntil, until, "still there after the restart's seed");
    // Running again: the hold is in force; no standby before it ends.
    instances.set("vm1", vm());
    await controller.refresh("vm1");
    assert.deepEqual([controller.describe("vm1").status, controller.describe("vm1").reason], ["IDLE_COUNTDOWN", "HOLD"]);
    await clock.advance(54 * MIN);
    assert.deepEqual(driverCalls, [], "held");
    await clock.advance(2 * MIN);
    assert.deepEqual(driverCalls, ["standby:vm1"]);
  });

  it("conntrack readable but not tracking here (tracking check fails): UNSUPPORTED with the reason, no standby; once it tracks, a whole window", async () => {
    let inactive: string | undefined = "conntrack is not tracking flows in the agent's network namespace: a probe connection was not in the table";
    let checks = 0;
    controller = build(true, 24 * 60 * MIN, {
      checkTracking: async () => {
        checks++;
        return inactive;
      },
    });
    await controller.start();
    const d = controller.describe("vm1");
    assert.deepEqual([d.status, d.reason, d.supported], ["UNSUPPORTED", "UNSUPPORTED_PLATFORM", false]);
    assert.equal(d.unsupportedReason, inactive);
    // No countdown where none can end in a standby (up showed "in 9s" next to UNSUPPORTED).
    assert.deepEqual([d.countdownRemainingMs, d.nextStandbyAt], [undefined, undefined]);
    assert.equal(controller.supported, false);
    assert.equal(controller.unsupportedReason, inactive);
    await clock.advance(20 * MIN);
    assert.deepEqual(driverCalls, [], "never a standby while conntrack tracks nothing");
    assert.ok(checks >= 40, `checked again every 30 s (${checks})`);
    // A rule that uses conntrack is added: at the next check, supported, and a countdown of a
    // whole timeout from then (what happened before was not seen).
    inactive = undefined;
    await clock.advance(30_000);
    assert.equal(controller.supported, true);
    assert.deepEqual([controller.describe("vm1").status, controller.describe("vm1").reason], ["IDLE_COUNTDOWN", "IDLE_TIMEOUT_NOT_ELAPSED"]);
    await clock.advance(10 * MIN - 1000);
    assert.deepEqual(driverCalls, []);
    await clock.advance(1000);
    assert.deepEqual(driverCalls, ["standby:vm1"]);
  });

  it("controller errors are counted by operation", async () => {
    await controller.start();
    source.failDumps = true;
    source.emit("error", new Error("netlink socket closed"));
    await settle();
    assert.equal(controller.counters.errors.resync, 1);
    failStandby = 1;
    source.failDumps = false;
    await clock.advance(10 * MIN);
    assert.equal(controller.counters.errors.standby, 1);
    assert.equal(controller.counters.errors.confirm_dump, 0);
  });

  it("a resync that failed after a stream error is tried again after the reconnect delay, not at the next sync", async () => {
    controller = build(true, 24 * 60 * MIN, { reconnectMs: 1000 });
    await controller.start();
    source.failDumps = true;
    source.emit("error", new Error("netlink socket closed"));
    await settle();
    assert.equal(controller.describe("vm1").status, "ERROR");
    source.failDumps = false;
    await clock.advance(999);
    assert.equal(controller.describe("vm1").status, "ERROR");
    await clock.advance(1);
    assert.equal(controller.describe("vm1").status, "IDLE_COUNTDOWN");
  });

  it("--standby-reconcile-interval: the re-read while flows are active runs at the configured interval", async () => {
    controller = build(true, 24 * 60 * MIN, { reconcileMs: 7000 });
    await controller.start();
    const f = source.open(client(40000));
    source.close(f, true); // DESTROY lost: only a reconcile dump finds it gone
    await clock.advance(6999);
    assert.equal(controller.describe("vm1").status, "ACTIVE");
    await clock.advance(1);
    assert.equal(controller.describe("vm1").status, "IDLE_COUNTDOWN");
  });
});
