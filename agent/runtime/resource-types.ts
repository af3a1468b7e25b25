import { invalidArgument, truncate } from "../../lib/rpc/field-error.js";

/** RuntimeEvent.resource_type values (seed 004's ResourceContainer, ResourceService, ResourceNode). */
export const RESOURCE_TYPES = ["container", "node", "service"] as const;
export type ResourceType = (typeof RESOURCE_TYPES)[number];

/**
 * A request's resource type filter: undefined (empty list) = every type. An unknown value is
 * INVALID_ARGUMENT naming the field, not a filter that silently matches nothing.
 */
export function parseResourceTypes(field: string, values: readonly string[]): ReadonlySet<ResourceType> | undefined {
  if (values.length === 0) return undefined;
  for (const v of values) {
    if (!(RESOURCE_TYPES as readonly string[]).includes(v)) {
      throw invalidArgument(field, `must hold only ${RESOURCE_TYPES.join(", ")}, got ${JSON.stringify(truncate(v))}`);
    }
  }
  return new Set(values as ResourceType[]);
}
