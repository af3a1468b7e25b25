import { afterEach, beforeEach, describe, it, vi } from "vitest";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { InstanceKind, InstanceSchema, InstanceSource, InstanceState, RegisterInstanceRequestSchema, type Instance } from "../../../gen/fleetlet/agent/v1/inventory_pb.js";
import { SetStandbyPolicyRequestSchema, StandbyPolicySchema } from "../../../gen/fleetlet/agent/v1/standby_pb.js";
import { InstanceRegistry } from "../../../agent/inventory/instance-registry.js";
import { createInventoryService } from "../../../agent/inventory/inventory-service.js";
import { ProcessGroupRecord } from "../../../agent/inventory/pid-ownership.js";
import { watchProcessLiveness } from "../../../agent/inventory/process-liveness.js";
import { StandbyController, type StandbyInstance } from "../../../agent/standby/standby-controller.js";
import { createStandbyService } from "../../../agent/standby/standby-service.js";
import { DEFAULT_POLICY_LIMITS } from "../../../agent/standby/standby-policy.js";
import { createLogger } from "../../../lib/rpc/logger.js";
import { tempDir } from "../../helpers/temp-dir.js";
import { FakeClock, FakeFlowSource } from "../standby/fake-clock.js";
import { fakeProc } from "../standby/drivers/fake-proc.js";
import { createSignalDriver } from "../../../agent/standby/drivers/signal-driver.js";
import { DEFAULT_ROOTS } from "../../../agent/kernel/instance-probe.js";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";

// security.md "The host itself" at registration: a pid that is never an instance is refused
// with INVALID_ARGUMENT, one outside the allow lists with PERMISSION_DENIED, both naming
// instance.pid; ids of runtime or discovered instances cannot be registered over.

let dir: ReturnType<typeof tempDir>;
let registry: InstanceRegistry;
const children: ChildProcess[] = [];
beforeEach(() => {
  dir = tempDir("pid-ownership");
  registry = InstanceRegistry.open(dir.path);
});
afterEach(() => {
  for (const c of children.splice(0)) c.kill("SIGKILL");
  registry.close();
  dir.remove();
});

const ctx = {} as Parameters<ReturnType<typeof createInventoryService>["registerInstance"]>[1];
const register = (service: ReturnType<typeof createInventoryService>, instance: MessageInitShape<typeof InstanceSchema>) => {
  const i = create(InstanceSchema, instance);
  i.id ||= "vm";
  i.standbyPolicy ??= create(StandbyPolicySchema, { enabled: true, idleTimeout: "5s" });
  return Promise.resolve().then(() => service.registerInstance(create(RegisterInstanceRequestSchema, { instance: i }), ctx));
};
const refusedWith = (code: Code, why: RegExp) => (e: unknown) => {
  assert.ok(e instanceof ConnectError, String(e));
  assert.equal(e.code, code, e.rawMessage);
  assert.match(e.rawMessage, /^instance\.(pid|id): /);
  assert.match(e.rawMessage, why);
  return true;
};

function sleeper(options: { detached?: boolean } = {}): ChildProcess {
  const c = spawn("sleep", ["60"], { stdio: "ignore", ...options });
  children.push(c);
  return c;
}

