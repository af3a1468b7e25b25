import { afterAll, afterEach, describe, it, vi } from "vitest";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { createCgroupDriver } from "../../../../agent/standby/drivers/cgroup-driver.js";
import { createExecDriver } from "../../../../agent/standby/drivers/exec-driver.js";
import { createSignalDriver } from "../../../../agent/standby/drivers/signal-driver.js";
import { createDockerDriver } from "../../../../agent/standby/drivers/docker-driver.js";
import { DriverError, type DriverTarget } from "../../../../agent/standby/drivers/standby-driver.js";
import type { ContainerRuntime } from "../../../../agent/runtime/container-runtime.js";
import { InstanceKind, InstanceSource } from "../../../../gen/fleetlet/agent/v1/inventory_pb.js";
import { readProcStat } from "../../../../lib/proc-stat-parser.js";
import { tempDir } from "../../../helpers/temp-dir.js";
import { fakeProc, KTHREAD_FLAGS } from "./fake-proc.js";

const children: ChildProcess[] = [];
afterAll(() => {
  for (const c of children) c.kill("SIGKILL");
});

function sleeper(): ChildProcess {
  const c = spawn("sleep", ["60"], { stdio: "ignore" });
  children.push(c);
  return c;
}

/** The start time the registry would have recorded for `pid`. */
function startOf(pid: number): bigint {
  return readProcStat(pid)!.startTimeTicks;
}

function procState(pid: number): string {
  const line = readFileSync(`/proc/${pid}/stat`, "latin1");
  return line.slice(line.lastIndexOf(")") + 2, line.lastIndexOf(")") + 3);
}

