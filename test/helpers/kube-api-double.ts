import http from "node:http";
import { readFileSync, writeFileSync } from "node:fs";
import type { AddressInfo, Socket } from "node:net";
import { join } from "node:path";
import { asTable, wantsTable } from "./kube-table.js";
import { repoPath } from "./paths.js";
import { errorMessage } from "../../lib/error-message.js";

/**
 * A stand-in for a Kubernetes API server (testing.md "Kubernetes": none can run here): a local
 * HTTP server answering from the recorded-shape fixtures in test/fixtures/kubernetes (discovery,
 * version, pods, nodes, services, endpointslices, replicasets, deployments, metrics.k8s.io, logs)
 * with the API server's semantics where the runtime depends on them:
 * - one global resourceVersion that every change bumps; lists carry it;
 * - pods, nodes, services and endpointslices can be listed and watched (WATCHED below); watches
 *   from a resourceVersion replay the changes after it, then stream live ones as
 *   newline-delimited JSON; "" or "0" starts with ADDED for everything; a version older than the
 *   retained history gets an ERROR event with a 410 Expired Status (or HTTP 410, see
 *   `expireWith`); BOOKMARK events only to watches that asked with allowWatchBookmarks=true;
 * - field selectors (spec.nodeName, metadata.name/namespace, status.phase), label selectors
 *   (equality), limit/continue paging;
 * - Status bodies for 400/401/403/404/410 as the API server writes them;
 * - Table responses (Accept: as=Table) for pods and deployments, as kubectl asks for them.
 * Tests drive it: add/update/delete pods (or any watched object), bookmark, compact history, close or expire watches,
 * pause event delivery, append to logs, require a token, forbid paths, go down and up.
 * Every request is recorded.
 */

// Raw API JSON, read and written field by field.
// biome-ignore lint/suspicious/noExplicitAny: recorded API objects are raw JSON, served and patched as such
type Json = Record<string, any>;

export const KUBE_FIXTURES = repoPath("test", "fixtures", "kubernetes");

export interface RecordedRequest {
  method: string;
  path: string;
  query: URLSearchParams;
  accept: string;
  authorization: string;
}

export interface KubeApiDoubleOptions {
  /** Requests must carry "Authorization: Bearer <token>", else 401. */
  token?: string;
  /** Serve metrics.k8s.io (default true); false = not installed (404, not in discovery). */
  metrics?: boolean;
}

/** The resources that can be listed and watched, with what the API server serves them as. */
export type WatchedResource = "pods" | "nodes" | "services" | "endpointslices";

interface ResourceInfo {
  kind: string;
  apiVersion: string;
  fixture: string;
  clusterScoped: boolean;
  fields: Record<string, (o: Json) => string>;
}

const META_FIELDS: Record<string, (o: Json) => string> = {
  "metadata.name": (o) => o.metadata?.name ?? "",
  "metadata.namespace": (o) => o.metadata?.namespace ?? "",
};

interface OpenWatch {
  resource: WatchedResource;
  res: http.ServerResponse;
  matches: (pod: Json) => boolean;
  bookmarks: boolean;
  table: boolean;
  held: string[];
  timer?: NodeJS.Timeout;
}

interface LogFollower {
  key: string;
  res: http.ServerResponse;
  timestamps: boolean;
}

interface HistoryEntry {
  resource: WatchedResource;
  rv: number;
  type: "ADDED" | "MODIFIED" | "DELETED";
  object: Json;
}

export class KubeStatusError extends Error {
  constructor(readonly status: Json) {
    super(String(status.message));
  }
}

/** A Status body exactly as the API server writes one (field order included). */
export function statusBody(code: number, reason: string, message: string, details?: Json): Json {
  return { kind: "Status", apiVersion: "v1", metadata: {}, status: "Failure", message, reason, ...(details ? { details } : {}), code };
}

export function notFoundStatus(resource: string, name: string, group = ""): Json {
  const qualified = group ? `${resource}.${group}` : resource;
  return statusBody(404, "NotFound", `${qualified} "${name}" not found`, { name, ...(group ? { group } : {}), kind: resource });
}

export const NO_RESOURCE_STATUS = statusBody(404, "NotFound", "the server could not find the requested resource", {});
export const UNAUTHORIZED_STATUS = statusBody(401, "Unauthorized", "Unauthorized");