describe("RegisterInstance: pid ownership", () => {
  it("refuses pid 1, the agent's own pid, its parent and kthreadd (INVALID_ARGUMENT naming instance.pid); nothing is stored", async () => {
    const service = createInventoryService(registry, { tapPrefix: "fl-" });
    await assert.rejects(register(service, { pid: 1 }), refusedWith(Code.InvalidArgument, /pid 1 is init/));
    await assert.rejects(register(service, { pid: process.pid }), refusedWith(Code.InvalidArgument, /is the agent itself/));
    await assert.rejects(register(service, { pid: process.ppid }), refusedWith(Code.InvalidArgument, /is an ancestor of the agent/));
    await assert.rejects(register(service, { pid: 2 }), refusedWith(Code.InvalidArgument, /kthreadd, a kernel thread/));
    assert.equal(registry.size, 0);
    // A process of the agent's own (a child) is fine.
    const c = sleeper();
    const { instance } = await register(service, { pid: c.pid! });
    assert.equal(instance!.pid, c.pid);
  });

  it("outside --allowed-uids / --allowed-cgroups: PERMISSION_DENIED naming instance.pid", async () => {
    const proc = fakeProc({ 1: { ppid: 0 }, 500: { ppid: 1 }, 600: { ppid: 1, uid: 1000, cgroup: "0::/user.slice/user-1000.slice/session-3.scope\n" }, 700: { ppid: 1, uid: 2000, cgroup: "0::/machine.slice/vm700.scope\n" } });
    try {
      const service = createInventoryService(registry, { tapPrefix: "fl-", pidPolicy: { procRoot: proc.root, selfPid: 500, allowedUids: [2000], allowedCgroups: ["/machine.slice"] } });
      await assert.rejects(register(service, { pid: 600 }), refusedWith(Code.PermissionDenied, /pid 600 runs as uid 1000, outside --allowed-uids 2000/));
      const cgroupOnly = createInventoryService(registry, { tapPrefix: "fl-", pidPolicy: { procRoot: proc.root, selfPid: 500, allowedCgroups: ["/machine.slice"] } });
      await assert.rejects(register(cgroupOnly, { pid: 600 }), refusedWith(Code.PermissionDenied, /pid 600 is in cgroup \/user.slice\/user-1000.slice\/session-3.scope, outside --allowed-cgroups \/machine.slice/));
      assert.equal((await register(service, { pid: 700 })).instance!.pid, 700);
    } finally {
      proc.remove();
    }
  });

  it("records a process group only for a pid that leads its own group", async () => {
    const groups = new ProcessGroupRecord();
    const service = createInventoryService(registry, { tapPrefix: "fl-", processGroups: groups });
    const leader = sleeper({ detached: true });
    const member = sleeper();
    const a = (await register(service, { id: "leader", pid: leader.pid! })).instance!;
    const b = (await register(service, { id: "member", pid: member.pid! })).instance!;
    assert.equal(groups.ownGroup("leader", a.pid, a.pidStartTime), true);
    assert.equal(groups.ownGroup("leader", a.pid, (a.pidStartTime ?? 0n) + 1n), false, "another process on that pid");
    assert.equal(groups.ownGroup("member", b.pid, b.pidStartTime), false, "a member of the test's group");

    // An agent restart: a new record rebuilt from the stored instances and /proc as it is now.
    const restarted = new ProcessGroupRecord();
    const stale = { id: "stale", pid: leader.pid!, pidStartTime: (a.pidStartTime ?? 0n) + 1n };
    const stored = [a, b].map((i) => ({ id: i.id ?? "", pid: i.pid, pidStartTime: i.pidStartTime }));
    assert.equal(restarted.restore([...stored, stale, { id: "no-pid" }], DEFAULT_ROOTS.proc), 1);
    assert.equal(restarted.ownGroup("leader", a.pid, a.pidStartTime), true, "the same process still leads its group");
    assert.equal(restarted.ownGroup("member", b.pid, b.pidStartTime), false);
    assert.equal(restarted.ownGroup("stale", stale.pid, stale.pidStartTime), false, "a recorded start time that is not the process's");
    leader.kill("SIGKILL");
    await new Promise((r) => leader.once("exit", r));
    assert.equal(new ProcessGroupRecord().restore(stored.slice(0, 1), DEFAULT_ROOTS.proc), 0, "the process is gone");
  });

  it("a registration cannot take over a RUNTIME or DISCOVERED instance's id (FAILED_PRECONDITION)", async () => {
    const service = createInventoryService(registry, { tapPrefix: "fl-" });
    await registry.upsert(create(InstanceSchema, { id: "docker-web", kind: InstanceKind.CONTAINER, source: InstanceSource.RUNTIME, runtimeRef: "docker/web" }));
    await registry.upsert(create(InstanceSchema, { id: "fc-vm", kind: InstanceKind.VM, source: InstanceSource.DISCOVERED }));
    await assert.rejects(register(service, { id: "docker-web", kind: InstanceKind.CONTAINER, runtimeRef: "docker/web" }), refusedWith(Code.FailedPrecondition, /is a RUNTIME instance and cannot be registered over/));
    await assert.rejects(register(service, { id: "fc-vm" }), refusedWith(Code.FailedPrecondition, /is a DISCOVERED instance/));
    assert.equal(registry.get("docker-web")!.source, InstanceSource.RUNTIME);
  });
});

describe("standby on instances that are not the caller's to change", () => {
  const view = (i: Instance): StandbyInstance => ({ id: i.id, state: i.state, networkEnabled: i.networkEnabled, ip: i.ip, hasVgpu: i.hasVgpu, policy: i.standbyPolicy });
  const controllerFor = (source: FakeFlowSource | undefined, wakes: string[]) =>
    new StandbyController({
      clock: new FakeClock(),
      source,
      unsupportedReason: source ? undefined : "conntrack disabled by configuration",
      instances: { list: () => registry.list().map(view), get: (id) => (registry.get(id) ? view(registry.get(id)!) : undefined) },
      runtime: { get: () => undefined, set: () => undefined },
      standby: async () => undefined,
      wake: async (i) => void wakes.push(i.id),
      setState: async (id, state) => void (await registry.setState(id, state)),
    });

  it("SetStandbyPolicy refuses a discovered (read-only) instance", async () => {
    await registry.upsert(create(InstanceSchema, { id: "fc-vm", kind: InstanceKind.VM, source: InstanceSource.DISCOVERED, state: InstanceState.RUNNING }));
    const service = createStandbyService(registry, controllerFor(new FakeFlowSource(), []), DEFAULT_POLICY_LIMITS);
    const call = () => Promise.resolve().then(() => service.setStandbyPolicy(create(SetStandbyPolicyRequestSchema, { instanceId: "fc-vm", policy: create(StandbyPolicySchema, { enabled: true, idleTimeout: "5s" }) }), ctx as never));
    await assert.rejects(call(), (e: unknown) => e instanceof ConnectError && e.code === Code.FailedPrecondition && /discovered on the host and is read-only/.test(e.rawMessage));
    assert.equal(registry.get("fc-vm")!.standbyPolicy, undefined);
  });

  it("with --standby off, SetInstanceState STANDBY + WakeInstance never runs a driver", async () => {
    await registry.upsert(create(InstanceSchema, { id: "vm", kind: InstanceKind.VM, state: InstanceState.STANDBY }));
    const wakes: string[] = [];
    const controller = controllerFor(undefined, wakes);
    await assert.rejects(controller.wake("vm"), (e: unknown) => e instanceof ConnectError && e.code === Code.FailedPrecondition && /standby is not running on this agent \(conntrack disabled by configuration\): no driver acts/.test(e.rawMessage));
    assert.deepEqual(wakes, []);
    assert.equal(registry.get("vm")!.state, InstanceState.STANDBY);
    // With standby running, the same wake goes to the driver.
    await controllerFor(new FakeFlowSource(), wakes).wake("vm");
    assert.deepEqual(wakes, ["vm"]);
  });
});

