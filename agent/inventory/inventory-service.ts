import type { ServiceImpl } from "@connectrpc/connect";
import { Code, ConnectError } from "@connectrpc/connect";
import { InventoryService } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { requireId } from "../../lib/rpc/field-error.js";
import type { InstanceRegistry } from "./instance-registry.js";
import { validateInstance, type ValidationOptions } from "./instance-validation.js";

/** InventoryService: the RPC face of the instance registry. */
export function createInventoryService(
  registry: InstanceRegistry,
  options: ValidationOptions,
): ServiceImpl<typeof InventoryService> {
  const find = (id: string) => {
    requireId("instance_id", id);
    const instance = registry.get(id);
    if (!instance) throw new ConnectError(`instance ${JSON.stringify(id)} not found`, Code.NotFound);
    return instance;
  };
  return {
    async registerInstance(req) {
      const instance = await registry.upsert(validateInstance(req.instance, options));
      return { instance };
    },
    async deregisterInstance(req) {
      requireId("instance_id", req.instanceId);
      return { instance: await registry.remove(req.instanceId) };
    },
    getInstance(req) {
      return { instance: find(req.instanceId) };
    },
    listInstances() {
      return {
        instances: [...registry.list()],
        resourceVersion: registry.resourceVersion,
        incarnation: registry.incarnation,
      };
    },
  };
}
