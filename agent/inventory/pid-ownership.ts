import { readFileSync } from "node:fs";
import { Code, ConnectError } from "@connectrpc/connect";

/** include/linux/sched.h: the task is a kernel thread. */
const PF_KTHREAD = 0x0020_0000;
/** kthreadd: the parent of every kernel thread. */
const KTHREADD_PID = 2;

/** What the agent accepts as an instance's process (security.md "The host itself"). */
export interface PidPolicy {
  /** Where /proc is (tests point it at a tree of their own). */
  procRoot: string;
  /** The agent's own pid (tests inject one to match their tree); default process.pid. */
  selfPid?: number;
  /** --allowed-uids: when non-empty, every uid of the process (real, effective, saved, fs) is in it. */
  allowedUids?: readonly number[];
  /** --allowed-cgroups: when non-empty, the process's cgroup is one of these or below one. */
  allowedCgroups?: readonly string[];
}

/** What /proc says about one process, as far as ownership and identity go. */
export interface ProcessFacts {
  pid: number;
  parentPid: number;
  processGroup: number;
  flags: number;
  startTimeTicks: bigint;
  uids: number[];
  /** The cgroup a standby freezes: the v1 freezer's path when there is one, else the v2 path. */
  cgroup: string;
  freezerV1: boolean;
}

/**
 * Why a pid is refused: `invalid` (never an instance: pid 1, the agent and its ancestors, kernel
 * threads) or `denied` (outside --allowed-uids / --allowed-cgroups), and what was refused.
 */
export class PidRefusal extends Error {
  override name = "PidRefusal";
  constructor(
    readonly kind: "invalid" | "denied",
    readonly reason: string,
  ) {
    super(reason);
  }

  /** The RPC answer for a registration: INVALID_ARGUMENT or PERMISSION_DENIED naming the field. */
  toConnectError(field: string): ConnectError {
    return new ConnectError(`${field}: ${this.reason}`, this.kind === "invalid" ? Code.InvalidArgument : Code.PermissionDenied);
  }
}

/**
 * /proc/<pid>/stat fields 4 (ppid), 5 (pgrp), 9 (flags) and 22 (starttime), /proc/<pid>/status
 * Uid and /proc/<pid>/cgroup; undefined when the process does not exist (or exited meanwhile).
 * Malformed content throws: it is not proof of anything.
 */
export function readProcessFacts(procRoot: string, pid: number): ProcessFacts | undefined {
  let stat: string;
  let status: string;
  let cgroups: string;
  try {
    stat = readFileSync(`${procRoot}/${pid}/stat`, "latin1");
    status = readFileSync(`${procRoot}/${pid}/status`, "latin1");
    cgroups = readFileSync(`${procRoot}/${pid}/cgroup`, "latin1");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT" || code === "ESRCH") return undefined;
    throw e;
  }
  // comm (field 2) may hold spaces and ')': the fields after the last ')' start at field 3.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).trim().split(/\s+/);
  const field = (n: number) => {
    const v = fields[n - 3];
    if (v === undefined || !/^\d+$/.test(v)) throw new Error(`${procRoot}/${pid}/stat: field ${n} is not a number`);
    return v;
  };
  const uidLine = /^Uid:\s+(.*)$/m.exec(status)?.[1];
  if (uidLine === undefined) throw new Error(`${procRoot}/${pid}/status: no Uid line`);
  let cgroup: string | undefined;
  let freezerV1 = false;
  for (const line of cgroups.split("\n")) {
    const [, controllers, path] = line.split(":");
    if (path === undefined) continue;
    if (controllers?.split(",").includes("freezer")) {
      cgroup = path;
      freezerV1 = true;
      break;
    }
    if (line.startsWith("0::")) cgroup = line.slice(3);
  }
  return {
    pid,
    parentPid: Number(field(4)),
    processGroup: Number(field(5)),
    flags: Number(field(9)),
    startTimeTicks: BigInt(field(22)),
    uids: uidLine.trim().split(/\s+/).map(Number),
    cgroup: cgroup ?? "/",
    freezerV1,
  };
}

/** The agent's pid and every ancestor up to init, read from `procRoot`. */
export function agentLineage(procRoot: string, selfPid: number): Set<number> {
  const lineage = new Set<number>([selfPid]);
  let pid = selfPid;
  for (let depth = 0; depth < 4096 && pid > 1; depth++) {
    let facts: ProcessFacts | undefined;
    try {
      facts = readProcessFacts(procRoot, pid);
    } catch {
      facts = undefined;
    }
    if (!facts) break;
    pid = facts.parentPid;
    if (pid > 0) lineage.add(pid);
  }
  return lineage;
}

/** `path` is `root` or below it (whole path segments: /a/bc is not below /a/b). */
export function cgroupWithin(path: string, root: string): boolean {
  const r = root.length > 1 ? root.replace(/\/+$/, "") : root;
  return r === "/" || path === r || path.startsWith(`${r}/`);
}