describe("a reused pid", () => {
  it("the driver refuses to wake it and the standby status says pid reused; nothing is signalled", async () => {
    const proc = fakeProc({ 1: { ppid: 0 }, 500: { ppid: 1 }, 600: { ppid: 1, start: 1000n } });
    const kill = vi.spyOn(process, "kill");
    let fakeRegistry: InstanceRegistry | undefined;
    try {
      mkdirSync(`${dir.path}/fake`);
      fakeRegistry = InstanceRegistry.open(`${dir.path}/fake`, { ...DEFAULT_ROOTS, proc: proc.root });
      const registryOnFakeProc = fakeRegistry;
      await registryOnFakeProc.upsert(create(InstanceSchema, { id: "vm", kind: InstanceKind.PROCESS, state: InstanceState.STANDBY, pid: 600, standbyPolicy: { enabled: true, idleTimeout: "5s" } }));
      assert.equal(registryOnFakeProc.get("vm")!.pidStartTime, 1000n, "recorded at registration");
      // The process exits and another one gets pid 600.
      rmSync(`${proc.root}/600/stat`);
      writeFileSync(`${proc.root}/600/stat`, "600 (other) S 1 600 600 0 -1 4194560 0 0 0 0 1 1 0 0 20 0 1 0 9999 1000 10\n");
      const driver = createSignalDriver({ procRoot: proc.root, selfPid: 500 });
      const controller = new StandbyController({
        clock: new FakeClock(),
        source: new FakeFlowSource(),
        instances: { list: () => [], get: (id) => { const i = registryOnFakeProc.get(id); return i && { id: i.id, state: i.state, networkEnabled: i.networkEnabled, ip: i.ip, hasVgpu: i.hasVgpu, policy: i.standbyPolicy }; } },
        runtime: { get: () => undefined, set: () => undefined },
        standby: async () => undefined,
        wake: async (v) => {
          const i = registryOnFakeProc.get(v.id)!;
          await driver.wake({ id: i.id, pid: i.pid, ip: i.ip, kind: i.kind, source: i.source, pidStartTime: i.pidStartTime });
        },
        setState: async (id, state) => void (await registryOnFakeProc.setState(id, state)),
      });
      await assert.rejects(controller.wake("vm"), (e: unknown) => e instanceof ConnectError && e.code === Code.FailedPrecondition && /pid reused: pid 600 now belongs to another process \(start time 9999, recorded 1000\)/.test(e.rawMessage));
      assert.match(controller.describe("vm").lastError ?? "", /^wake: signal driver: instance vm: pid reused/);
      assert.equal(registryOnFakeProc.get("vm")!.state, InstanceState.STANDBY);
      assert.equal(kill.mock.calls.length, 0, "nothing signalled");
    } finally {
      kill.mockRestore();
      fakeRegistry?.close();
      proc.remove();
    }
  });
});

describe("process liveness", () => {
  it("notices a STANDBY instance whose process is gone: STOPPED (stop-crash)", async () => {
    const c = sleeper();
    await registry.upsert(create(InstanceSchema, { id: "vm", kind: InstanceKind.VM, state: InstanceState.STANDBY, pid: c.pid! }));
    assert.ok(registry.get("vm")!.pidStartTime !== undefined, "start time recorded");
    c.kill("SIGKILL");
    await new Promise((r) => c.once("exit", r));
    const stop = watchProcessLiveness(registry, createLogger("test", "silent"), "/proc", 20);
    try {
      for (let i = 0; i < 100 && registry.get("vm")!.state !== InstanceState.STOPPED; i++) await new Promise((r) => setTimeout(r, 10));
      assert.equal(registry.get("vm")!.state, InstanceState.STOPPED);
    } finally {
      stop();
    }
  });
});
