import { create } from "@bufbuild/protobuf";
import { durationMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import {
  ContainerErrorSchema,
  ContainerState,
  type RuntimeService,
  WatchRuntimeEventsResponseSchema,
  WatchRuntimeEventsResponseType,
  type Container,
  type ContainerError,
  type ContainerStats,
  type RuntimeEvent,
  type WatchRuntimeEventsResponse,
} from "../../gen/fleetlet/agent/v1/runtime_pb.js";
import { invalidArgument } from "../../lib/rpc/field-error.js";
import { mapBounded } from "../../lib/worker-pool.js";
import { codeName } from "../../lib/rpc/status-codes.js";
import type { ContainerRuntime } from "./container-runtime.js";
import { CursorFormatError, type LoggedEvent, type RuntimeEventLog } from "./runtime-event-log.js";
import { parseResourceTypes, type ResourceType } from "./resource-types.js";
import { requireExternalId, type RuntimeSet } from "./runtime-set.js";

const DEFAULT_STATS_TIMEOUT_MS = 5000;
const MAX_STATS_TIMEOUT_MS = 60_000;
// Docker answers a one-shot stats call at its next 1 s collection tick (measured on 20.10: every
// call ~1 s, also with one-shot=true), for all waiting containers at once; the calls are waits,
// not work. 8 at a time made 50 containers take 6.6 s; 64 answers them in about one tick.
const STATS_CONCURRENCY = 64;
/** Events a watch stream may have queued before it is told to resync (it fell behind). */
export const WATCH_QUEUE_LIMIT = 1024;

const runningStates = new Set([ContainerState.RUNNING, ContainerState.PAUSED, ContainerState.RESTARTING]);

/** RuntimeService over the configured runtimes (runtime.md); the runtimes do the talking. */
export function createRuntimeService(runtimes: RuntimeSet, events: RuntimeEventLog): ServiceImpl<typeof RuntimeService> {
  /** Containers of `selected`; runtimes that are down go to `unavailable` instead. */
  const snapshot = (selected: ContainerRuntime[]) => {
    const containers: Container[] = [];
    const unavailable: string[] = [];
    for (const r of selected) {
      try {
        containers.push(...r.containers());
      } catch (e) {
        unavailable.push(`${r.name}: ${ConnectError.from(e).rawMessage}`);
      }
    }
    return { containers, unavailable };
  };

  return {
    getRuntimeInfo() {
      return { runtimes: runtimes.runtimes.map((r) => r.info()) };
    },

    listContainers(req) {
      const selected = runtimes.select(req.runtime);
      const { containers, unavailable } = snapshot(selected);
      // A single named runtime that is down is an error of the call; with several, a partial list.
      if (req.runtime !== "" && unavailable.length > 0) throw new ConnectError(unavailable[0]!, Code.Unavailable);
      return { containers: req.runningOnly ? containers.filter((c) => runningStates.has(c.state)) : containers, unavailable };
    },

    async *watchRuntimeEvents(req, context) {
      const types = parseResourceTypes("resource_types", req.resourceTypes);
      const selected = runtimes.select(req.runtime);
      // A single named runtime that is down: an error, not an empty snapshot that reads as
      // "no containers" (ListContainers does the same).
      if (req.runtime !== "") {
        const { unavailable } = snapshot(selected);
        if (unavailable.length > 0) throw new ConnectError(unavailable[0]!, Code.Unavailable);
      }
      const names = new Set(selected.map((r) => r.name));
      const wanted = (e: RuntimeEvent) => names.has(e.runtime) && (!types || types.has(e.resourceType as ResourceType));
      // Without "container" the SNAPSHOT is only a cursor: the client asked for no containers.
      const take = !types || types.has("container") ? () => snapshot(selected) : () => ({ containers: [], unavailable: snapshot(selected).unavailable });
      yield* watch(events, wanted, req.cursor, take, selected, context);
    },

    async getContainerStats(req, context) {
      const runtime = runtimes.one(req.runtime);
      return { stats: await runtime.stats(requireExternalId("external_id", req.externalId), context.signal) };
    },

    async listContainerStats(req, context) {
      const timeoutMs = req.perContainerTimeout ? durationMs(req.perContainerTimeout) : DEFAULT_STATS_TIMEOUT_MS;
      if (!(timeoutMs > 0) || timeoutMs > MAX_STATS_TIMEOUT_MS) throw invalidArgument("per_container_timeout", `must be > 0 and <= 60s, got ${timeoutMs} ms`);
      const selected = runtimes.select(req.runtime);
      const unavailable: string[] = [];
      const work: { runtime: ContainerRuntime; container: Container }[] = [];
      for (const r of selected) {
        try {
          for (const c of r.containers()) if (c.state === ContainerState.RUNNING) work.push({ runtime: r, container: c });
        } catch (e) {
          unavailable.push(`${r.name}: ${ConnectError.from(e).rawMessage}`);
        }
      }
      const errors: ContainerError[] = [];
      // Bounded concurrency, a deadline per container: one slow container costs its own
      // timeout, never the whole answer. Once the call is cancelled, no further container is asked.
      const stats = await mapBounded(work, STATS_CONCURRENCY, async ({ runtime, container }): Promise<ContainerStats | undefined> => {
        if (context.signal.aborted) return undefined;
        const signal = AbortSignal.any([context.signal, AbortSignal.timeout(timeoutMs)]);
        try {
          return await runtime.stats(container.externalId, signal);
        } catch (e) {
          const err = signal.aborted && !context.signal.aborted ? new ConnectError(`no stats within ${timeoutMs} ms`, Code.DeadlineExceeded) : ConnectError.from(e);
          errors.push(create(ContainerErrorSchema, { runtime: runtime.name, externalId: container.externalId, code: codeName(err.code), message: err.rawMessage }));
          return undefined;
        }
      });
      return { stats: stats.filter((s): s is ContainerStats => s !== undefined), errors, unavailable };
    },

    async fetchContainerLogs(req, context) {
      const runtime = runtimes.one(req.runtime);
      const id = requireExternalId("external_id", req.externalId);
      return runtime.fetchLogs(id, { tail: req.tail, timestamps: req.timestamps, container: req.container || undefined }, context.signal);
    },

    async *streamContainerLogs(req, context) {
      const runtime = runtimes.one(req.runtime);
      const id = requireExternalId("external_id", req.externalId);
      for await (const batch of runtime.streamLogs(id, { tail: req.tail, timestamps: req.timestamps, container: req.container || undefined, follow: req.follow }, context.signal)) {
        if (context.signal.aborted) return;
        yield { lines: batch.lines, errors: batch.errors, endReason: batch.end?.reason, endDetail: batch.end?.detail ?? "" };
      }
    },

    async getContainerHealth(req, context) {
      const runtime = runtimes.one(req.runtime);
      return { health: await runtime.health(requireExternalId("external_id", req.externalId), context.signal) };
    },
  };
}

/**
 * One WatchRuntimeEvents stream: SNAPSHOT (or the backlog after a cursor), then live events of
 * the selected runtimes and resource types (`wanted`), each with its cursor. A client that falls WATCH_QUEUE_LIMIT events
 * behind, or whose snapshot missed a runtime that was down when that runtime comes back, gets
 * RESYNC and a fresh SNAPSHOT — never a silent gap.
 */
async function* watch(
  log: RuntimeEventLog,
  wanted: (e: RuntimeEvent) => boolean,
  cursor: string,
  takeSnapshot: () => { containers: Container[]; unavailable: string[] },
  selected: ContainerRuntime[],
  context: HandlerContext,
): AsyncGenerator<WatchRuntimeEventsResponse> {
  const queue: LoggedEvent[] = [];
  let overflowed = false;
  let missing = new Set<string>();
  let wake: (() => void) | undefined;
  const notify = () => {
    wake?.();
    wake = undefined;
  };
  const unsubscribe = log.subscribe((e) => {
    if (!wanted(e.event) || overflowed) return;
    if (queue.length >= WATCH_QUEUE_LIMIT) {
      overflowed = true;
      queue.length = 0;
    } else {
      queue.push(e);
    }
    notify();
  });
  let reconnected = false;
  const onConnected = (name: string) => () => {
    if (missing.has(name)) {
      reconnected = true;
      notify();
    }
  };
  const connectedListeners = selected.map((r) => [r, onConnected(r.name)] as const);
  for (const [r, l] of connectedListeners) r.on("connected", l);
  const aborted = () => notify();
  context.signal.addEventListener("abort", aborted);

  const snapshotMessage = (): WatchRuntimeEventsResponse => {
    const { containers, unavailable } = takeSnapshot();
    // Everything queued so far happened before this snapshot (it is in it): only later events
    // may follow, or clients would see them twice with cursors going backwards.
    queue.length = 0;
    overflowed = false;
    missing = new Set(unavailable.map((u) => u.slice(0, u.indexOf(":"))));
    return create(WatchRuntimeEventsResponseSchema, { type: WatchRuntimeEventsResponseType.SNAPSHOT, containers, unavailable, cursor: log.cursor(log.lastSeq) });
  };
  // No cursor: resuming from one would skip the SNAPSHOT a client that saw RESYNC needs.
  const resync = (reason: string) => create(WatchRuntimeEventsResponseSchema, { type: WatchRuntimeEventsResponseType.RESYNC, resyncReason: reason });
  const eventMessage = (e: LoggedEvent) => create(WatchRuntimeEventsResponseSchema, { type: WatchRuntimeEventsResponseType.EVENT, event: e.event, cursor: log.cursor(e.seq) });

  try {
    // Snapshot/backlog and subscription are taken in the same synchronous step: every event
    // after the snapshot's cursor is in `queue`, none before it.
    if (cursor === "") {
      yield snapshotMessage();
    } else {
      let found;
      try {
        found = log.after(cursor);
      } catch (e) {
        if (e instanceof CursorFormatError) throw invalidArgument("cursor", e.message);
        throw e;
      }
      if (found.kind === "resync") {
        queue.length = 0;
        yield resync(found.reason);
        yield snapshotMessage();
      } else {
        // Backlog first; live events already queued are newer than all of it.
        const backlog = found.events.filter((e) => wanted(e.event));
        const live = queue.splice(0);
        for (const e of backlog) yield eventMessage(e);
        queue.push(...live.filter((e) => e.seq > (backlog.at(-1)?.seq ?? 0)));
      }
    }
    while (!context.signal.aborted) {
      if (overflowed || reconnected) {
        const reason = overflowed ? `the client fell more than ${WATCH_QUEUE_LIMIT} events behind` : `runtime ${[...missing].join(", ")} is reachable again`;
        overflowed = false;
        reconnected = false;
        queue.length = 0;
        yield resync(reason);
        yield snapshotMessage();
        continue;
      }
      const e = queue.shift();
      if (e) {
        yield eventMessage(e);
        continue;
      }
      await new Promise<void>((resolve) => (wake = resolve));
    }
  } finally {
    unsubscribe();
    for (const [r, l] of connectedListeners) r.off("connected", l);
    context.signal.removeEventListener("abort", aborted);
  }
}
