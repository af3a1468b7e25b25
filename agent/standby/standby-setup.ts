import { faultInjection } from "../../lib/fault-injection.js";
import { readFileSync } from "node:fs";
import { InstanceKind, InstanceState, type Instance } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import type { Logger } from "../../lib/rpc/logger.js";
import type { InstanceRegistry } from "../inventory/instance-registry.js";
import { ConntrackProcessSource } from "../kernel/conntrack-process-source.js";
import { createCgroupDriver } from "./drivers/cgroup-driver.js";
import { createDockerDriver } from "./drivers/docker-driver.js";
import type { ContainerRuntime } from "../runtime/container-runtime.js";
import { createExecDriver, type ExecDriverCommands } from "./drivers/exec-driver.js";
import { createSignalDriver } from "./drivers/signal-driver.js";
import { DriverError, type DriverTarget, type StandbyDriver } from "./drivers/standby-driver.js";
import type { PidPolicy, ProcessGroupRecord } from "../inventory/pid-ownership.js";
import { type InterfaceReading, StandbyController, type StandbyInstance, SYSTEM_STANDBY_CLOCK } from "./standby-controller.js";
import { StandbyRuntimeStore } from "./standby-runtime-store.js";
import { registerStandbyInstruments } from "./standby-metrics.js";
import type { Meter } from "@opentelemetry/api";
import { errorMessage } from "../../lib/error-message.js";
import { createTrackingCheck } from "./tracking-check.js";
import { DEFAULT_STANDBY_TIMINGS, type StandbyTimings } from "./standby-timings.js";

export interface StandbySetupOptions {
  stateDir: string;
  logger: Logger;
  concurrency: number;
  exec?: ExecDriverCommands;
  /** Tests turn conntrack off to see UNSUPPORTED; production leaves it on. */
  conntrack?: boolean;
  meter?: Meter;
  /** The docker runtime, when configured (the docker driver pauses through it). */
  dockerRuntime?: () => ContainerRuntime | undefined;
  /** Where interface counters are read (tests point it at a tree of their own). */
  sysClassNet?: string;
  timings?: StandbyTimings;
  /** Where the conntrack sysctls are read (tests point it at a tree of their own). */
  procSysNetfilter?: string;
  /** Which processes the signal and cgroup drivers may act on (security.md "The host itself"). */
  pidPolicy?: PidPolicy;
  /** Pids registration saw lead their own process group (only those are signalled as a group). */
  processGroups?: ProcessGroupRecord;
  /** --standby-cgroup-root: the cgroup driver freezes only cgroups below it. */
  cgroupRoot?: string;
}

/**
 * rx + tx bytes of a host-side interface (the kernel's own counters, as the stats collector
 * reads them), or undefined when the instance has none or it is gone.
 */
function interfaceBytes(name: string, sysClassNet: string): InterfaceReading | undefined {
  if (name === "") return undefined;
  try {
    const read = (which: string) => BigInt(readFileSync(`${sysClassNet}/${name}/statistics/${which}_bytes`, "latin1").trim());
    return { device: name, bytes: read("rx") + read("tx") };
  } catch {
    return undefined;
  }
}

export interface StandbySetup {
  controller: StandbyController;
  unsupportedReason: string | undefined;
  close(): void;
}

/**
 * Wires auto-standby: the conntrack socket (or the reason it cannot be had — then every
 * instance is UNSUPPORTED and the rest of the agent runs on), the persisted runtime, the
 * drivers, and the registry as the one place instance state changes.
 */
