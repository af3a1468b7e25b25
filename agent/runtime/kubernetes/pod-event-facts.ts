import type { ContainerStateJson, Pod, PodContainerStatus } from "./kube-objects.js";

/**
 * What a pod object itself says about when its changes happened and why it is failing, for the
 * events made from two views of it (pod-events.ts): the times are the object's (container state
 * startedAt / finishedAt, condition lastTransitionTime, creationTimestamp), not the time the
 * agent saw the change — a watch that was down, or a relist, still dates each change right.
 * Times stay as the API wrote them (RFC 3339); undefined when the object does not say.
 */
export interface PodFacts {
  /** Exit code of the most recently ended run before a restart (lastState.terminated). */
  lastExitCode?: number;
  createdAt?: string;
  /** The latest container start of the current runs (state.running.startedAt), else status.startTime. */
  startedAt?: string;
  /** The latest end of a finished container (state.terminated.finishedAt). */
  finishedAt?: string;
  /** The end of the run a restart replaced (lastState.terminated.finishedAt, the latest). */
  lastFinishedAt?: string;
  /** When the latest restart began: the restarted container's run start. */
  restartedAt?: string;
  /** The end of the latest run killed for memory (OOMKilled, in state or lastState). */
  oomAt?: string;
  /** The Ready condition's lastTransitionTime. */
  readyChangedAt?: string;
  /**
   * Why the pod is failing now, from its containers' waiting / terminated reasons and messages
   * (CrashLoopBackOff, ImagePullBackOff, ErrImagePull, OOMKilled, Error...) and the pod's own
   * reason (Evicted); "" when nothing is wrong. "<container>: <Reason>[ (exit code N)][: message]",
   * joined with "; ".
   */
  errorDetail: string;
  /** Why the run a restart replaced ended (lastState.terminated), same form; "" when it did not fail. */
  lastRunDetail: string;
}

/** Waiting reasons of a container on its normal way up: not errors. */
const STARTING_REASONS = new Set(["", "ContainerCreating", "PodInitializing"]);

export function podFacts(pod: Pod): PodFacts {
  const statuses = [...pod.status.initContainerStatuses, ...pod.status.containerStatuses];
  const problems: string[] = [];
  if (pod.status.reason) problems.push(detail("pod", pod.status.reason, pod.status.message));
  for (const s of statuses) {
    const problem = currentProblem(s);
    if (problem) problems.push(problem);
  }
  const lastRun = latest(statuses, (s) => s.lastState.terminated?.finishedAt);
  const lastTerminated = lastRun?.lastState.terminated;
  const restarted = latest(
    statuses.filter((s) => s.restartCount > 0),
    (s) => s.state.running?.startedAt ?? s.lastState.terminated?.startedAt,
  );
  return {
    lastExitCode: lastTerminated?.exitCode,
    createdAt: pod.metadata.creationTimestamp,
    startedAt: latestTime(statuses.map((s) => s.state.running?.startedAt)) ?? pod.status.startTime,
    finishedAt: latestTime(statuses.map((s) => s.state.terminated?.finishedAt)),
    lastFinishedAt: lastTerminated?.finishedAt,
    restartedAt: restarted ? (restarted.state.running?.startedAt ?? restarted.lastState.terminated?.startedAt) : undefined,
    oomAt: latestTime(statuses.flatMap((s) => [s.state, s.lastState].map((st) => (st.terminated?.reason === "OOMKilled" ? st.terminated.finishedAt : undefined)))),
    readyChangedAt: pod.status.conditions.find((c) => c.type === "Ready")?.lastTransitionTime,
    errorDetail: problems.join("; "),
    lastRunDetail: lastRun && lastTerminated && failed(lastRun.lastState) ? terminatedDetail(lastRun.name, lastRun.lastState) : "",
  };
}

/**
 * Kubernetes' failing streak: the kubelet publishes no probe counts, so it is the restart count
 * of the pod's worst not-ready container whose last run failed (a crash loop's length as far as
 * the API shows: restartCount is cumulative for the pod's life, it does not reset when a run
 * succeeds); 0 when no container is in that state.
 */
export function podFailingStreak(pod: Pod): number {
  let streak = 0;
  for (const s of pod.status.containerStatuses) {
    if (s.ready || s.restartCount === 0) continue;
    const looping = s.state.waiting?.reason === "CrashLoopBackOff" || failed(s.lastState);
    if (looping) streak = Math.max(streak, s.restartCount);
  }
  return streak;
}

function currentProblem(s: PodContainerStatus): string | undefined {
  const waiting = s.state.waiting;
  if (waiting && !STARTING_REASONS.has(waiting.reason)) return detail(s.name, waiting.reason, waiting.message);
  if (failed(s.state)) return terminatedDetail(s.name, s.state);
  return undefined;
}

function failed(state: ContainerStateJson): boolean {
  const t = state.terminated;
  return t !== undefined && (t.exitCode !== 0 || (t.reason !== "" && t.reason !== "Completed"));
}

function terminatedDetail(name: string, state: ContainerStateJson): string {
  const t = state.terminated!;
  return detail(name, `${t.reason || "Terminated"} (exit code ${t.exitCode})`, t.message);
}

function detail(who: string, reason: string, message: string): string {
  return message ? `${who}: ${reason}: ${message}` : `${who}: ${reason}`;
}

function millis(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const ms = Date.parse(text);
  return Number.isNaN(ms) ? undefined : ms;
}

function latestTime(times: (string | undefined)[]): string | undefined {
  let best: { at: number; text: string } | undefined;
  for (const text of times) {
    const at = millis(text);
    if (at !== undefined && (!best || at > best.at)) best = { at, text: text! };
  }
  return best?.text;
}

function latest<T>(items: T[], time: (item: T) => string | undefined): T | undefined {
  let best: { at: number; item: T } | undefined;
  for (const item of items) {
    const at = millis(time(item));
    if (at !== undefined && (!best || at >= best.at)) best = { at, item };
  }
  return best?.item;
}