describe("exec driver", () => {
  it("runs the command with the instance in its environment; exit 0 = done", async () => {
    const d = tempDir("exec-driver");
    const out = join(d.path, "out");
    const driver = createExecDriver({ standby: ["sh", "-c", `echo "$FLEETLET_INSTANCE_ID $FLEETLET_INSTANCE_PID $FLEETLET_INSTANCE_IP" > ${out}`], wake: ["true"] });
    await driver.standby({ id: "vm-7", pid: 42, ip: "10.0.0.7", kind: 1 });
    assert.equal(readFileSync(out, "utf8"), "vm-7 42 10.0.0.7\n");
    await driver.wake({ id: "vm-7", pid: 42, ip: "10.0.0.7", kind: 1 });
    d.remove();
  });
  it("a non-zero exit is an error with the status and the trimmed output", async () => {
    const logged: string[] = [];
    const driver = createExecDriver({ standby: ["sh", "-c", "echo '  snapshot failed: disk full  ' >&2; exit 3"], wake: [], onFailureOutput: (what, output) => logged.push(`${what}: ${output}`) });
    await assert.rejects(driver.standby({ id: "x", pid: undefined, ip: "", kind: 1 }), (e: unknown) => {
      assert.ok(e instanceof DriverError);
      // The output is the host's: logged by the agent, never echoed to the caller.
      assert.match(e.message, /standby "sh": exit status 3 \(output in the agent's log\)$/);
      assert.doesNotMatch(e.message, /disk full/);
      return true;
    });
    assert.deepEqual(logged, ['standby "sh": snapshot failed: disk full']);
    await assert.rejects(driver.wake({ id: "x", pid: undefined, ip: "", kind: 1 }), /no wake command configured/);
  });
});

describe("signal driver", () => {
  it("stops and continues a real process", async () => {
    const c = sleeper();
    const driver = createSignalDriver();
    const target = { id: "s", pid: c.pid!, ip: "", kind: 3, pidStartTime: startOf(c.pid!) };
    await driver.standby(target);
    // Signals are delivered asynchronously: give the kernel a moment.
    for (let i = 0; i < 100 && procState(c.pid!) !== "T"; i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(procState(c.pid!), "T");
    await driver.wake(target);
    for (let i = 0; i < 100 && procState(c.pid!) === "T"; i++) await new Promise((r) => setTimeout(r, 10));
    assert.notEqual(procState(c.pid!), "T");
  });
  it("an instance without a pid, or a pid that is gone, is an error", async () => {
    const driver = createSignalDriver();
    await assert.rejects(driver.standby({ id: "n", pid: undefined, ip: "", kind: 3 }), /has no pid/);
    await assert.rejects(driver.standby({ id: "n", pid: 4_000_000, ip: "", kind: 3, pidStartTime: 1n }), /pid 4000000 is gone/);
  });
});

// cgroup v2 (cgroup.freeze) or the v1 freezer, whichever this machine has; root only.
const v2 = existsSync("/sys/fs/cgroup/cgroup.controllers");
const v1 = existsSync("/sys/fs/cgroup/freezer");
const cgroupSkip = process.getuid?.() !== 0 ? "needs root" : !v2 && !v1 ? "no cgroup v2 and no v1 freezer here" : false;

describe.skipIf(cgroupSkip)("cgroup driver", () => {
  it("freezes and thaws the process's own cgroup", async () => {
    const name = `fleetlet-test-${randomBytes(3).toString("hex")}`;
    const dir = v2 ? join("/sys/fs/cgroup", name) : join("/sys/fs/cgroup/freezer", name);
    mkdirSync(dir);
    const c = sleeper();
    try {
      writeFileSync(join(dir, "cgroup.procs"), String(c.pid));
      const driver = createCgroupDriver();
      const target = { id: "c", pid: c.pid!, ip: "", kind: 3, pidStartTime: startOf(c.pid!) };
      const frozen = () => (v2 ? /frozen 1/.test(readFileSync(join(dir, "cgroup.events"), "utf8")) : readFileSync(join(dir, "freezer.state"), "utf8").trim() === "FROZEN");
      await driver.standby(target);
      for (let i = 0; i < 50 && !frozen(); i++) await new Promise((r) => setTimeout(r, 20));
      assert.ok(frozen(), "frozen");
      await driver.wake(target);
      for (let i = 0; i < 50 && frozen(); i++) await new Promise((r) => setTimeout(r, 20));
      assert.ok(!frozen(), "thawed");
    } finally {
      c.kill("SIGKILL");
      await new Promise((r) => (c.exitCode !== null || c.signalCode !== null ? r(null) : c.once("exit", r)));
      for (let i = 0; i < 50; i++) {
        try {
          rmdirSync(dir);
          break;
        } catch {
          await new Promise((r) => setTimeout(r, 20));
        }
      }
    }
  });
  it("refuses a process in the root cgroup (it cannot be frozen)", async () => {
    const driver = createCgroupDriver();
    const c = sleeper();
    await assert.rejects(driver.standby({ id: "r", pid: c.pid!, ip: "", kind: 3, pidStartTime: startOf(c.pid!) }), /root cgroup, which cannot be frozen|also holds the agent itself/);
  });
});

// security.md "The host itself": the attacks of issue 13, each refused with nothing signalled,
// frozen or paused. process.kill is watched (and still called through) to prove it.
describe("pid identity and ownership", () => {
  const kills: [number, string][] = [];
  const watchKills = () => {
    kills.length = 0;
    const real = process.kill.bind(process);
    vi.spyOn(process, "kill").mockImplementation((pid: number, signal?: string | number) => {
      kills.push([pid, String(signal)]);
      return real(pid, signal);
    });
  };
  afterEach(() => vi.restoreAllMocks());
  const target = (pid: number, extra: Partial<DriverTarget> = {}): DriverTarget => ({ id: `p${pid}`, pid, ip: "", kind: InstanceKind.PROCESS, pidStartTime: readProcStat(pid)?.startTimeTicks, ...extra });

  it("pid 1, the agent, its parent and kthreadd are refused on the real /proc; nothing is signalled", async () => {
    watchKills();
    const driver = createSignalDriver();
    for (const [pid, why] of [[1, /pid 1 is init/], [process.pid, /is the agent itself/], [process.ppid, /is an ancestor of the agent/], [2, /kthreadd, a kernel thread/]] as const) {
      await assert.rejects(driver.standby(target(pid)), (e: unknown) => e instanceof DriverError && why.test(e.message));
      await assert.rejects(driver.wake(target(pid)), why);
    }
    assert.deepEqual(kills, []);
  });

  it("kernel threads, the agent's lineage and anything outside --allowed-uids / --allowed-cgroups, on a fake /proc", async () => {
    const proc = fakeProc({
      1: { ppid: 0 },
      2: { ppid: 0, flags: KTHREAD_FLAGS },
      77: { ppid: 2, flags: KTHREAD_FLAGS },
      88: { ppid: 1, flags: KTHREAD_FLAGS },
      300: { ppid: 1, pgrp: 300 },
      400: { ppid: 300, pgrp: 300 },
      500: { ppid: 400, pgrp: 300 },
      600: { ppid: 1, uid: 1000, cgroup: "0::/machine.slice/vm600.scope\n", start: 4242n },
    });
    watchKills();
    try {
      const refused = async (policy: Parameters<typeof createSignalDriver>[0], pid: number, why: RegExp) => {
        const t = { id: `p${pid}`, pid, ip: "", kind: 3, pidStartTime: pid === 600 ? 4242n : 1000n };
        await assert.rejects(createSignalDriver(policy).standby(t), why);
        await assert.rejects(createCgroupDriver({ pid: policy!, mount: proc.root }).standby(t), why);
      };
      const base = { procRoot: proc.root, selfPid: 500 };
      await refused(base, 77, /pid 77 is a kernel thread/);
      await refused(base, 88, /pid 88 is a kernel thread/);
      await refused(base, 400, /pid 400 is an ancestor of the agent/);
      await refused(base, 300, /pid 300 is an ancestor of the agent/);
      await refused(base, 500, /pid 500 is the agent itself/);
      await refused({ ...base, allowedUids: [0, 1001] }, 600, /pid 600 runs as uid 1000, outside --allowed-uids 0,1001/);
      await refused({ ...base, allowedCgroups: ["/machine.slice/vm6"] }, 600, /pid 600 is in cgroup \/machine.slice\/vm600.scope, outside --allowed-cgroups/);
      assert.deepEqual(kills, []);
    } finally {
      proc.remove();
    }
  });

  it("a reused pid (its start time is not the recorded one) is refused, says so, and is not signalled", async () => {
    const c = sleeper();
    watchKills();
    const driver = createSignalDriver();
    const t = target(c.pid!, { pidStartTime: startOf(c.pid!) + 1n });
    await assert.rejects(driver.standby(t), /pid reused: pid \d+ now belongs to another process/);
    await assert.rejects(driver.wake(t), /pid reused/);
    // Without a recorded start time the process cannot be re-identified either.
    await assert.rejects(driver.standby(target(c.pid!, { pidStartTime: undefined })), /cannot be re-identified/);
    assert.deepEqual(kills, []);
    await new Promise((r) => setTimeout(r, 50));
    assert.notEqual(procState(c.pid!), "T");
  });

  it("a group is signalled only when registration recorded the pid as its own group's leader", async () => {
    // sh leads a new process group; `exec sleep` keeps the leader's pid, the background sleep
    // is another member of the same group.
    const leader = spawn("sh", ["-c", "sleep 60 & exec sleep 61"], { stdio: "ignore", detached: true });
    children.push(leader);
    let member: number | undefined;
    for (let i = 0; i < 100 && member === undefined; i++) {
      await new Promise((r) => setTimeout(r, 20));
      const kids = readFileSync(`/proc/${leader.pid}/task/${leader.pid}/children`, "latin1").trim();
      if (kids && readFileSync(`/proc/${leader.pid}/cmdline`, "latin1").startsWith("sleep")) member = Number(kids.split(" ")[0]);
    }
    assert.ok(member, "the group's second process");
    const l = leader.pid!;
    try {
      watchKills();
      const driver = createSignalDriver();
      // A member that claims a recorded group: it is not its group's leader, only it stops.
      await driver.standby(target(member, { ownProcessGroup: true }));
      await driver.wake(target(member, { ownProcessGroup: true }));
      // The leader without a recorded group: only the leader.
      await driver.standby(target(l));
      for (let i = 0; i < 100 && procState(l) !== "T"; i++) await new Promise((r) => setTimeout(r, 10));
      assert.equal(procState(l), "T");
      assert.notEqual(procState(member), "T", "the other member of the group is not stopped");
      await driver.wake(target(l));
      // Recorded as its own group's leader: the group.
      await driver.standby(target(l, { ownProcessGroup: true }));
      for (let i = 0; i < 100 && procState(member) !== "T"; i++) await new Promise((r) => setTimeout(r, 10));
      assert.equal(procState(member), "T");
      await driver.wake(target(l, { ownProcessGroup: true }));
      assert.deepEqual(kills, [
        [member, "SIGSTOP"],
        [member, "SIGCONT"],
        [l, "SIGSTOP"],
        [l, "SIGCONT"],
        [-l, "SIGSTOP"],
        [-l, "SIGCONT"],
      ]);
    } finally {
      vi.restoreAllMocks();
      process.kill(-l, "SIGKILL");
    }
  });

  it("the cgroup driver refuses the root cgroup, init.scope, a cgroup holding the agent or pid 1, and any outside --standby-cgroup-root", async () => {
    const proc = fakeProc({
      1: { ppid: 0, cgroup: "0::/init.scope\n" },
      500: { ppid: 1, cgroup: "0::/system.slice/fleetlet-agent.service\n" },
      601: { ppid: 1 },
      602: { ppid: 1, cgroup: "0::/init.scope\n" },
      603: { ppid: 1, cgroup: "0::/system.slice\n" },
      604: { ppid: 1, cgroup: "0::/machine.slice/other.scope\n" },
      605: { ppid: 1, cgroup: "0::/fleetlet/vm605\n" },
    });
    try {
      const driver = (freezeRoot?: string) => createCgroupDriver({ pid: { procRoot: proc.root, selfPid: 500 }, mount: proc.root, freezeRoot });
      const t = (pid: number) => ({ id: `p${pid}`, pid, ip: "", kind: 3, pidStartTime: 1000n });
      await assert.rejects(driver().standby(t(601)), /cgroup \/ is the root cgroup/);
      await assert.rejects(driver().standby(t(602)), /cgroup \/init.scope is init.scope/);
      await assert.rejects(driver().standby(t(603)), /cgroup \/system.slice also holds the agent itself/);
      await assert.rejects(driver("/fleetlet").standby(t(604)), /cgroup \/machine.slice\/other.scope is not below --standby-cgroup-root \/fleetlet/);
      await assert.rejects(driver("/fleetlet/vm605").standby(t(605)), /is not below --standby-cgroup-root/);
      assert.equal(existsSync(join(proc.root, "machine.slice")), false, "nothing written");
      // Below the configured root it goes as far as writing cgroup.freeze (absent in a fake tree).
      await assert.rejects(driver("/fleetlet").standby(t(605)), /fleetlet\/vm605\/cgroup.freeze: ENOENT/);
    } finally {
      proc.remove();
    }
  });

  it("the docker driver pauses only containers the runtime sync created, not a registered instance naming one", async () => {
    const calls: string[] = [];
    const runtime = { pause: async (id: string) => void calls.push(`pause ${id}`), unpause: async (id: string) => void calls.push(`unpause ${id}`) } as unknown as ContainerRuntime;
    const driver = createDockerDriver(() => runtime);
    const t: DriverTarget = { id: "sshd-box", pid: undefined, ip: "", kind: InstanceKind.CONTAINER, runtimeRef: "docker/victim", source: InstanceSource.REGISTERED };
    await assert.rejects(driver.standby(t), /was not created by the container runtime sync/);
    await assert.rejects(driver.wake({ ...t, kind: InstanceKind.VM, source: InstanceSource.RUNTIME }), /was not created by the container runtime sync/);
    assert.deepEqual(calls, []);
    await driver.standby({ ...t, source: InstanceSource.RUNTIME });
    assert.deepEqual(calls, ["pause victim"]);
  });
});