export async function setUpStandby(registry: InstanceRegistry, options: StandbySetupOptions): Promise<StandbySetup> {
  let socket: ConntrackProcessSource | undefined;
  let unsupportedReason: string | undefined;
  const timings = options.timings ?? DEFAULT_STANDBY_TIMINGS;
  options.logger.info({ reconcile_ms: timings.reconcileMs, sync_ms: timings.syncMs, reconnect_ms: timings.reconnectMs }, "standby timings");
  if (options.conntrack === false) {
    unsupportedReason = "conntrack disabled by configuration";
  } else {
    try {
      // The sockets live in a small reader process (native/conntrack-reader.c, see
      // conntrack-process-source.ts). FLEETLET_FAULT_DROP_CONNTRACK_NEW=1 and
      // FLEETLET_FAULT_DROP_CONNTRACK_EVENTS=1 are fault injection (tests and drills only,
      // and only with FLEETLET_ENABLE_FAULT_INJECTION=1: lib/fault-injection.ts).
      const dropNewEvents = faultInjection("FLEETLET_FAULT_DROP_CONNTRACK_NEW") === "1";
      const dropAllEvents = faultInjection("FLEETLET_FAULT_DROP_CONNTRACK_EVENTS") === "1";
      if (dropNewEvents) options.logger.warn("fault injection: dropping every conntrack NEW event");
      if (dropAllEvents) options.logger.warn("fault injection: dropping every conntrack event");
      socket = new ConntrackProcessSource({ dropNewEvents, dropAllEvents, restartDelayMs: timings.reconnectMs });
      await socket.start(); // proves the table can be read here (CAP_NET_ADMIN, conntrack present)
      options.logger.info({ receive_buffer_bytes: socket.receiveBufferBytes, reader_pid: socket.readerPid }, "conntrack reader ready");
    } catch (e) {
      socket?.close();
      socket = undefined;
      unsupportedReason = `conntrack unavailable: ${errorMessage(e)} (needs CAP_NET_ADMIN and conntrack active in this network namespace; see docs/operations.md)`;
      options.logger.warn({ reason: unsupportedReason }, "standby unsupported on this host");
    }
  }
  const runtime = StandbyRuntimeStore.open(options.stateDir);
  runtime.onWriteError = (e) => options.logger.error({ err: e }, "could not persist the standby runtime");
  const drivers: Record<string, StandbyDriver> = {
    signal: createSignalDriver(options.pidPolicy),
    cgroup: createCgroupDriver({ pid: options.pidPolicy ?? { procRoot: "/proc" }, freezeRoot: options.cgroupRoot }),
    exec: createExecDriver(options.exec ?? { standby: [], wake: [] }),
    docker: createDockerDriver(options.dockerRuntime ?? (() => undefined)),
  };
  const driverFor = (i: Instance): StandbyDriver => {
    const name = i.standbyPolicy?.driver || (i.kind === InstanceKind.CONTAINER ? "docker" : "signal");
    const d = drivers[name];
    if (!d) throw new DriverError(`no ${name} driver on this agent yet`);
    return d;
  };
  const target = (i: Instance): DriverTarget => ({
    id: i.id,
    pid: i.pid,
    ip: i.ip,
    kind: i.kind,
    runtimeRef: i.runtimeRef,
    source: i.source,
    pidStartTime: i.pidStartTime,
    ownProcessGroup: options.processGroups?.ownGroup(i.id, i.pid, i.pidStartTime) ?? false,
  });
  const view = (i: Instance): StandbyInstance => ({
    id: i.id,
    state: i.state,
    networkEnabled: i.networkEnabled,
    ip: i.ip,
    hasVgpu: i.hasVgpu,
    policy: i.standbyPolicy,
  });
  const controller = new StandbyController({
    clock: SYSTEM_STANDBY_CLOCK,
    source: socket,
    unsupportedReason,
    instances: { list: () => registry.list().map(view), get: (id) => (registry.get(id) ? view(registry.get(id)!) : undefined) },
    runtime,
    standby: async (i) => {
      const inst = registry.get(i.id)!;
      await driverFor(inst).standby(target(inst));
    },
    wake: async (i) => {
      const inst = registry.get(i.id)!;
      await driverFor(inst).wake(target(inst));
    },
    setState: async (id, state: InstanceState) => {
      // Metering tells these apart: compute stops with "standby", starts with "hibernate-wake".
      await registry.setState(id, state, state === InstanceState.STANDBY ? "standby" : "wake");
    },
    concurrency: options.concurrency,
    reconcileMs: timings.reconcileMs,
    syncMs: timings.syncMs,
    reconnectMs: timings.reconnectMs,
    checkTracking: socket ? createTrackingCheck(socket, { procSysNetfilter: options.procSysNetfilter }) : undefined,
    onError: (operation, id, e) => options.logger.warn({ operation, instance_id: id, err: errorMessage(e) }, "standby"),
    onWake: (ms, ok) => instruments?.recordWake(ms, ok),
    interfaceBytes: (id) => interfaceBytes(registry.get(id)?.tapDevice ?? "", options.sysClassNet ?? "/sys/class/net"),
  });
  const instruments = options.meter ? registerStandbyInstruments(options.meter, controller, socket, () => registry.list().map((i) => i.id)) : undefined;
  const unsubscribe = registry.subscribe((change) => {
    void controller.refresh(change.instance.id).catch((e) => options.logger.warn({ err: errorMessage(e) }, "standby refresh"));
  });
  await controller.start();
  if (socket && !controller.supported) {
    options.logger.warn({ reason: controller.unsupportedReason }, "standby unsupported on this host: conntrack is readable but not tracking flows; checked again every 30 s");
  }
  return {
    controller,
    get unsupportedReason() {
      return controller.unsupportedReason;
    },
    close() {
      unsubscribe();
      controller.close();
      socket?.close();
    },
  };
}
