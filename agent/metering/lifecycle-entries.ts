import { InstanceState, type Instance } from "../../gen/fleetlet/agent/v1/inventory_pb.js";

/**
 * metering.md "When entries are written", as a pure function: an instance's lifecycle step →
 * the ledger entries it produces, in order, and the instance's open intervals after it. No I/O:
 * the registry (the one place state changes) calls it and writes its result atomically with the
 * state change. Structurally the ledger's LedgerEntryInput.
 */
export interface LifecycleEntry {
  kind: "vm.compute.start" | "vm.compute.stop" | "vm.storage.start" | "vm.storage.stop" | "snap.storage.start" | "snap.storage.stop";
  vmId?: string;
  snapshotId?: string;
  sourceSnapshotId?: string;
  reason?: "boot" | "restart" | "clone" | "restore" | "hibernate-wake" | "stop-user" | "stop-crash" | "vm-rm" | "snap-rm" | "standby" | "resize";
  hypervisor?: string;
  shape: { cpu?: number; memBytes?: number; storageBytes?: number };
  emittedAtNs: bigint;
}

/** What metering remembers of an instance between steps (persisted with the registry). */
export interface MeterState {
  computeOpen: boolean;
  storageOpen: boolean;
  /** Compute ever started: the next start is a "restart", not a "boot". */
  everRan: boolean;
}

/** Why a state changes: the table distinguishes a request from a crash, standby and wake. */
export type StepCause = "request" | "crash" | "standby" | "wake";

export type LifecycleStep =
  /** RegisterInstance / SetInstanceState / the runtime: `previous` undefined = new instance. */
  | { type: "upsert"; previous: Instance | undefined; meter: MeterState | undefined; next: Instance; cause: StepCause; sourceSnapshotId?: string }
  | { type: "remove"; previous: Instance; meter: MeterState | undefined }
  /** The instance restored from a snapshot: old shape closed, new shape opened. */
  | { type: "restore"; previous: Instance; meter: MeterState | undefined; next: Instance; sourceSnapshotId: string };

export interface StepResult {
  entries: LifecycleEntry[];
  /** undefined once the instance is gone. */
  meter: MeterState | undefined;
}

const CLOSED: MeterState = { computeOpen: false, storageOpen: false, everRan: false };

export function shapeOf(i: Instance): LifecycleEntry["shape"] {
  return { cpu: i.allocatedVcpus, memBytes: Number(i.allocatedMemoryBytes), storageBytes: Number(i.allocatedStorageBytes) };
}

/** The entries of one step; every entry of one step shares `nowNs` (metering.md). */
export function lifecycleEntries(step: LifecycleStep, nowNs: bigint): StepResult {
  const out: LifecycleEntry[] = [];
  const entry = (i: Instance, kind: LifecycleEntry["kind"], reason: LifecycleEntry["reason"], extra: Partial<LifecycleEntry> = {}) =>
    out.push({ kind, vmId: i.id, reason, hypervisor: i.hypervisor || undefined, shape: shapeOf(i), emittedAtNs: nowNs, ...extra });

  if (step.type === "remove") {
    const m = step.meter ?? CLOSED;
    if (m.computeOpen) entry(step.previous, "vm.compute.stop", "stop-user");
    if (m.storageOpen) entry(step.previous, "vm.storage.stop", "vm-rm");
    return { entries: out, meter: undefined };
  }

  if (step.type === "restore") {
    const m = step.meter ?? CLOSED;
    const src = { sourceSnapshotId: step.sourceSnapshotId };
    if (m.computeOpen) entry(step.previous, "vm.compute.stop", "restore", src);
    if (m.storageOpen) entry(step.previous, "vm.storage.stop", "restore", src);
    entry(step.next, "vm.storage.start", "restore", src);
    const running = step.next.state === InstanceState.RUNNING;
    if (running) entry(step.next, "vm.compute.start", "restore", src);
    return { entries: out, meter: { computeOpen: running, storageOpen: true, everRan: m.everRan || running } };
  }

  const { previous, next } = step;
  const m: MeterState = { ...(step.meter ?? CLOSED) };
  const running = next.state === InstanceState.RUNNING;
  if (!previous) {
    // New instance: storage opens (clone when it comes from a snapshot), compute if running.
    const clone = step.sourceSnapshotId ? { sourceSnapshotId: step.sourceSnapshotId } : {};
    const reason = step.sourceSnapshotId ? "clone" : "boot";
    if (!m.storageOpen) {
      entry(next, "vm.storage.start", reason, clone);
      m.storageOpen = true;
    }
    if (running && !m.computeOpen) {
      entry(next, "vm.compute.start", reason, clone);
      m.computeOpen = true;
      m.everRan = true;
    }
    return { entries: out, meter: m };
  }

  const computeStarts = running && !m.computeOpen;
  // Leaving RUNNING closes compute (not for ERROR: that interval stays open until a stop or removal).
  const computeStops = !running && m.computeOpen && next.state !== InstanceState.ERROR;
  // metering.md "shape changed": every vm entry carries the full shape, so a change of vCPUs,
  // memory or storage changes the shape of every interval open across this step; each closes
  // with the old shape and reopens with the new one. Only open intervals are resized: in
  // STANDBY, STOPPED or CREATED that is storage alone, and compute's next start carries the new
  // shape anyway. An interval this step closes (compute on a stop) is not resized first: its
  // stop already carries the old shape. Order nests like restore's: compute closes first,
  // reopens last, so compute is never open without storage.
  const resized = !sameShape(shapeOf(previous), shapeOf(next));
  const resizeCompute = resized && m.computeOpen && !computeStops;
  const resizeStorage = resized && m.storageOpen;

  if (computeStops) {
    const reason = step.cause === "crash" ? "stop-crash" : step.cause === "standby" || next.state === InstanceState.STANDBY ? "standby" : "stop-user";
    entry(previous, "vm.compute.stop", reason);
    m.computeOpen = false;
  }
  if (resizeCompute) entry(previous, "vm.compute.stop", "resize");
  if (resizeStorage) {
    entry(previous, "vm.storage.stop", "resize");
    entry(next, "vm.storage.start", "resize");
  }
  if (resizeCompute) entry(next, "vm.compute.start", "resize");
  if (computeStarts) {
    // → RUNNING: boot the first time, hibernate-wake out of standby, restart otherwise.
    const reason = previous.state === InstanceState.STANDBY || step.cause === "wake" ? "hibernate-wake" : m.everRan ? "restart" : "boot";
    entry(next, "vm.compute.start", reason);
    m.computeOpen = true;
    m.everRan = true;
  }
  return { entries: out, meter: m };
}

function sameShape(a: LifecycleEntry["shape"], b: LifecycleEntry["shape"]): boolean {
  return a.cpu === b.cpu && a.memBytes === b.memBytes && a.storageBytes === b.storageBytes;
}

/** Snapshot registered: one snap.storage.start, no reason. */
export function snapshotRegisteredEntry(snapshotId: string, hypervisor: string, storageBytes: number, nowNs: bigint): LifecycleEntry {
  return { kind: "snap.storage.start", snapshotId, hypervisor: hypervisor || undefined, shape: { storageBytes }, emittedAtNs: nowNs };
}

/** Snapshot removed: the caller writes it once (a second removal finds no snapshot and writes nothing). */
export function snapshotRemovedEntry(snapshotId: string, hypervisor: string, storageBytes: number, nowNs: bigint): LifecycleEntry {
  return { kind: "snap.storage.stop", snapshotId, reason: "snap-rm", hypervisor: hypervisor || undefined, shape: { storageBytes }, emittedAtNs: nowNs };
}
