/**
 * Server-side printing as the API server does it for `kubectl get` (a meta.k8s.io/v1 Table
 * when the Accept header asks for `as=Table`): the columns and cell rules of Kubernetes' pod
 * and deployment printers (pkg/printers/internalversion), so kubectl shows what it would show
 * against a real cluster for the same objects.
 */

// Raw API JSON of fixture objects, read field by field with fallbacks: `any` here saves a cast
// per field in a test helper; the runtime's own code reads JSON through checked types.
// biome-ignore lint/suspicious/noExplicitAny: kubectl's table rows are raw JSON
type Json = Record<string, any>;

export function wantsTable(accept: string | undefined): boolean {
  return (accept ?? "").split(",").some((part) => /;\s*as=Table/.test(part) && /g=meta\.k8s\.io/.test(part));
}

const NAME_DESCRIPTION =
  "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const AGE_DESCRIPTION =
  "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

function column(name: string, description: string, priority = 0, format = ""): Json {
  return { name, type: "string", format, description, priority };
}

const POD_COLUMNS = [
  column("Name", NAME_DESCRIPTION, 0, "name"),
  column("Ready", "The aggregate readiness state of this pod for accepting traffic."),
  column("Status", "The aggregate status of the containers in this pod."),
  column("Restarts", "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."),
  column("Age", AGE_DESCRIPTION),
  column("IP", "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated.", 1),
  column("Node", "NodeName indicates in which node this pod is scheduled.", 1),
  column("Nominated Node", "nominatedNodeName is set only when this pod preempts other pods on the node, but it cannot be scheduled right away as preemption victims receive their graceful termination periods. This field does not guarantee that the pod will be scheduled on this node. Scheduler may decide to place the pod elsewhere if other nodes become available sooner. Scheduler may also decide to give the resources on this node to a higher priority pod that is created after preemption. As a result, this field may be different than PodSpec.nodeName when the pod is scheduled.", 1),
  column("Readiness Gates", "If specified, all readiness gates will be evaluated for pod readiness. A pod is ready when all its containers are ready AND all conditions specified in the readiness gates have status equal to \"True\" More info: https://git.k8s.io/enhancements/keps/sig-network/580-pod-readiness-gates", 1),
];

const DEPLOYMENT_COLUMNS = [
  column("Name", NAME_DESCRIPTION, 0, "name"),
  column("Ready", "Number of the pod with ready state"),
  column("Up-to-date", "Total number of non-terminated pods targeted by this deployment that have the desired template spec."),
  column("Available", "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment."),
  column("Age", AGE_DESCRIPTION),
  column("Containers", "Names of each container in the template.", 1),
  column("Images", "Images referenced by each container in the template.", 1),
  column("Selector", "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment.", 1),
];

/** k8s.io/apimachinery/pkg/util/duration.HumanDuration. */
export function humanDuration(ms: number): string {
  const seconds = Math.floor(ms / 1000);
  if (seconds < -1) return "<invalid>";
  if (seconds < 0) return "0s";
  if (seconds < 120) return `${seconds}s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 10) {
    const s = seconds % 60;
    return s === 0 ? `${minutes}m` : `${minutes}m${s}s`;
  }
  if (minutes < 180) return `${minutes}m`;
  const hours = Math.floor(minutes / 60);
  if (hours < 8) {
    const m = minutes % 60;
    return m === 0 ? `${hours}h` : `${hours}h${m}m`;
  }
  if (hours < 48) return `${hours}h`;
  if (hours < 24 * 8) {
    const h = hours % 24;
    return h === 0 ? `${Math.floor(hours / 24)}d` : `${Math.floor(hours / 24)}d${h}h`;
  }
  if (hours < 24 * 365 * 2) return `${Math.floor(hours / 24)}d`;
  if (hours < 24 * 365 * 8) {
    const dy = Math.floor(hours / 24) % 365;
    return dy === 0 ? `${Math.floor(hours / 24 / 365)}y` : `${Math.floor(hours / 24 / 365)}y${dy}d`;
  }
  return `${Math.floor(hours / 24 / 365)}y`;
}

function age(obj: Json, now: number): string {
  const created = obj.metadata?.creationTimestamp;
  return created ? humanDuration(now - Date.parse(created)) : "<unknown>";
}

/** printPod, for pods without init containers or sidecars (all the fixtures have). */
function podCells(pod: Json, now: number): unknown[] {
  const statuses: Json[] = pod.status?.containerStatuses ?? [];
  let restarts = 0;
  let lastRestart = 0;
  let ready = 0;
  let reason: string = pod.status?.reason || pod.status?.phase || "";
  let hasRunning = false;
  for (let i = statuses.length - 1; i >= 0; i--) {
    const s = statuses[i]!;
    restarts += s.restartCount ?? 0;
    const finished = s.lastState?.terminated?.finishedAt;
    if (finished) lastRestart = Math.max(lastRestart, Date.parse(finished));
    if (s.state?.waiting?.reason) reason = s.state.waiting.reason;
    else if (s.state?.terminated?.reason) reason = s.state.terminated.reason;
    else if (s.state?.terminated) reason = s.state.terminated.signal ? `Signal:${s.state.terminated.signal}` : `ExitCode:${s.state.terminated.exitCode}`;
    else if (s.ready && s.state?.running) {
      hasRunning = true;
      ready++;
    }
  }
  if (reason === "Completed" && hasRunning) {
    reason = (pod.status?.conditions ?? []).some((c: Json) => c.type === "Ready" && c.status === "True") ? "Running" : "NotReady";
  }
  if (pod.metadata?.deletionTimestamp) reason = pod.status?.reason === "NodeLost" ? "Unknown" : "Terminating";
  const restartText = lastRestart ? `${restarts} (${humanDuration(now - lastRestart)} ago)` : String(restarts);
  return [
    pod.metadata.name,
    `${ready}/${(pod.spec?.containers ?? []).length}`,
    reason,
    restartText,
    age(pod, now),
    pod.status?.podIP || "<none>",
    pod.spec?.nodeName || "<none>",
    pod.status?.nominatedNodeName || "<none>",
    "<none>",
  ];
}

function deploymentCells(d: Json, now: number): unknown[] {
  const containers: Json[] = d.spec?.template?.spec?.containers ?? [];
  const selector = Object.entries(d.spec?.selector?.matchLabels ?? {})
    .map(([k, v]) => `${k}=${String(v)}`)
    .join(",");
  return [
    d.metadata.name,
    `${d.status?.readyReplicas ?? 0}/${d.spec?.replicas ?? 0}`,
    d.status?.updatedReplicas ?? 0,
    d.status?.availableReplicas ?? 0,
    age(d, now),
    containers.map((c) => c.name).join(","),
    containers.map((c) => c.image).join(","),
    selector,
  ];
}

function partialMetadata(obj: Json): Json {
  return { kind: "PartialObjectMetadata", apiVersion: "meta.k8s.io/v1", metadata: obj.metadata };
}

/** The Table for a list (or one object) of pods or deployments. */
export function asTable(resource: "pods" | "deployments", items: Json[], resourceVersion: string, options: { now?: number; headers?: boolean } = {}): Json {
  const now = options.now ?? Date.now();
  const cells = resource === "pods" ? podCells : deploymentCells;
  return {
    kind: "Table",
    apiVersion: "meta.k8s.io/v1",
    metadata: { resourceVersion },
    columnDefinitions: options.headers === false ? null : resource === "pods" ? POD_COLUMNS : DEPLOYMENT_COLUMNS,
    rows: items.map((item) => ({ cells: cells(item, now), object: partialMetadata(item) })),
  };
}
