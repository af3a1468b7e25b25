import { create } from "@bufbuild/protobuf";
import { RuntimeEventSchema, type RuntimeEvent } from "../../../gen/fleetlet/agent/v1/runtime_pb.js";
import type { DockerEventMessage } from "./docker-api-types.js";
import { DOCKER_RUNTIME, dockerInstanceId, dockerName } from "./docker-container.js";
import { timestampFromNs } from "./docker-time.js";

/**
 * Engine events (GET /events) → normalised RuntimeEvents (runtime.md "Events"). The Engine puts
 * a container's labels and its own details in the same Actor.Attributes map; the details are
 * the keys below, everything else is a label.
 */

/**
 * RuntimeEvent.resource_type of an Engine event type: the daemon and swarm nodes are "node"
 * events, swarm services "service" events.
 */
const RESOURCE_TYPE_OF: Record<string, string> = { container: "container", daemon: "node", node: "node", service: "service" };

/** Attribute keys the Engine adds to container events (not labels). */
const ENGINE_ATTRIBUTE_KEYS = new Set([
  "image",
  "name",
  "exitCode", // die, exec_die
  "signal", // kill
  "execID", // exec_*
  "execDuration", // exec_die (newer engines)
  "oldName", // rename
]);

// "health_status: healthy", "exec_create: /bin/sh -c ...": the Engine appends a detail to these.
const ACTION_WITH_DETAIL = /^([a-z_]+): (.*)$/s;

// The top-level "timeNano":<digits>. Inside a JSON string a quote is escaped (\"), so this can
// only match the real field, and attribute values are strings, never bare digits.
const TIME_NANO = /"timeNano":(\d+)/;

/**
 * One line of the events stream. `timeNano` is read from the text as a BigInt: JSON.parse
 * would round 1795316715566149764 to a multiple of 256, and a resume point that is off replays
 * or skips events.
 */
export function parseDockerEventLine(line: string): DockerEventMessage {
  const parsed: unknown = JSON.parse(line);
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    throw new Error(`docker event is not a JSON object: ${line.slice(0, 80)}`);
  }
  const message = parsed as Omit<DockerEventMessage, "timeNano"> & { timeNano?: unknown };
  const exact = TIME_NANO.exec(line);
  return {
    ...message,
    timeNano: exact ? BigInt(exact[1]!) : undefined,
  };
}

/** The event's time in nanoseconds (`timeNano`, else `time` seconds), or undefined. */
export function dockerEventNs(message: DockerEventMessage): bigint | undefined {
  if (message.timeNano !== undefined) return message.timeNano;
  if (typeof message.time === "number") return BigInt(message.time) * 1_000_000_000n;
  return undefined;
}

/**
 * A key that is the same for the same Engine event and differs between events: the resume
 * after a reconnect (`since` is inclusive) and the overlapping replays use it to drop events
 * already delivered.
 */
export function dockerEventKey(message: DockerEventMessage): string {
  return `${dockerEventNs(message) ?? ""}/${message.Actor?.ID ?? ""}/${message.Action ?? ""}/${message.Actor?.Attributes?.execID ?? ""}`;
}

export function normaliseDockerEvent(message: DockerEventMessage): RuntimeEvent {
  const rawAction = message.Action ?? "";
  let action = rawAction;
  let detail = "";
  const withDetail = ACTION_WITH_DETAIL.exec(rawAction);
  if (withDetail) {
    action = withDetail[1]!;
    detail = withDetail[2]!;
  }
  const id = message.Actor?.ID ?? "";
  const engineType = message.Type ?? "container";
  const type = RESOURCE_TYPE_OF[engineType] ?? engineType;
  const labels: Record<string, string> = {};
  const attributes: Record<string, string> = {};
  for (const [key, value] of Object.entries(message.Actor?.Attributes ?? {})) {
    // Only containers mix labels in; a daemon reload's attributes are its configuration.
    if (engineType !== "container" || ENGINE_ATTRIBUTE_KEYS.has(key)) attributes[key] = value;
    else labels[key] = value;
  }
  // Swarm objects are "removed"; every other resource type says "destroy".
  if (engineType !== "container" && action === "remove") action = "destroy";
  if (engineType === "daemon") attributes.engine_event = "daemon";
  else if (engineType === "node") attributes.engine_event = "swarm_node";
  let healthStatus = "";
  if (action === "health_status") healthStatus = detail;
  else if (detail !== "") attributes.command = detail; // exec_create/exec_start: what was run
  const exitCode = action === "die" ? parseExitCode(attributes.exitCode) : undefined;
  const ns = dockerEventNs(message);
  return create(RuntimeEventSchema, {
    action,
    runtime: DOCKER_RUNTIME,
    externalId: id,
    name: dockerName(attributes.name),
    exitCode,
    healthStatus,
    resourceType: type,
    timestamp: ns === undefined ? undefined : timestampFromNs(ns),
    labels,
    attributes,
    instanceId: type === "container" && id !== "" ? dockerInstanceId(id) : "",
  });
}

function parseExitCode(text: string | undefined): number | undefined {
  if (text === undefined || !/^-?\d+$/.test(text)) return undefined;
  return Number(text);
}
