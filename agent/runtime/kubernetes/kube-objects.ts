/**
 * The parts of Kubernetes objects this runtime reads, checked once where JSON comes in (list,
 * watch, get): everything after this boundary can trust the types. Fields of the wrong type are
 * dropped, not guessed at; an object without the identity we key on (namespace, name, uid) is a
 * KubeObjectError. We keep our own small model rather than the client library's generated
 * classes because watch events arrive as plain JSON (string timestamps), and the two must not mix.
 */

export class KubeObjectError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "KubeObjectError";
  }
}

export interface OwnerReference {
  apiVersion: string;
  kind: string;
  name: string;
  uid: string;
  controller: boolean;
}

export interface ObjectMeta {
  name: string;
  namespace: string;
  uid: string;
  resourceVersion: string;
  creationTimestamp?: string;
  deletionTimestamp?: string;
  labels: Record<string, string>;
  annotations: Record<string, string>;
  ownerReferences: OwnerReference[];
}

export interface PodSpecContainer {
  name: string;
  image: string;
  hasReadinessProbe: boolean;
  /** resources.limits.memory, as written ("512Mi"). */
  memoryLimit?: string;
  /** resources.limits.cpu, as written ("500m", "1.5"). */
  cpuLimit?: string;
}

export interface ContainerStateWaiting {
  reason: string;
  message: string;
}
export interface ContainerStateRunning {
  startedAt?: string;
}
export interface ContainerStateTerminated {
  exitCode: number;
  reason: string;
  message: string;
  startedAt?: string;
  finishedAt?: string;
}
export interface ContainerStateJson {
  waiting?: ContainerStateWaiting;
  running?: ContainerStateRunning;
  terminated?: ContainerStateTerminated;
}

export interface PodContainerStatus {
  name: string;
  ready: boolean;
  restartCount: number;
  state: ContainerStateJson;
  lastState: ContainerStateJson;
}

export interface PodCondition {
  type: string;
  status: string;
  reason: string;
  message: string;
  lastTransitionTime?: string;
  lastProbeTime?: string;
}

export interface Pod {
  metadata: ObjectMeta;
  spec: {
    nodeName: string;
    containers: PodSpecContainer[];
    /** Pod-level resources.limits.memory (a newer field); wins over the containers' sum. */
    memoryLimit?: string;
    /** Pod-level resources.limits.cpu, likewise. */
    cpuLimit?: string;
  };
  status: {
    phase: string;
    reason: string;
    message: string;
    podIP: string;
    podIPs: string[];
    startTime?: string;
    conditions: PodCondition[];
    containerStatuses: PodContainerStatus[];
    initContainerStatuses: PodContainerStatus[];
  };
}

/** A Kubernetes Status (error bodies, watch ERROR events). */
export interface KubeStatus {
  code: number;
  reason: string;
  message: string;
}

export interface PodMetrics {
  namespace: string;
  name: string;
  timestamp?: string;
  window?: string;
  containers: { name: string; cpu?: string; memory?: string }[];
}

type Json = Record<string, unknown>;

function isObject(v: unknown): v is Json {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}
function str(v: unknown): string {
  return typeof v === "string" ? v : "";
}
function optStr(v: unknown): string | undefined {
  return typeof v === "string" && v !== "" ? v : undefined;
}
function obj(v: unknown): Json {
  return isObject(v) ? v : {};
}
function arr(v: unknown): unknown[] {
  return Array.isArray(v) ? v : [];
}
function int(v: unknown): number {
  return typeof v === "number" && Number.isInteger(v) ? v : 0;
}
function stringMap(v: unknown): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, val] of Object.entries(obj(v))) if (typeof val === "string") out[k] = val;
  return out;
}

/**
 * Metadata with the identity every keyed object needs. A cluster-scoped object (a Node) has no
 * namespace: its `namespace` is "".
 */
export function toObjectMeta(value: unknown, what: string, clusterScoped = false): ObjectMeta {
  const m = obj(value);
  const name = str(m.name);
  const namespace = str(m.namespace);
  const uid = str(m.uid);
  if (!name || (!namespace && !clusterScoped) || !uid) throw new KubeObjectError(`${what} without metadata.name, ${clusterScoped ? "" : ".namespace "}or .uid`);
  return {
    name,
    namespace,
    uid,
    resourceVersion: str(m.resourceVersion),
    creationTimestamp: optStr(m.creationTimestamp),
    deletionTimestamp: optStr(m.deletionTimestamp),
    labels: stringMap(m.labels),
    annotations: stringMap(m.annotations),
    ownerReferences: arr(m.ownerReferences).flatMap((o) => {
      if (!isObject(o) || typeof o.kind !== "string" || typeof o.name !== "string") return [];
      return [{ apiVersion: str(o.apiVersion), kind: o.kind, name: o.name, uid: str(o.uid), controller: o.controller === true }];
    }),
  };
}

