import { ConnectError } from "@connectrpc/connect";
import { InstanceKind, InstanceSource } from "../../../gen/fleetlet/agent/v1/inventory_pb.js";
import type { ContainerRuntime } from "../../runtime/container-runtime.js";
import { DriverError, type DriverTarget, type StandbyDriver } from "./standby-driver.js";

/**
 * Docker pause / unpause (standby.md "Drivers": the cgroup freezer through the engine, so the
 * engine's view stays right). Acts on the container of the instance's runtime_ref
 * ("docker/<container id>"), and only on instances the runtime sync created (source RUNTIME,
 * kind CONTAINER): a registered instance naming some container in runtime_ref would otherwise
 * pause any container on the host. The runtime is looked up when called, so an agent whose
 * Docker runtime is down reports that as the driver's error.
 */
export function createDockerDriver(runtime: () => ContainerRuntime | undefined): StandbyDriver {
  const act = async (target: DriverTarget, what: "pause" | "unpause") => {
    const ref = target.runtimeRef ?? "";
    if (target.source !== InstanceSource.RUNTIME || target.kind !== InstanceKind.CONTAINER) {
      throw new DriverError(`docker driver: instance ${target.id} was not created by the container runtime sync (only its containers are paused); runtime_ref ${JSON.stringify(ref)} is not acted on`);
    }
    if (!ref.startsWith("docker/")) throw new DriverError(`docker driver: instance ${target.id} is not a Docker container (runtime_ref ${JSON.stringify(ref)})`);
    const r = runtime();
    if (!r) throw new DriverError("docker driver: the docker runtime is not configured on this agent (--runtime)");
    try {
      await r[what](ref.slice("docker/".length));
    } catch (e) {
      throw new DriverError(`docker driver: ${what} ${ref}: ${ConnectError.from(e).rawMessage}`);
    }
  };
  return {
    name: "docker",
    standby: (t) => act(t, "pause"),
    wake: (t) => act(t, "unpause"),
  };
}
