import { create } from "@bufbuild/protobuf";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import {
  ContainerState,
  HealthStatus,
  RuntimeEventSchema,
  type Container,
  type RuntimeEvent,
} from "../../../gen/fleetlet/agent/v1/runtime_pb.js";
import { DOCKER_RUNTIME, dockerInstanceId, healthStatusWord } from "./docker-container.js";
import { timestampFromNs } from "./docker-time.js";

/**
 * What a consumer of the events has been told about each container, and the synthetic events
 * that bring it to what a relist shows (runtime.md "Reconnect"). After a reconnect, the events
 * the engine still has (replayed with `since`) are applied to this view first, so the diff only
 * makes up for what no event said: changes whose events were lost with a dockerd restart or
 * fell out of its 256-event buffer. Nothing is made up for a container that did not change.
 */

/** One container as the event consumers know it. */
export interface ToldContainer {
  externalId: string;
  name: string;
  image: string;
  labels: Record<string, string>;
  state: ContainerState;
  exitCode?: number;
  oomKilled: boolean;
  /** StartedAt / FinishedAt as "seconds.nanos"; undefined when unset or only known from an event. */
  startedAt?: string;
  finishedAt?: string;
  health: HealthStatus;
}

export type ToldState = Map<string, ToldContainer>;

function timeKey(t: Timestamp | undefined): string | undefined {
  return t ? `${t.seconds}.${t.nanos}` : undefined;
}

export function toldFromContainer(c: Container): ToldContainer {
  return {
    externalId: c.externalId,
    name: c.name,
    image: c.image,
    labels: { ...c.labels },
    state: c.state,
    exitCode: c.exitCode,
    oomKilled: c.oomKilled,
    startedAt: timeKey(c.startedAt),
    finishedAt: timeKey(c.finishedAt),
    health: c.health?.status ?? HealthStatus.UNSPECIFIED,
  };
}

export function toldFromContainers(containers: Iterable<Container>): ToldState {
  const told: ToldState = new Map();
  for (const c of containers) told.set(c.externalId, toldFromContainer(c));
  return told;
}

const HEALTH_WORDS: Record<string, HealthStatus> = {
  starting: HealthStatus.STARTING,
  healthy: HealthStatus.HEALTHY,
  unhealthy: HealthStatus.UNHEALTHY,
};

/**
 * Applies a real (replayed) event to the told state, the way the engine changes the container.
 * Times learnt from an event are not StartedAt/FinishedAt, so they become unknown (undefined)
 * and are not compared.
 */
export function applyEventToTold(told: ToldState, event: RuntimeEvent): void {
  if (event.resourceType !== "container" || event.externalId === "") return;
  const id = event.externalId;
  if (event.action === "destroy") {
    told.delete(id);
    return;
  }
  let c = told.get(id);
  if (!c || event.action === "create") {
    c = {
      externalId: id,
      name: event.name,
      image: event.attributes.image ?? "",
      labels: { ...event.labels },
      state: ContainerState.CREATED,
      oomKilled: false,
      health: HealthStatus.UNSPECIFIED,
    };
    told.set(id, c);
  }
  if (event.name) c.name = event.name;
  switch (event.action) {
    case "start":
    case "restart":
      c.state = ContainerState.RUNNING;
      c.exitCode = undefined;
      c.oomKilled = false;
      c.startedAt = undefined;
      // A (re)started container's health is "starting" until probed; the engine says so in
      // inspect, with no event.
      c.health = HealthStatus.STARTING;
      break;
    case "die":
      c.state = ContainerState.EXITED;
      c.exitCode = event.exitCode;
      c.finishedAt = undefined;
      break;
    case "oom":
      c.oomKilled = true;
      break;
    case "pause":
      c.state = ContainerState.PAUSED;
      break;
    case "unpause":
      c.state = ContainerState.RUNNING;
      break;
    case "health_status":
      c.health = HEALTH_WORDS[event.healthStatus] ?? c.health;
      break;
  }
}