export function expiredStatus(asked: number, oldest: number): Json {
  return statusBody(410, "Expired", `too old resource version: ${asked} (${oldest})`);
}

export function badRequestStatus(message: string): Json {
  return statusBody(400, "BadRequest", message);
}

export function forbiddenStatus(resource: string, name: string, namespace: string, user = "system:serviceaccount:fleetlet:agent"): Json {
  const [base] = resource.split("/");
  return statusBody(403, "Forbidden", `${base} "${name}" is forbidden: User "${user}" cannot get resource "${resource}" in API group "" in the namespace "${namespace}"`, { name, kind: base });
}

function readJson(path: string): Json {
  return JSON.parse(readFileSync(join(KUBE_FIXTURES, path), "utf8")) as Json;
}

function clone<T>(v: T): T {
  return structuredClone(v);
}

const key = (ns: string, name: string) => `${ns}/${name}`;

/** Field selector terms the API server accepts for pods (a subset: the ones used). */
const POD_FIELDS: Record<string, (p: Json) => string> = {
  ...META_FIELDS,
  "spec.nodeName": (p) => p.spec?.nodeName ?? "",
  "status.phase": (p) => p.status?.phase ?? "",
};

const WATCHED: Record<WatchedResource, ResourceInfo> = {
  pods: { kind: "Pod", apiVersion: "v1", fixture: "pods.json", clusterScoped: false, fields: POD_FIELDS },
  // Nodes take metadata.name and spec.unschedulable field selectors (the API server's node fields).
  nodes: { kind: "Node", apiVersion: "v1", fixture: "nodes.json", clusterScoped: true, fields: { "metadata.name": META_FIELDS["metadata.name"]!, "spec.unschedulable": (n) => String(n.spec?.unschedulable === true) } },
  services: { kind: "Service", apiVersion: "v1", fixture: "services.json", clusterScoped: false, fields: META_FIELDS },
  endpointslices: { kind: "EndpointSlice", apiVersion: "discovery.k8s.io/v1", fixture: "endpointslices.json", clusterScoped: false, fields: META_FIELDS },
};

function parseSelector(text: string | null, kind: "field" | "label", fields?: Record<string, (o: Json) => string>): (o: Json) => boolean {
  if (!text) return () => true;
  const terms = text.split(",").map((term) => {
    const m = /^([^!=]+?)\s*(==|=|!=)\s*(.*)$/.exec(term.trim());
    if (!m) throw new KubeStatusError(badRequestStatus(`unable to parse requirement: ${kind} selector ${JSON.stringify(term)}`));
    const [, name, op, value] = m as unknown as [string, string, string, string];
    let get: (o: Json) => string;
    if (kind === "field") {
      const f = fields?.[name];
      if (!f) throw new KubeStatusError(badRequestStatus(`field label not supported: ${name}`));
      get = f;
    } else {
      get = (o) => o.metadata?.labels?.[name] ?? "\u0000absent";
    }
    return (o: Json) => (op === "!=" ? get(o) !== value : get(o) === value);
  });
  return (o) => terms.every((t) => t(o));
}

export class KubeApiDouble {
  readonly requests: RecordedRequest[] = [];
  /** Pod watch requests that ended with 410 (tests check the expiry path was taken). */
  expiredWatches = 0;
  /** "event": 200 + ERROR event with the Status (what an API server with a watch cache does); "http": HTTP 410. */
  expireWith: "event" | "http" = "event";

  private server: http.Server;
  private port = 0;
  private readonly sockets = new Set<Socket>();
  private rv: number;
  private compactedRv: number;
  /** The watched objects by resource, keyed "<namespace>/<name>" (nodes: the name). */
  private readonly stores: Record<WatchedResource, Map<string, Json>> = { pods: new Map(), nodes: new Map(), services: new Map(), endpointslices: new Map() };
  private readonly pods = this.stores.pods;
  private readonly fixtures: Record<WatchedResource, Json[]> = { pods: [], nodes: [], services: [], endpointslices: [] };
  private history: HistoryEntry[] = [];
  private readonly watches = new Set<OpenWatch>();
  private readonly followers = new Set<LogFollower>();
  private readonly logs = new Map<string, string[]>();
  private readonly replicasets: Json[];
  private readonly deployments: Json[];
  private readonly namespaces: Json[];
  private readonly podMetrics: Json;
  private readonly forbidden: { test: (path: string) => boolean; status: Json }[] = [];
  private paused = false;
  token: string | undefined;
  metricsServed: boolean;

