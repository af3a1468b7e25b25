import type { Container } from "../../../gen/fleetlet/agent/v1/runtime_pb.js";
import { invalidArgument, truncate } from "../../../lib/rpc/field-error.js";

const DOCKER_REFERENCE = /^\/?[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;

/**
 * An `external_id` as a client gives it → the full container id, the way the docker CLI
 * resolves a reference: the full id, else a name (with or without Docker's "/"), else a unique
 * id prefix. An ambiguous prefix is INVALID_ARGUMENT naming external_id; an unknown reference
 * is undefined (the caller may still ask the engine: the container may be newer than our view).
 */
export function resolveDockerReference(known: Iterable<Container>, reference: string): string | undefined {
  if (reference === "") throw invalidArgument("external_id", "is required");
  // Docker ids are hex and names match [a-zA-Z0-9][a-zA-Z0-9_.-]*: anything else cannot name a
  // container, and must not reach a request path (docker-modem does not escape it).
  if (!DOCKER_REFERENCE.test(reference)) {
    throw invalidArgument("external_id", `${JSON.stringify(truncate(reference))} is not a Docker container id or name ([a-zA-Z0-9][a-zA-Z0-9_.-]*)`);
  }
  const containers = [...known];
  const byId = containers.find((c) => c.externalId === reference);
  if (byId) return byId.externalId;
  const name = reference.replace(/^\//, "");
  const byName = containers.find((c) => c.name === name);
  if (byName) return byName.externalId;
  if (!/^[0-9a-f]+$/.test(reference)) return undefined;
  const matches = containers.filter((c) => c.externalId.startsWith(reference));
  if (matches.length > 1) {
    throw invalidArgument("external_id", `${JSON.stringify(truncate(reference))} is an ambiguous id prefix (${matches.length} containers match)`);
  }
  return matches[0]?.externalId;
}