function toState(v: unknown): ContainerStateJson {
  const s = obj(v);
  const out: ContainerStateJson = {};
  if (isObject(s.waiting)) out.waiting = { reason: str(s.waiting.reason), message: str(s.waiting.message) };
  if (isObject(s.running)) out.running = { startedAt: optStr(s.running.startedAt) };
  if (isObject(s.terminated)) {
    const t = s.terminated;
    out.terminated = { exitCode: int(t.exitCode), reason: str(t.reason), message: str(t.message), startedAt: optStr(t.startedAt), finishedAt: optStr(t.finishedAt) };
  }
  return out;
}

function toContainerStatuses(v: unknown): PodContainerStatus[] {
  return arr(v).flatMap((c) => {
    if (!isObject(c) || typeof c.name !== "string") return [];
    return [{ name: c.name, ready: c.ready === true, restartCount: Math.max(0, int(c.restartCount)), state: toState(c.state), lastState: toState(c.lastState) }];
  });
}

/** A pod as read from the API (list item, watch object, get). Throws KubeObjectError. */
export function toPod(value: unknown): Pod {
  if (!isObject(value)) throw new KubeObjectError("pod is not a JSON object");
  const metadata = toObjectMeta(value.metadata, "pod");
  const spec = obj(value.spec);
  const status = obj(value.status);
  const podIPs = arr(status.podIPs).flatMap((p) => (isObject(p) && typeof p.ip === "string" ? [p.ip] : []));
  return {
    metadata,
    spec: {
      nodeName: str(spec.nodeName),
      containers: arr(spec.containers).flatMap((c) => {
        if (!isObject(c) || typeof c.name !== "string") return [];
        const limits = obj(obj(c.resources).limits);
        return [{ name: c.name, image: str(c.image), hasReadinessProbe: isObject(c.readinessProbe), memoryLimit: optStr(limits.memory), cpuLimit: optStr(limits.cpu) }];
      }),
      memoryLimit: optStr(obj(obj(spec.resources).limits).memory),
      cpuLimit: optStr(obj(obj(spec.resources).limits).cpu),
    },
    status: {
      phase: str(status.phase),
      reason: str(status.reason),
      message: str(status.message),
      podIP: str(status.podIP),
      podIPs,
      startTime: optStr(status.startTime),
      conditions: arr(status.conditions).flatMap((c) => {
        if (!isObject(c) || typeof c.type !== "string") return [];
        return [{ type: c.type, status: str(c.status), reason: str(c.reason), message: str(c.message), lastTransitionTime: optStr(c.lastTransitionTime), lastProbeTime: optStr(c.lastProbeTime) }];
      }),
      containerStatuses: toContainerStatuses(status.containerStatuses),
      initContainerStatuses: toContainerStatuses(status.initContainerStatuses),
    },
  };
}

/** A Status body, or undefined when the value is not one. */
export function toStatus(value: unknown): KubeStatus | undefined {
  if (!isObject(value) || value.kind !== "Status") return undefined;
  return { code: int(value.code), reason: str(value.reason), message: str(value.message) };
}

/** A list's items and the resourceVersion (and continue token) of its snapshot. */
export function toList(value: unknown, what: string): { items: unknown[]; resourceVersion: string; continueToken: string } {
  if (!isObject(value) || !Array.isArray(value.items)) throw new KubeObjectError(`${what} is not a list (no items array)`);
  const meta = obj(value.metadata);
  return { items: value.items, resourceVersion: str(meta.resourceVersion), continueToken: str(meta.continue) };
}

/** The controller owner reference of an object, if it has one. */
export function controllerOf(meta: ObjectMeta): OwnerReference | undefined {
  return meta.ownerReferences.find((o) => o.controller);
}