  private constructor(options: KubeApiDoubleOptions) {
    this.token = options.token;
    this.metricsServed = options.metrics ?? true;
    this.rv = 0;
    for (const resource of Object.keys(WATCHED) as WatchedResource[]) {
      const list = readJson(WATCHED[resource].fixture);
      this.fixtures[resource] = list.items as Json[];
      for (const o of this.fixtures[resource]) this.stores[resource].set(this.keyOf(resource, o), clone(o));
      // One etcd: the cluster's version is the newest of the recorded lists.
      this.rv = Math.max(this.rv, Number(list.metadata.resourceVersion));
    }
    this.compactedRv = this.rv;
    this.replicasets = readJson("replicasets.json").items as Json[];
    this.deployments = readJson("deployments.json").items as Json[];
    this.namespaces = readJson("namespaces.json").items as Json[];
    this.podMetrics = readJson("pod-metrics.json");
    for (const p of this.fixtures.pods) {
      for (const c of p.spec.containers as Json[]) {
        try {
          const text = readFileSync(join(KUBE_FIXTURES, "logs", p.metadata.namespace, p.metadata.name, `${c.name}.log`), "utf8");
          this.logs.set(`${key(p.metadata.namespace, p.metadata.name)}/${c.name}`, text.split("\n").filter((l) => l !== ""));
        } catch {
          // No log recorded for this container: an empty log.
        }
      }
    }
    this.server = this.createServer();
  }

