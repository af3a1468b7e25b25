import { readlinkSync } from "node:fs";
import { basename } from "node:path";
import { clone, create, equals } from "@bufbuild/protobuf";
import { InstanceKind, InstanceSchema, InstanceSource, InstanceState, type Instance } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import type { Logger } from "../../lib/rpc/logger.js";
import type { InstanceRegistry } from "../inventory/instance-registry.js";
import { checkInstancePid, validateInstance, type ValidationOptions } from "../inventory/instance-validation.js";
import { discoverHypervisors, type DiscoveredHypervisor } from "./hypervisor-discovery.js";
import { errorMessage } from "../../lib/error-message.js";

export const DISCOVERY_INTERVAL_MS = 5000;

/**
 * `--discover` (inventory.md "Discovered"): every few seconds the hypervisor processes in /proc
 * become instances (source DISCOVERED, kind VM, RUNNING, with the pid, vCPUs, memory and TAP
 * their command lines state), and a discovered instance whose process is gone is removed.
 * Read-only: the inventory service refuses to change, remove, register over or give a standby
 * policy to a discovered instance. Discovery leaves every registered or runtime instance alone,
 * and skips a process the ownership rules refuse (pid-ownership.ts: the agent's lineage, kernel
 * threads, outside --allowed-uids / --allowed-cgroups) or whose executable is not the hypervisor
 * its command line names (anyone can start a process with argv[0] "firecracker").
 */
export function startDiscovery(registry: InstanceRegistry, logger: Logger, validation: ValidationOptions, procRoot = "/proc", intervalMs = DISCOVERY_INTERVAL_MS): { sweep(): Promise<void>; stop(): void } {
  let running: Promise<void> | undefined;
  const sweep = async () => {
    const found = discoverHypervisors(procRoot);
    const seen = new Set<string>();
    const writes: Promise<unknown>[] = [];
    for (const h of found) {
      seen.add(h.id);
      const previous = registry.get(h.id);
      if (previous && previous.source !== InstanceSource.DISCOVERED) continue;
      let next: Instance;
      try {
        requireHypervisorExecutable(procRoot, h);
        checkInstancePid(create(InstanceSchema, { pid: h.pid }), validation);
        next = discoveredInstance(h, previous, validation);
      } catch (e) {
        logger.debug({ process_pid: h.pid, id: h.id, err: errorMessage(e) }, "discovery: a hypervisor process's command line does not make a valid instance; skipped");
        continue;
      }
      if (previous && equals(InstanceSchema, { ...next, pidStartTime: previous.pidStartTime }, previous)) continue;
      writes.push(registry.upsert(next).catch((e: Error) => logger.error({ instance_id: h.id, err: e.message }, "discovery: could not store a discovered instance")));
    }
    for (const i of registry.list()) {
      if (i.source !== InstanceSource.DISCOVERED || seen.has(i.id)) continue;
      writes.push(registry.remove(i.id).catch((e: Error) => logger.error({ instance_id: i.id, err: errorMessage(e) }, "discovery: could not remove a vanished instance")));
    }
    await Promise.all(writes);
  };
  const tick = () => {
    running ??= sweep().finally(() => (running = undefined));
    return running;
  };
  void tick();
  const timer = setInterval(() => void tick(), intervalMs);
  timer.unref();
  return { sweep: tick, stop: () => clearInterval(timer) };
}

/** /proc/<pid>/exe must be the hypervisor binary, not just argv[0]; throws otherwise. */
function requireHypervisorExecutable(procRoot: string, h: DiscoveredHypervisor): void {
  let exe: string;
  try {
    exe = basename(readlinkSync(`${procRoot}/${h.pid}/exe`).replace(/ \(deleted\)$/, ""));
  } catch (e) {
    throw new Error(`pid ${h.pid}: its executable cannot be read (${(e as NodeJS.ErrnoException).code ?? errorMessage(e)})`);
  }
  const ok = h.hypervisor === "qemu" ? exe.startsWith("qemu-system-") : exe === h.hypervisor;
  if (!ok) throw new Error(`pid ${h.pid}: its command line says ${h.hypervisor} but its executable is ${exe}`);
}

function discoveredInstance(h: DiscoveredHypervisor, previous: Instance | undefined, validation: ValidationOptions): Instance {
  const checked = validateInstance(
    create(InstanceSchema, {
      id: h.id,
      name: h.name,
      kind: InstanceKind.VM,
      state: InstanceState.RUNNING,
      pid: h.pid,
      hypervisor: h.hypervisor,
      allocatedVcpus: h.vcpus ?? 0,
      allocatedMemoryBytes: h.memoryBytes ?? 0n,
      tapDevice: h.tapDevice ?? "",
      networkEnabled: h.tapDevice !== undefined,
      labels: { "fleetlet.dev/discovered": "true" },
      // A standby policy given to it since is kept.
      standbyPolicy: previous?.standbyPolicy,
    }),
    validation,
  );
  const out = clone(InstanceSchema, checked);
  out.source = InstanceSource.DISCOVERED;
  return out;
}
