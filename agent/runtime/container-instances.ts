import { clone, create, equals } from "@bufbuild/protobuf";
import { InstanceKind, InstanceSchema, InstanceSource, InstanceState, type Instance } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { ContainerState, HealthStatus, type Container } from "../../gen/fleetlet/agent/v1/runtime_pb.js";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import type { Logger } from "../../lib/rpc/logger.js";
import type { InstanceRegistry } from "../inventory/instance-registry.js";
import type { ContainerLimits, ContainerRuntime } from "./container-runtime.js";
import type { StepCause } from "../metering/lifecycle-entries.js";
import { hostInterfaceOf } from "./host-interface.js";

/** Container state → instance lifecycle state. Paused is standby (the docker driver pauses). */
export function instanceStateOf(state: ContainerState): InstanceState {
  switch (state) {
    case ContainerState.RUNNING:
    case ContainerState.RESTARTING:
      return InstanceState.RUNNING;
    case ContainerState.PAUSED:
      return InstanceState.STANDBY;
    case ContainerState.CREATED:
      return InstanceState.CREATED;
    case ContainerState.DEAD:
      return InstanceState.ERROR;
    default:
      return InstanceState.STOPPED;
  }
}

/**
 * A container's limits as the instance's shape (metering meters it): vCPUs are the CPU limit
 * rounded up to whole CPUs (allocated_vcpus is an integer; a container limited to 1.5 CPUs runs
 * on two), memory the memory limit. No limit = 0 = no shape for it (metered as `{}`: the
 * container may use the whole host, which is no allocation of its own).
 */
export function shapeOfLimits(limits: ContainerLimits | undefined): { vcpus: number; memoryBytes: bigint } {
  const cores = limits?.cpuCores;
  // To the millicore first: 1.5e9 / 1e9 is exact, but a quota/period may not be (0.1 + 0.2).
  const vcpus = cores !== undefined && cores > 0 ? Math.ceil(Math.round(cores * 1000) / 1000) : 0;
  const memoryBytes = limits?.memoryBytes !== undefined && limits.memoryBytes > 0n ? limits.memoryBytes : 0n;
  return { vcpus, memoryBytes };
}

/** The runtime-owned fields of a container's instance; everything else is kept from `previous`. */
export function instanceOf(runtime: string, c: Container, previous: Instance | undefined, hostInterface = c.hostInterface, limits?: ContainerLimits, nowMs: () => number = Date.now): Instance {
  const next = previous ? clone(InstanceSchema, previous) : create(InstanceSchema, { id: c.id });
  next.name = c.name;
  next.kind = InstanceKind.CONTAINER;
  next.source = InstanceSource.RUNTIME;
  next.state = instanceStateOf(c.state);
  next.pid = c.pid;
  next.ip = c.ip;
  next.tapDevice = hostInterface;
  // Reachable on an address: what auto-standby needs; the interface only adds counters.
  next.networkEnabled = hostInterface !== "" || c.ip !== "";
  next.hypervisor = runtime;
  next.runtimeRef = `${runtime}/${c.externalId}`;
  next.labels = { ...c.labels };
  // The runtime owns the shape too: a limit changed in place (docker update) is a resize.
  const shape = shapeOfLimits(limits);
  next.allocatedVcpus = shape.vcpus;
  next.allocatedMemoryBytes = shape.memoryBytes;
  // Health for policies (container-unhealthy): since when it has been what it is now.
  const health = c.health?.status ?? HealthStatus.UNSPECIFIED;
  if (health !== previous?.health || !previous?.healthSince) next.healthSince = timestampFromMs(nowMs());
  next.health = health;
  return next;
}

/**
 * Keeps every container of every runtime in the inventory as an instance (kind CONTAINER,
 * source RUNTIME; runtime.md "Containers are also instances"), so Metrics, Standby and metering
 * apply to them. Runs after each change of a runtime's container list, one pass at a time
 * (changes during a pass cause one more pass). A runtime that is down keeps its instances as
 * they were: "unreachable" is not "removed". User-set fields (standby policy) survive updates.
 */