/**
 * Throws PidRefusal unless `pid` may be an instance's process under `policy`. `facts` are the
 * process's, or undefined when it does not exist (yet): then only what the number alone says
 * is checked, and the rest again before any driver acts.
 */
export function checkPidOwnership(pid: number, facts: ProcessFacts | undefined, policy: PidPolicy): void {
  if (pid <= 1) throw new PidRefusal("invalid", `pid ${pid} is init (or not a process): never an instance`);
  const self = policy.selfPid ?? process.pid;
  if (pid === self) throw new PidRefusal("invalid", `pid ${pid} is the agent itself`);
  if (pid === KTHREADD_PID) throw new PidRefusal("invalid", `pid ${pid} is kthreadd, a kernel thread`);
  if (agentLineage(policy.procRoot, self).has(pid)) throw new PidRefusal("invalid", `pid ${pid} is an ancestor of the agent`);
  if (!facts) return;
  if ((facts.flags & PF_KTHREAD) !== 0 || facts.parentPid === KTHREADD_PID) throw new PidRefusal("invalid", `pid ${pid} is a kernel thread`);
  const uids = policy.allowedUids ?? [];
  if (uids.length > 0 && !facts.uids.every((u) => uids.includes(u))) {
    throw new PidRefusal("denied", `pid ${pid} runs as uid ${[...new Set(facts.uids)].join("/")}, outside --allowed-uids ${uids.join(",")}`);
  }
  const roots = policy.allowedCgroups ?? [];
  if (roots.length > 0 && !roots.some((r) => cgroupWithin(facts.cgroup, r))) {
    throw new PidRefusal("denied", `pid ${pid} is in cgroup ${facts.cgroup}, outside --allowed-cgroups ${roots.join(",")}`);
  }
}

/** The process behind a recorded pid is not the one registered: it exited and the pid was handed out again. */
export class PidReused extends Error {
  override name = "PidReused";
}

/**
 * Re-identifies an instance's process immediately before a driver acts: it must exist, have the
 * recorded start time (else PidReused) and still pass checkPidOwnership. Without a recorded
 * start time nothing acts: a process that cannot be re-identified is never signalled.
 */
export function reidentify(pid: number, recordedStartTime: bigint | undefined, policy: PidPolicy): ProcessFacts {
  const facts = readProcessFacts(policy.procRoot, pid);
  if (!facts) throw new PidGone(`pid ${pid} is gone`);
  if (recordedStartTime === undefined) {
    throw new PidGone(`pid ${pid} has no recorded start time (the process did not exist when it was registered): it cannot be re-identified; register it again`);
  }
  if (facts.startTimeTicks !== recordedStartTime) {
    throw new PidReused(`pid reused: pid ${pid} now belongs to another process (start time ${facts.startTimeTicks}, recorded ${recordedStartTime})`);
  }
  checkPidOwnership(pid, facts, policy);
  return facts;
}

/** The recorded pid has no process (or none that can be identified). */
export class PidGone extends Error {
  override name = "PidGone";
}

/**
 * Which instances' pids registration saw lead their own process group, with the start time it
 * saw: the signal driver signals a group only for these. Kept in memory and rebuilt when the
 * agent starts (`restore`): an instance whose recorded process, by its start time, still leads
 * its own group is recorded again. That group can only hold processes the instance's own
 * process or its descendants put there (setpgid moves only oneself or one's children, within
 * one session), so it is the instance's own process tree, as at registration. Without the
 * rebuild a restarted agent stopped the parent and left its workers running.
 */
export class ProcessGroupRecord {
  private readonly leaders = new Map<string, { pid: number; startTime: bigint }>();

  /** At start: every instance with a recorded pid and start time, checked against /proc now. */
  restore(instances: Iterable<{ id: string; pid?: number; pidStartTime?: bigint }>, procRoot: string): number {
    let restored = 0;
    for (const i of instances) {
      if (i.pid === undefined || i.pidStartTime === undefined) continue;
      this.note(i.id, i.pid, i.pidStartTime, readProcessFacts(procRoot, i.pid));
      if (this.leaders.has(i.id)) restored++;
    }
    return restored;
  }

  /** After a registration: `facts` as read then, `startTime` as the registry recorded it. */
  note(id: string, pid: number | undefined, startTime: bigint | undefined, facts: ProcessFacts | undefined): void {
    if (pid !== undefined && facts && facts.pid === pid && facts.processGroup === pid && startTime !== undefined && facts.startTimeTicks === startTime) {
      this.leaders.set(id, { pid, startTime });
    } else {
      this.leaders.delete(id);
    }
  }

  ownGroup(id: string, pid: number | undefined, startTime: bigint | undefined): boolean {
    const r = this.leaders.get(id);
    return r !== undefined && r.pid === pid && r.startTime === startTime;
  }
}