/** metrics.k8s.io PodMetrics items; malformed items are skipped (they cannot be keyed). */
export function toPodMetricsList(value: unknown): PodMetrics[] {
  const { items } = toList(value, "PodMetricsList");
  return items.flatMap((item) => {
    if (!isObject(item)) return [];
    const meta = obj(item.metadata);
    if (typeof meta.name !== "string" || typeof meta.namespace !== "string") return [];
    return [
      {
        namespace: meta.namespace,
        name: meta.name,
        timestamp: optStr(item.timestamp),
        window: optStr(item.window),
        containers: arr(item.containers).flatMap((c) => {
          if (!isObject(c) || typeof c.name !== "string") return [];
          const usage = obj(c.usage);
          return [{ name: c.name, cpu: optStr(usage.cpu), memory: optStr(usage.memory) }];
        }),
      },
    ];
  });
}

export interface NodeCondition {
  type: string;
  status: string;
  reason: string;
  message: string;
  lastTransitionTime?: string;
}

/** A Node: its conditions and whether it is cordoned (spec.unschedulable). */
export interface Node {
  metadata: ObjectMeta;
  unschedulable: boolean;
  conditions: NodeCondition[];
  kubeletVersion: string;
}

/** A node as read from the API (list item, watch object). Throws KubeObjectError. */
export function toNode(value: unknown): Node {
  if (!isObject(value)) throw new KubeObjectError("node is not a JSON object");
  const metadata = toObjectMeta(value.metadata, "node", true);
  const status = obj(value.status);
  return {
    metadata,
    unschedulable: obj(value.spec).unschedulable === true,
    conditions: arr(status.conditions).flatMap((c) => {
      if (!isObject(c) || typeof c.type !== "string") return [];
      return [{ type: c.type, status: str(c.status), reason: str(c.reason), message: str(c.message), lastTransitionTime: optStr(c.lastTransitionTime) }];
    }),
    kubeletVersion: str(obj(status.nodeInfo).kubeletVersion),
  };
}

export interface ServicePort {
  name: string;
  protocol: string;
  port: number;
}

/** A Service: what a change of it is reported by. */
export interface Service {
  metadata: ObjectMeta;
  type: string;
  clusterIP: string;
  ports: ServicePort[];
  selector: Record<string, string>;
  /** status.loadBalancer.ingress, IPs or hostnames. */
  loadBalancerIngress: string[];
}

/** A service as read from the API (list item, watch object). Throws KubeObjectError. */
export function toService(value: unknown): Service {
  if (!isObject(value)) throw new KubeObjectError("service is not a JSON object");
  const metadata = toObjectMeta(value.metadata, "service");
  const spec = obj(value.spec);
  return {
    metadata,
    type: str(spec.type) || "ClusterIP",
    clusterIP: str(spec.clusterIP),
    ports: arr(spec.ports).flatMap((p) => (isObject(p) && typeof p.port === "number" ? [{ name: str(p.name), protocol: str(p.protocol) || "TCP", port: p.port }] : [])),
    selector: stringMap(spec.selector),
    loadBalancerIngress: arr(obj(obj(value.status).loadBalancer).ingress).flatMap((i) => {
      if (!isObject(i)) return [];
      const at = str(i.ip) || str(i.hostname);
      return at ? [at] : [];
    }),
  };
}

/** The label an EndpointSlice names its Service by. */
export const SERVICE_NAME_LABEL = "kubernetes.io/service-name";

export interface SliceEndpoint {
  /** targetRef uid (the pod), else "<addressType>/<first address>": one backend across slices. */
  identity: string;
  /** conditions.ready; unset means ready (the API's rule). */
  ready: boolean;
}

/** A discovery.k8s.io/v1 EndpointSlice: which service it is of and its endpoints. */
export interface EndpointSlice {
  metadata: ObjectMeta;
  /** The service it belongs to ("" when the label is missing: not counted for any). */
  serviceName: string;
  endpoints: SliceEndpoint[];
}

/** An endpoint slice as read from the API (list item, watch object). Throws KubeObjectError. */
export function toEndpointSlice(value: unknown): EndpointSlice {
  if (!isObject(value)) throw new KubeObjectError("endpointslice is not a JSON object");
  const metadata = toObjectMeta(value.metadata, "endpointslice");
  const addressType = str(value.addressType);
  return {
    metadata,
    serviceName: metadata.labels[SERVICE_NAME_LABEL] ?? "",
    endpoints: arr(value.endpoints).flatMap((e) => {
      if (!isObject(e)) return [];
      const uid = str(obj(e.targetRef).uid);
      const first = str(arr(e.addresses)[0]);
      if (!uid && !first) return [];
      return [{ identity: uid || `${addressType}/${first}`, ready: obj(e.conditions).ready !== false }];
    }),
  };
}