export class ContainerInstanceSync {
  private running: Promise<void> | undefined;
  private again = false;
  private readonly detach: (() => void)[] = [];
  /** Passes completed (tests wait on it). */
  passes = 0;

  constructor(
    private readonly registry: InstanceRegistry,
    private readonly runtimes: ContainerRuntime[],
    private readonly logger: Logger,
  ) {
    for (const r of runtimes) {
      const onChange = () => this.schedule();
      r.on("containers", onChange);
      r.on("connected", onChange);
      this.detach.push(() => {
        r.off("containers", onChange);
        r.off("connected", onChange);
      });
    }
  }

  /** Runs a pass now (or after the one in progress); resolves when the inventory matches. */
  schedule(): Promise<void> {
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      try {
        do {
          this.again = false;
          await this.pass();
          this.passes++;
        } while (this.again);
      } finally {
        this.running = undefined;
      }
    })();
    return this.running;
  }

  close(): void {
    for (const d of this.detach) d();
  }

  /** The runtime's answer, else the veth peer of the container's eth0 (found ones cached per pid). */
  private readonly interfaces = new Map<number, string>();
  private hostInterface(c: Container): string {
    if (c.hostInterface !== "" || c.pid === undefined || c.ip === "") return c.hostInterface;
    let name = this.interfaces.get(c.pid);
    if (name === undefined) {
      name = hostInterfaceOf(c.pid);
      if (this.interfaces.size > 4096) this.interfaces.clear();
      // Not found may be "not yet" (a container just starting): ask again next pass.
      if (name !== "") this.interfaces.set(c.pid, name);
    }
    return name;
  }

  private async pass(): Promise<void> {
    // Read and decide in one synchronous step, then issue every write at once: nothing (e.g.
    // the standby controller's setState) can change an instance between our read and our
    // write of it, and the writes share one group commit instead of one file rewrite each.
    const writes: Promise<unknown>[] = [];
    for (const r of this.runtimes) {
      let containers: Container[];
      try {
        containers = r.containers();
      } catch {
        continue; // down: leave its instances alone until it is back
      }
      const prefix = `${r.name}/`;
      const seen = new Set<string>();
      for (const c of containers) {
        seen.add(c.id);
        const previous = this.registry.get(c.id);
        if (previous && previous.source !== InstanceSource.RUNTIME) {
          this.logger.warn({ instance_id: c.id, runtime_ref: `${prefix}${c.externalId}` }, "a registered instance has this container's id; container not added to the inventory");
          continue;
        }
        const next = instanceOf(r.name, c, previous, this.hostInterface(c), r.limits?.(c.externalId));
        if (previous && equals(InstanceSchema, previous, next)) continue;
        writes.push(this.registry.upsert(next, { cause: causeOf(previous, c) }).catch((e: Error) => this.logger.error({ err: e.message, instance_id: c.id }, "could not store a container instance")));
      }
      for (const i of this.registry.list()) {
        if (i.source !== InstanceSource.RUNTIME || !i.runtimeRef.startsWith(prefix) || seen.has(i.id)) continue;
        writes.push(this.registry.remove(i.id).catch((e: Error) => this.logger.error({ err: e.message, instance_id: i.id }, "could not remove a container instance")));
      }
    }
    await Promise.all(writes);
  }
}

/**
 * Why a container's instance changes state, for metering: an exit with code 0, or any exit the
 * engine was asked for (docker stop / kill: `stop_requested`), is stop-user; any other exit or
 * an OOM kill a crash; pause/unpause standby and wake (the docker driver's, or anyone's: the
 * compute really stopped).
 */
export function causeOf(previous: Instance | undefined, c: Container): StepCause {
  const next = instanceStateOf(c.state);
  if (next === InstanceState.STANDBY) return "standby";
  if (previous?.state === InstanceState.STANDBY && next === InstanceState.RUNNING) return "wake";
  if (next === InstanceState.STOPPED || next === InstanceState.ERROR) return (c.exitCode === 0 || c.stopRequested) && !c.oomKilled ? "request" : "crash";
  return "request";
}
