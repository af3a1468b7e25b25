import { afterAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { InstanceKind, InstanceState } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { StandbyService } from "../../gen/fleetlet/agent/v1/standby_pb.js";
import { createGrpcJsTransport } from "../../lib/rpc/grpc-transport.js";
import { startDaemon, type DaemonProcess } from "../helpers/daemon-process.js";
import { agentClients } from "../helpers/clients.js";
import { tempDir } from "../helpers/temp-dir.js";

// Issue 13's attacks on the host itself, against a real agent (security.md "The host itself"):
// RegisterInstance of pid 1, the agent, its parent or kthreadd is refused; a registered instance
// naming a container is never paused; with --standby off a wake never reaches a driver; a
// STANDBY instance whose process is gone is noticed; --allowed-uids is enforced.

const skip = process.getuid?.() !== 0 ? "needs root (the agent reads conntrack with --standby on)" : false;

const dirs: ReturnType<typeof tempDir>[] = [];
const daemons: DaemonProcess[] = [];
const children: ChildProcess[] = [];
afterAll(async () => {
  for (const c of children) c.kill("SIGKILL");
  await Promise.all(daemons.map((d) => d.stop()));
  for (const d of dirs) d.remove();
});

async function agent(...extra: string[]) {
  const dir = tempDir("pid-own");
  dirs.push(dir);
  const d = await startDaemon(["agent", "--listen", "127.0.0.1:0", "--state-dir", dir.path, "--metrics-listen", "off", "--runtime", "none", ...extra]);
  daemons.push(d);
  const clients = agentClients(d.address);
  const transport = createGrpcJsTransport(d.address);
  return {
    daemon: d,
    inventory: clients.inventory,
    standby: createClient(StandbyService, transport),
    close() {
      clients.close();
      transport.close();
    },
  };
}

function sleeper(): ChildProcess {
  const c = spawn("sleep", ["120"], { stdio: "ignore" });
  children.push(c);
  return c;
}

const procState = (pid: number) => {
  const line = readFileSync(`/proc/${pid}/stat`, "latin1");
  return line.slice(line.lastIndexOf(")") + 2, line.lastIndexOf(")") + 3);
};

const fails = (code: Code, why: RegExp) => (e: unknown) => {
  assert.ok(e instanceof ConnectError, String(e));
  assert.equal(e.code, code, e.rawMessage);
  assert.match(e.rawMessage, why);
  return true;
};

describe.skipIf(skip)("pid identity and ownership, end to end", () => {
  it("refuses pid 1, the agent, its parent and kthreadd; never pauses a registered 'container'; notices a STANDBY instance's process gone", async () => {
    const a = await agent("--standby", "on");
    const policy = { enabled: true, idleTimeout: "5s" };
    for (const [pid, why] of [[1, /pid 1 is init/], [a.daemon.pid, /is the agent itself/], [process.pid, /is an ancestor of the agent/], [2, /kernel thread/]] as const) {
      await assert.rejects(a.inventory.registerInstance({ instance: { id: `p${pid}`, pid, ip: "10.9.9.9", networkEnabled: true, standbyPolicy: policy } }), fails(Code.InvalidArgument, new RegExp(`^instance\\.pid: .*${why.source}`)));
    }
    assert.equal((await a.inventory.listInstances({})).instances.length, 0, "nothing registered");

    // A registered instance naming a container: set to STANDBY, then woken: the docker driver refuses.
    await a.inventory.registerInstance({ instance: { id: "fake-ctr", kind: InstanceKind.CONTAINER, runtimeRef: "docker/sshd", standbyPolicy: { ...policy, driver: "docker" } } });
    await a.inventory.setInstanceState({ instanceId: "fake-ctr", state: InstanceState.STANDBY });
    await assert.rejects(a.standby.wakeInstance({ instanceId: "fake-ctr" }), fails(Code.FailedPrecondition, /was not created by the container runtime sync/));

    // A STANDBY instance whose process exits is noticed (STOPPED), never woken later.
    const s = sleeper();
    await a.inventory.registerInstance({ instance: { id: "gone", pid: s.pid!, state: InstanceState.STANDBY } });
    s.kill("SIGKILL");
    let state = InstanceState.STANDBY;
    for (let i = 0; i < 100 && state !== InstanceState.STOPPED; i++) {
      await new Promise((r) => setTimeout(r, 100));
      state = (await a.inventory.getInstance({ instanceId: "gone" })).instance!.state;
    }
    assert.equal(state, InstanceState.STOPPED);
    a.close();
  });

  it("with --standby off, SetInstanceState STANDBY + WakeInstance sends no SIGCONT; --allowed-uids refuses other owners", async () => {
    const a = await agent("--standby", "off");
    const s = sleeper();
    await a.inventory.registerInstance({ instance: { id: "held", pid: s.pid! } });
    // Stopped by someone else (a debugger, job control): the agent must not continue it.
    process.kill(s.pid!, "SIGSTOP");
    await a.inventory.setInstanceState({ instanceId: "held", state: InstanceState.STANDBY });
    await assert.rejects(a.standby.wakeInstance({ instanceId: "held" }), fails(Code.FailedPrecondition, /standby is not running on this agent/));
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(procState(s.pid!), "T", "still stopped");
    process.kill(s.pid!, "SIGCONT");
    a.close();

    const b = await agent("--standby", "off", "--allowed-uids", "4242", "--allowed-cgroups", "/fleetlet-e2e-none");
    await assert.rejects(b.inventory.registerInstance({ instance: { id: "root-owned", pid: sleeper().pid! } }), fails(Code.PermissionDenied, /^instance\.pid: pid \d+ runs as uid 0, outside --allowed-uids 4242/));
    b.close();
    const c = await agent("--standby", "off", "--allowed-cgroups", "/fleetlet-e2e-none");
    await assert.rejects(c.inventory.registerInstance({ instance: { id: "elsewhere", pid: sleeper().pid! } }), fails(Code.PermissionDenied, /^instance\.pid: pid \d+ is in cgroup \S+, outside --allowed-cgroups \/fleetlet-e2e-none/));
    c.close();
  });

  it("--standby-cgroup-root: a process in a cgroup outside it is never frozen or thawed", async () => {
    const v1 = existsSync("/sys/fs/cgroup/freezer");
    const name = `fleetlet-e2e-${randomBytes(3).toString("hex")}`;
    const dir = v1 ? `/sys/fs/cgroup/freezer/${name}` : `/sys/fs/cgroup/${name}`;
    mkdirSync(dir);
    const s = sleeper();
    try {
      writeFileSync(`${dir}/cgroup.procs`, String(s.pid));
      const a = await agent("--standby", "on", "--standby-cgroup-root", "/fleetlet-e2e-allowed");
      await a.inventory.registerInstance({ instance: { id: "foreign", pid: s.pid!, standbyPolicy: { enabled: true, idleTimeout: "5s", driver: "cgroup" } } });
      await a.inventory.setInstanceState({ instanceId: "foreign", state: InstanceState.STANDBY });
      await assert.rejects(a.standby.wakeInstance({ instanceId: "foreign" }), fails(Code.FailedPrecondition, new RegExp(`cgroup /${name} is not below --standby-cgroup-root /fleetlet-e2e-allowed`)));
      a.close();
    } finally {
      s.kill("SIGKILL");
      await new Promise((r) => (s.exitCode !== null || s.signalCode !== null ? r(null) : s.once("exit", r)));
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
});