/** Running-ish phases for the diff: RESTARTING counts as up (it is between two runs). */
type Phase = "created" | "up" | "paused" | "down";

function phase(state: ContainerState): Phase {
  switch (state) {
    case ContainerState.CREATED:
      return "created";
    case ContainerState.RUNNING:
    case ContainerState.RESTARTING:
      return "up";
    case ContainerState.PAUSED:
      return "paused";
    default:
      return "down";
  }
}

/**
 * The synthetic events that take `told` to `current` (destroyed first, then each container's
 * changes in the order they must have happened). Does not modify `told`.
 */
export function diffTold(told: ToldState, current: Iterable<Container>, atNs: bigint): RuntimeEvent[] {
  const at = timestampFromNs(atNs);
  const events: RuntimeEvent[] = [];
  const seen = new Set<string>();
  const now = [...current];
  for (const c of now) seen.add(c.externalId);
  for (const [id, t] of told) {
    if (!seen.has(id)) events.push(synthetic("destroy", t, at));
  }
  for (const c of now) {
    const before = told.get(c.externalId);
    const after = toldFromContainer(c);
    const push = (action: string, extra: SyntheticExtra = {}) => events.push(synthetic(action, after, at, extra));
    const die = () => {
      if (after.oomKilled && !before?.oomKilled) push("oom");
      push("die", { exitCode: after.exitCode });
    };
    if (!before) {
      push("create");
      if (after.startedAt === undefined) continue; // created, never started
      push("start");
      const p = phase(after.state);
      if (p === "paused") push("pause");
      else if (p === "down") die();
      else pushHealth(after, HealthStatus.STARTING, push);
      continue;
    }
    if (before.name !== after.name) push("rename", { attributes: { ...baseAttributes(after), oldName: `/${before.name}` } });
    const from = phase(before.state);
    const to = phase(after.state);
    const startedAgain = before.startedAt !== undefined && after.startedAt !== undefined && before.startedAt !== after.startedAt;
    const finishedAgain = before.finishedAt !== undefined && after.finishedAt !== undefined && before.finishedAt !== after.finishedAt;
    if (from === to) {
      if (to === "up" || to === "paused") {
        // Same phase but another run: it went down and came back while we were away.
        if (startedAgain) push("restart");
      } else if (to === "down" && (startedAgain || finishedAgain)) {
        push("start");
        die();
      }
    } else if (to === "up") {
      push(from === "paused" ? "unpause" : "start");
    } else if (to === "paused") {
      if (from !== "up") push("start");
      push("pause");
    } else if (to === "down") {
      if (from === "created") push("start");
      die();
    }
    if (to === "up") pushHealth(after, from === "up" && !startedAgain ? before.health : HealthStatus.STARTING, push);
  }
  return events;
}

/** The engine emits health_status when a probe changes the status to healthy or unhealthy. */
function pushHealth(after: ToldContainer, before: HealthStatus, push: (action: string, extra?: SyntheticExtra) => void): void {
  if (after.health !== HealthStatus.HEALTHY && after.health !== HealthStatus.UNHEALTHY) return;
  if (after.health === before) return;
  push("health_status", { healthStatus: healthStatusWord(after.health) });
}

interface SyntheticExtra {
  exitCode?: number;
  healthStatus?: string;
  attributes?: Record<string, string>;
}

function baseAttributes(c: ToldContainer): Record<string, string> {
  return c.image ? { image: c.image, name: c.name } : { name: c.name };
}

function synthetic(action: string, c: ToldContainer, at: Timestamp, extra: SyntheticExtra = {}): RuntimeEvent {
  return create(RuntimeEventSchema, {
    action,
    runtime: DOCKER_RUNTIME,
    externalId: c.externalId,
    name: c.name,
    resourceType: "container",
    timestamp: at,
    labels: { ...c.labels },
    attributes: baseAttributes(c),
    synthetic: true,
    instanceId: dockerInstanceId(c.externalId),
    ...extra,
  });
}