  static async start(options: KubeApiDoubleOptions = {}): Promise<KubeApiDouble> {
    const d = new KubeApiDouble(options);
    await d.listen(0);
    return d;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  get resourceVersion(): string {
    return String(this.rv);
  }

  /** Open pod watches. */
  get openWatches(): number {
    return this.watchesOf("pods");
  }

  watchesOf(resource: WatchedResource): number {
    let n = 0;
    for (const w of this.watches) if (w.resource === resource) n++;
    return n;
  }

  /** Requests whose path matches (a string is an exact path). */
  requestsTo(path: string | RegExp, filter?: (r: RecordedRequest) => boolean): RecordedRequest[] {
    return this.requests.filter((r) => (typeof path === "string" ? r.path === path : path.test(r.path)) && (!filter || filter(r)));
  }

  /** A fixture pod (a copy), to build new pods from. */
  fixturePod(name: string): Json {
    return this.fixtureObject("pods", name);
  }

  /** A fixture object (a copy) by name, to build new objects from. */
  fixtureObject(resource: WatchedResource, name: string): Json {
    const o = this.fixtures[resource].find((x) => x.metadata.name === name);
    if (!o) throw new Error(`no fixture ${resource} ${name}`);
    return clone(o);
  }

  pod(namespace: string, name: string): Json | undefined {
    return this.object("pods", namespace, name);
  }

  /** An object as served now (a copy); `namespace` is ignored for nodes. */
  object(resource: WatchedResource, namespace: string, name: string): Json | undefined {
    const o = this.stores[resource].get(WATCHED[resource].clusterScoped ? name : key(namespace, name));
    return o ? clone(o) : undefined;
  }

  addPod(pod: Json): string {
    return this.addObject("pods", pod);
  }

  updatePod(namespace: string, name: string, mutate: (pod: Json) => void): string {
    return this.updateObject("pods", namespace, name, mutate);
  }

  deletePod(namespace: string, name: string): string {
    return this.deleteObject("pods", namespace, name);
  }

  addObject(resource: WatchedResource, object: Json): string {
    const k = this.keyOf(resource, object);
    const store = this.stores[resource];
    if (store.has(k)) throw new Error(`${resource} ${k} exists`);
    const o = clone(object);
    o.metadata.resourceVersion = String(++this.rv);
    store.set(k, o);
    this.record(resource, "ADDED", o);
    return o.metadata.resourceVersion;
  }

  updateObject(resource: WatchedResource, namespace: string, name: string, mutate: (object: Json) => void): string {
    const k = WATCHED[resource].clusterScoped ? name : key(namespace, name);
    const o = this.stores[resource].get(k);
    if (!o) throw new Error(`no ${resource} ${k}`);
    mutate(o);
    o.metadata.resourceVersion = String(++this.rv);
    this.record(resource, "MODIFIED", o);
    return o.metadata.resourceVersion;
  }

  deleteObject(resource: WatchedResource, namespace: string, name: string): string {
    const k = WATCHED[resource].clusterScoped ? name : key(namespace, name);
    const store = this.stores[resource];
    const o = store.get(k);
    if (!o) throw new Error(`no ${resource} ${k}`);
    store.delete(k);
    o.metadata.resourceVersion = String(++this.rv);
    this.record(resource, "DELETED", o);
    return o.metadata.resourceVersion;
  }

  private keyOf(resource: WatchedResource, o: Json): string {
    return WATCHED[resource].clusterScoped ? o.metadata.name : key(o.metadata.namespace, o.metadata.name);
  }

  /** Some other object of the cluster changed (the version moves on, no pod event). */
  touchOther(): string {
    return String(++this.rv);
  }

  /** A BOOKMARK at the current version to every watch that asked for bookmarks. */
  bookmark(): void {
    for (const w of this.watches) {
      if (!w.bookmarks || w.table) continue;
      const { kind, apiVersion } = WATCHED[w.resource];
      // The API server's bookmark is an empty object of the kind with only the version set.
      const object = w.resource === "pods" ? { kind, apiVersion, metadata: { resourceVersion: String(this.rv), creationTimestamp: null }, spec: { containers: null }, status: {} } : { kind, apiVersion, metadata: { resourceVersion: String(this.rv), creationTimestamp: null } };
      this.send(w, { type: "BOOKMARK", object });
    }
  }

  /** Forgets the change history: watches from any older version get 410 from now on. */
  compact(): void {
    this.compactedRv = this.rv;
    this.history = [];
  }

  /** Ends every open watch normally (as the server does at timeoutSeconds). */
  closeWatches(): void {
    for (const w of [...this.watches]) this.endWatch(w);
  }

  /** Sends ERROR 410 to every open watch and ends it. */
  expireWatches(): void {
    this.compact();
    for (const w of [...this.watches]) {
      if (w.resource === "pods") this.expiredWatches++;
      this.send(w, { type: "ERROR", object: expiredStatus(Number(this.rv) - 1, this.rv) });
      this.endWatch(w);
    }
  }

  /** Writes a raw line (not necessarily a watch event) to every open watch. */
  injectWatchLine(text: string): void {
    for (const w of this.watches) w.res.write(`${text}\n`);
  }

  /**
   * A kubeconfig for this server (http, so insecure-skip-tls-verify, as the client library
   * requires for plain http), usable by the runtime and by kubectl (KUBECONFIG=path).
   */
  writeKubeconfig(path: string, options: { token?: string } = {}): void {
    const user = options.token === undefined ? "{}" : `\n    token: ${JSON.stringify(options.token)}`;
    writeFileSync(
      path,
      `apiVersion: v1
kind: Config
clusters:
- name: double
  cluster:
    server: ${this.url}
    insecure-skip-tls-verify: true
users:
- name: agent
  user: ${user}
contexts:
- name: double
  context:
    cluster: double
    user: agent
current-context: double
`,
    );
  }

  /** Holds watch events back (changes are "in flight") until resumeWatches(). */
  pauseWatches(): void {
    this.paused = true;
  }

  resumeWatches(): void {
    this.paused = false;
    for (const w of this.watches) {
      const held = w.held.splice(0);
      for (const line of held) w.res.write(line);
    }
  }

  /** Appends lines (written now) to a container's log and to its followers. */
  appendLog(namespace: string, pod: string, container: string, lines: string[]): void {
    const k = `${key(namespace, pod)}/${container}`;
    const stored = this.logs.get(k) ?? [];
    this.logs.set(k, stored);
    for (const text of lines) {
      const line = `${new Date().toISOString().replace(/\.(\d{3})Z$/, ".$1000000Z")} ${text}`;
      stored.push(line);
      for (const f of this.followers) if (f.key === k) f.res.write(`${f.timestamps ? line : text}\n`);
    }
  }

  /** Ends followed log streams of a pod (as the kubelet does when the container stops). */
  endLogFollowers(namespace: string, pod: string): void {
    for (const f of [...this.followers]) {
      if (f.key.startsWith(`${key(namespace, pod)}/`)) {
        f.res.end();
        this.followers.delete(f);
      }
    }
  }

  get logFollowers(): number {
    return this.followers.size;
  }

  /** Answers 403 (this Status) for paths matching `test`. */
  forbid(test: (path: string) => boolean, status: Json): void {
    this.forbidden.push({ test, status });
  }

  /** The API server goes away: listening stops, every connection is cut. */
  async down(): Promise<void> {
    for (const w of this.watches) clearTimeout(w.timer);
    this.watches.clear();
    this.followers.clear();
    const closed = new Promise<void>((r) => this.server.close(() => r()));
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
    await closed;
  }

  /** Back on the same port. */
  async up(): Promise<void> {
    this.server = this.createServer();
    await this.listen(this.port);
  }

  async close(): Promise<void> {
    if (this.server.listening) await this.down();
  }

  // --- serving ---

  private listen(port: number): Promise<void> {
    return new Promise((resolveListen, reject) => {
      this.server.once("error", reject);
      this.server.listen(port, "127.0.0.1", () => {
        this.server.off("error", reject);
        this.port = (this.server.address() as AddressInfo).port;
        resolveListen();
      });
    });
  }

  private createServer(): http.Server {
    const server = http.createServer((req, res) => {
      try {
        this.handle(req, res);
      } catch (e) {
        if (e instanceof KubeStatusError) this.json(res, e.status.code as number, e.status);
        else this.json(res, 500, statusBody(500, "InternalError", `double: ${errorMessage(e)}`));
      }
    });
    server.on("connection", (s) => {
      this.sockets.add(s);
      s.on("close", () => this.sockets.delete(s));
    });
    return server;
  }

  private json(res: http.ServerResponse, code: number, body: unknown): void {
    const text = JSON.stringify(body);
    res.writeHead(code, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(text) });
    res.end(text);
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const url = new URL(req.url ?? "/", "http://double");
    const path = url.pathname.replace(/\/+$/, "") || "/";
    this.requests.push({ method: req.method ?? "", path, query: url.searchParams, accept: req.headers.accept ?? "", authorization: req.headers.authorization ?? "" });
    if (this.token !== undefined && req.headers.authorization !== `Bearer ${this.token}`) return this.json(res, 401, UNAUTHORIZED_STATUS);
    if (req.method !== "GET") return this.json(res, 405, statusBody(405, "MethodNotAllowed", `the server does not allow this method on the requested resource`));
    const forbidden = this.forbidden.find((f) => f.test(path));
    if (forbidden) return this.json(res, 403, forbidden.status);

    const table = wantsTable(req.headers.accept);
    const q = url.searchParams;
    const watch = q.get("watch") === "true" || q.get("watch") === "1";
    let m: RegExpExecArray | null;

    switch (path) {
      case "/version":
        return this.json(res, 200, readJson("version.json"));
      case "/api":
        return this.json(res, 200, readJson("discovery/api.json"));
      case "/api/v1":
        return this.json(res, 200, readJson("discovery/api-v1.json"));
      case "/apis": {
        const groups = readJson("discovery/apis.json");
        if (!this.metricsServed) groups.groups = (groups.groups as Json[]).filter((g) => g.name !== "metrics.k8s.io");
        return this.json(res, 200, groups);
      }
      case "/apis/apps/v1":
        return this.json(res, 200, readJson("discovery/apis-apps-v1.json"));
      case "/apis/batch/v1":
        return this.json(res, 200, readJson("discovery/apis-batch-v1.json"));
      case "/apis/metrics.k8s.io/v1beta1":
        return this.metricsServed ? this.json(res, 200, readJson("discovery/apis-metrics.k8s.io-v1beta1.json")) : this.json(res, 404, NO_RESOURCE_STATUS);
      case "/apis/discovery.k8s.io/v1":
        return this.json(res, 200, readJson("discovery/apis-discovery.k8s.io-v1.json"));
      case "/api/v1/pods":
        return watch ? this.watchPods(res, q, undefined, table) : this.listPods(res, q, undefined, table);
      case "/api/v1/nodes":
        return this.collection(res, q, "nodes", undefined, watch);
      case "/api/v1/services":
        return this.collection(res, q, "services", undefined, watch);
      case "/apis/discovery.k8s.io/v1/endpointslices":
        return this.collection(res, q, "endpointslices", undefined, watch);
      case "/apis/apps/v1/deployments":
        return this.listOf(res, "deployments", "DeploymentList", "apps/v1", this.deployments, undefined, q, table);
      case "/apis/metrics.k8s.io/v1beta1/pods":
        return this.metrics(res, undefined, undefined);
      default:
        break;
    }
    if (path === "/api/v1/namespaces") return this.json(res, 200, { kind: "NamespaceList", apiVersion: "v1", metadata: { resourceVersion: String(this.rv) }, items: this.namespaces });
    if ((m = /^\/api\/v1\/namespaces\/([^/]+)$/.exec(path))) {
      const namespace = this.namespaces.find((n) => n.metadata.name === m![1]);
      if (!namespace) return this.json(res, 404, notFoundStatus("namespaces", m[1]!));
      return this.json(res, 200, { kind: "Namespace", apiVersion: "v1", ...namespace });
    }
    if ((m = /^\/api\/v1\/namespaces\/([^/]+)\/pods$/.exec(path))) {
      return watch ? this.watchPods(res, q, m[1], table) : this.listPods(res, q, m[1], table);
    }
    if ((m = /^\/api\/v1\/nodes\/([^/]+)$/.exec(path))) return this.getOne(res, "nodes", "", m[1]!);
    if ((m = /^\/(?:api\/v1|apis\/discovery\.k8s\.io\/v1)\/namespaces\/([^/]+)\/(services|endpointslices)(?:\/([^/]+))?$/.exec(path))) {
      const [, ns, resource, name] = m as unknown as [string, string, "services" | "endpointslices", string | undefined];
      if ((resource === "services") !== path.startsWith("/api/v1/")) return this.json(res, 404, NO_RESOURCE_STATUS);
      return name === undefined ? this.collection(res, q, resource, ns, watch) : this.getOne(res, resource, ns, name);
    }
    if ((m = /^\/api\/v1\/namespaces\/([^/]+)\/pods\/([^/]+)$/.exec(path))) {
      const pod = this.pods.get(key(m[1]!, m[2]!));
      if (!pod) return this.json(res, 404, notFoundStatus("pods", m[2]!));
      if (table) return this.json(res, 200, asTable("pods", [pod], pod.metadata.resourceVersion));
      return this.json(res, 200, { kind: "Pod", apiVersion: "v1", ...pod });
    }
    if ((m = /^\/api\/v1\/namespaces\/([^/]+)\/pods\/([^/]+)\/log$/.exec(path))) return this.podLog(req, res, m[1]!, m[2]!, q);
    if (/^\/api\/v1(\/namespaces\/[^/]+)?\/events$/.test(path)) {
      return this.json(res, 200, { kind: "EventList", apiVersion: "v1", metadata: { resourceVersion: String(this.rv) }, items: [] });
    }
    if ((m = /^\/apis\/apps\/v1\/namespaces\/([^/]+)\/(replicasets|deployments)(?:\/([^/]+))?$/.exec(path))) {
      const [, ns, resource, name] = m as unknown as [string, string, "replicasets" | "deployments", string | undefined];
      const items = resource === "replicasets" ? this.replicasets : this.deployments;
      const kind = resource === "replicasets" ? "ReplicaSet" : "Deployment";
      if (!name) return this.listOf(res, resource, `${kind}List`, "apps/v1", items, ns, q, table);
      const obj = items.find((o) => o.metadata.namespace === ns && o.metadata.name === name);
      if (!obj) return this.json(res, 404, notFoundStatus(resource, name, "apps"));
      if (table && resource === "deployments") return this.json(res, 200, asTable("deployments", [obj], obj.metadata.resourceVersion));
      return this.json(res, 200, { kind, apiVersion: "apps/v1", ...obj });
    }
    if ((m = /^\/apis\/metrics\.k8s\.io\/v1beta1\/namespaces\/([^/]+)\/pods(?:\/([^/]+))?$/.exec(path))) return this.metrics(res, m[1], m[2]);
    return this.json(res, 404, NO_RESOURCE_STATUS);
  }

