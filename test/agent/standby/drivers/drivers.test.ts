import { afterAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { createCgroupDriver } from "../../../../agent/standby/drivers/cgroup-driver.js";
import { createExecDriver } from "../../../../agent/standby/drivers/exec-driver.js";
import { createSignalDriver } from "../../../../agent/standby/drivers/signal-driver.js";
import { DriverError } from "../../../../agent/standby/drivers/standby-driver.js";
import { tempDir } from "../../../helpers/temp-dir.js";

const children: ChildProcess[] = [];
afterAll(() => {
  for (const c of children) c.kill("SIGKILL");
});

function sleeper(): ChildProcess {
  const c = spawn("sleep", ["60"], { stdio: "ignore" });
  children.push(c);
  return c;
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
    const driver = createExecDriver({ standby: ["sh", "-c", "echo '  snapshot failed: disk full  ' >&2; exit 3"], wake: [] });
    await assert.rejects(driver.standby({ id: "x", pid: undefined, ip: "", kind: 1 }), (e: unknown) => {
      assert.ok(e instanceof DriverError);
      assert.match(e.message, /standby "sh": exit status 3: snapshot failed: disk full$/);
      return true;
    });
    await assert.rejects(driver.wake({ id: "x", pid: undefined, ip: "", kind: 1 }), /no wake command configured/);
  });
});

describe("signal driver", () => {
  it("stops and continues a real process", async () => {
    const c = sleeper();
    const driver = createSignalDriver();
    const target = { id: "s", pid: c.pid!, ip: "", kind: 3 };
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
    await assert.rejects(driver.standby({ id: "n", pid: 4_000_000, ip: "", kind: 3 }), /ESRCH/);
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
      const target = { id: "c", pid: c.pid!, ip: "", kind: 3 };
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
    await assert.rejects(driver.standby({ id: "r", pid: process.pid, ip: "", kind: 3 }), /cannot be frozen|not in a cgroup of its own/);
  });
});