  private matcher(resource: WatchedResource, namespace: string | undefined, q: URLSearchParams): (p: Json) => boolean {
    const fields = parseSelector(q.get("fieldSelector"), "field", WATCHED[resource].fields);
    const labels = parseSelector(q.get("labelSelector"), "label");
    return (p) => (namespace === undefined || p.metadata.namespace === namespace) && fields(p) && labels(p);
  }

  private sorted(resource: WatchedResource, matches: (p: Json) => boolean): Json[] {
    // etcd keys are /registry/<resource>/<namespace>/<name>: lists come in that order.
    return [...this.stores[resource].entries()]
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([, p]) => p)
      .filter(matches);
  }

  /** List or watch of nodes, services or endpointslices (JSON only: kubectl -o json/wide/name). */
  private collection(res: http.ServerResponse, q: URLSearchParams, resource: WatchedResource, namespace: string | undefined, watch: boolean): void {
    if (watch) this.watchOf(resource, res, q, namespace, false);
    else this.listCollection(resource, res, q, namespace, false);
  }

  private getOne(res: http.ServerResponse, resource: WatchedResource, namespace: string, name: string): void {
    const o = this.stores[resource].get(WATCHED[resource].clusterScoped ? name : key(namespace, name));
    const group = WATCHED[resource].apiVersion.includes("/") ? WATCHED[resource].apiVersion.split("/")[0] : undefined;
    if (!o) return this.json(res, 404, notFoundStatus(resource, name, group));
    this.json(res, 200, { kind: WATCHED[resource].kind, apiVersion: WATCHED[resource].apiVersion, ...o });
  }

  private listPods(res: http.ServerResponse, q: URLSearchParams, namespace: string | undefined, table: boolean): void {
    this.listCollection("pods", res, q, namespace, table);
  }

  private listCollection(resource: WatchedResource, res: http.ServerResponse, q: URLSearchParams, namespace: string | undefined, table: boolean): void {
    const items = this.sorted(resource, this.matcher(resource, namespace, q));
    const limit = Number(q.get("limit") ?? 0);
    let start = 0;
    let listRv = this.rv;
    const token = q.get("continue");
    if (token) {
      let parsed: { rv: number; start: number };
      try {
        parsed = JSON.parse(Buffer.from(token, "base64url").toString("utf8")) as { rv: number; start: number };
      } catch {
        return this.json(res, 400, badRequestStatus("continue key is not valid: illegal base64 data at input byte 0"));
      }
      if (parsed.rv < this.compactedRv) {
        return this.json(res, 410, statusBody(410, "Expired", "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list."));
      }
      start = parsed.start;
      listRv = parsed.rv;
    }
    const page = limit > 0 ? items.slice(start, start + limit) : items.slice(start);
    const metadata: Json = { resourceVersion: String(listRv) };
    const rest = items.length - start - page.length;
    if (limit > 0 && rest > 0) {
      metadata.continue = Buffer.from(JSON.stringify({ rv: listRv, start: start + page.length })).toString("base64url");
      metadata.remainingItemCount = rest;
    }
    if (table) return this.json(res, 200, { ...asTable("pods", page, String(listRv)), metadata });
    this.json(res, 200, { kind: `${WATCHED[resource].kind}List`, apiVersion: WATCHED[resource].apiVersion, metadata, items: page });
  }

  private listOf(res: http.ServerResponse, resource: "deployments" | "replicasets", kind: string, apiVersion: string, all: Json[], ns: string | undefined, q: URLSearchParams, table: boolean): void {
    const labels = parseSelector(q.get("labelSelector"), "label");
    const items = all.filter((o) => (ns === undefined || o.metadata.namespace === ns) && labels(o));
    if (table && resource === "deployments") return this.json(res, 200, asTable("deployments", items, String(this.rv)));
    this.json(res, 200, { kind, apiVersion, metadata: { resourceVersion: String(this.rv) }, items });
  }

  private watchPods(res: http.ServerResponse, q: URLSearchParams, namespace: string | undefined, table: boolean): void {
    this.watchOf("pods", res, q, namespace, table);
  }

  private watchOf(resource: WatchedResource, res: http.ServerResponse, q: URLSearchParams, namespace: string | undefined, table: boolean): void {
    const matches = this.matcher(resource, namespace, q);
    const rvParam = q.get("resourceVersion") ?? "";
    const from = rvParam === "" || rvParam === "0" ? undefined : Number(rvParam);
    if (from !== undefined && !Number.isInteger(from)) {
      return this.json(res, 400, statusBody(400, "BadRequest", `resourceVersion: Invalid value: "${rvParam}": strconv.ParseUint: parsing "${rvParam}": invalid syntax`));
    }
    const expired = from !== undefined && from < this.compactedRv;
    if (expired && this.expireWith === "http") {
      if (resource === "pods") this.expiredWatches++;
      return this.json(res, 410, expiredStatus(from, this.compactedRv));
    }
    res.writeHead(200, { "Content-Type": "application/json", "Cache-Control": "no-cache, private" });
    res.flushHeaders();
    const w: OpenWatch = { resource, res, matches, bookmarks: q.get("allowWatchBookmarks") === "true", table, held: [] };
    if (expired) {
      if (resource === "pods") this.expiredWatches++;
      this.send(w, { type: "ERROR", object: expiredStatus(from, this.compactedRv) });
      res.end();
      return;
    }
    if (from === undefined) {
      for (const p of this.sorted(resource, matches)) this.send(w, { type: "ADDED", object: this.wire(p, w) });
    } else {
      for (const e of this.history) if (e.resource === resource && e.rv > from && matches(e.object)) this.send(w, { type: e.type, object: this.wire(e.object, w) });
    }
    this.watches.add(w);
    const timeout = Number(q.get("timeoutSeconds") ?? 0);
    if (timeout > 0) w.timer = setTimeout(() => this.endWatch(w), timeout * 1000);
    res.on("close", () => {
      clearTimeout(w.timer);
      this.watches.delete(w);
    });
  }

  private wire(object: Json, w: OpenWatch): Json {
    if (w.table) return asTable("pods", [object], object.metadata.resourceVersion);
    return { kind: WATCHED[w.resource].kind, apiVersion: WATCHED[w.resource].apiVersion, ...clone(object) };
  }

  private send(w: OpenWatch, event: Json): void {
    const line = `${JSON.stringify(event)}\n`;
    if (this.paused) w.held.push(line);
    else w.res.write(line);
  }

  private endWatch(w: OpenWatch): void {
    clearTimeout(w.timer);
    this.watches.delete(w);
    const held = w.held.splice(0);
    for (const line of held) w.res.write(line);
    w.res.end();
  }

  private record(resource: WatchedResource, type: HistoryEntry["type"], changed: Json): void {
    const object = clone(changed);
    this.history.push({ resource, rv: this.rv, type, object });
    for (const w of this.watches) if (w.resource === resource && w.matches(object)) this.send(w, { type, object: this.wire(object, w) });
  }

  private podLog(req: http.IncomingMessage, res: http.ServerResponse, ns: string, name: string, q: URLSearchParams): void {
    const pod = this.pods.get(key(ns, name));
    if (!pod) return this.json(res, 404, notFoundStatus("pods", name));
    const names = (pod.spec.containers as Json[]).map((c) => c.name as string);
    let container = q.get("container") ?? "";
    if (container === "") {
      if (names.length !== 1) return this.json(res, 400, badRequestStatus(`a container name must be specified for pod ${name}, choose one of: [${names.join(" ")}]`));
      container = names[0]!;
    } else if (!names.includes(container)) {
      return this.json(res, 400, badRequestStatus(`container ${container} is not valid for pod ${name}`));
    }
    const timestamps = q.get("timestamps") === "true";
    const follow = q.get("follow") === "true";
    const tail = q.has("tailLines") ? Number(q.get("tailLines")) : -1;
    const k = `${key(ns, name)}/${container}`;
    let lines = this.logs.get(k) ?? [];
    if (tail >= 0) lines = tail === 0 ? [] : lines.slice(-tail);
    const text = lines.map((l) => `${timestamps ? l : l.slice(l.indexOf(" ") + 1)}\n`).join("");
    res.writeHead(200, { "Content-Type": "text/plain", "Cache-Control": "no-cache, private" });
    res.write(text);
    if (!follow) {
      res.end();
      return;
    }
    const f: LogFollower = { key: k, res, timestamps };
    this.followers.add(f);
    req.on("close", () => this.followers.delete(f));
  }

  private metrics(res: http.ServerResponse, ns: string | undefined, name: string | undefined): void {
    if (!this.metricsServed) return this.json(res, 404, NO_RESOURCE_STATUS);
    const items = (this.podMetrics.items as Json[]).filter((i) => (ns === undefined || i.metadata.namespace === ns) && (name === undefined || i.metadata.name === name));
    if (name !== undefined) {
      const item = items[0];
      if (!item) return this.json(res, 404, notFoundStatus("pods", name, "metrics.k8s.io"));
      return this.json(res, 200, { kind: "PodMetrics", apiVersion: "metrics.k8s.io/v1beta1", ...item });
    }
    this.json(res, 200, { ...this.podMetrics, items });
  }
}
