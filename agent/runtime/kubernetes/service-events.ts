import { create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { RuntimeEventSchema, type RuntimeEvent } from "../../../gen/fleetlet/agent/v1/runtime_pb.js";
import { parseRfc3339Nano } from "../log-line-assembler.js";
import type { EndpointSlice, Service } from "./kube-objects.js";
import { RUNTIME_NAME } from "./pod-to-container.js";

/** Backends of a service, over all its EndpointSlices. */
export interface EndpointCounts {
  ready: number;
  notReady: number;
}

/**
 * Counts the endpoints of a service's slices. A backend in several slices (a dual-stack
 * service has an IPv4 and an IPv6 slice of the same pods) is one endpoint, ready when any of
 * its entries is.
 */
export function countEndpoints(slices: Iterable<EndpointSlice>): EndpointCounts {
  const ready = new Map<string, boolean>();
  for (const s of slices) for (const e of s.endpoints) ready.set(e.identity, (ready.get(e.identity) ?? false) || e.ready);
  let n = 0;
  for (const r of ready.values()) if (r) n++;
  return { ready: n, notReady: ready.size - n };
}

/** What a service event reports, as attribute strings: a change of any of them is an "update". */
export interface ServiceView {
  type: string;
  cluster_ip: string;
  /** "http:80/TCP,443/TCP". */
  ports: string;
  /** "app=web,tier=frontend". */
  selector: string;
  labels: string;
  load_balancer: string;
  /** Unset while the endpoint slices cannot be read (the count is unknown, not 0). */
  endpoints?: string;
  endpoints_not_ready?: string;
}

const pairs = (m: Record<string, string>) =>
  Object.entries(m)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([k, v]) => `${k}=${v}`)
    .join(",");

export function serviceView(service: Service, counts: EndpointCounts | undefined): ServiceView {
  return {
    type: service.type,
    cluster_ip: service.clusterIP,
    ports: service.ports.map((p) => `${p.name ? `${p.name}:` : ""}${p.port}/${p.protocol}`).join(","),
    selector: pairs(service.selector),
    labels: pairs(service.metadata.labels),
    load_balancer: service.loadBalancerIngress.join(","),
    ...(counts ? { endpoints: String(counts.ready), endpoints_not_ready: String(counts.notReady) } : {}),
  };
}

/** The view's fields that differ (in the `changed` attribute of an "update"). */
export function changedFields(prev: ServiceView, next: ServiceView): string[] {
  const keys = new Set([...Object.keys(prev), ...Object.keys(next)] as (keyof ServiceView)[]);
  // endpoints_not_ready moves with endpoints; one name for both keeps `changed` short.
  return [...keys].filter((k) => prev[k] !== next[k]).map((k) => (k === "endpoints_not_ready" ? "endpoints" : k)).filter((k, i, all) => all.indexOf(k) === i);
}

/**
 * A RuntimeEvent (resource_type "service") for `service`: "create" (at its creationTimestamp),
 * "update" (`changed` lists what; `at` is the endpoint slices' last-change-trigger-time when
 * the endpoints changed, else when the agent saw it: the API keeps no time for a spec edit) or
 * "destroy" (when the agent saw it).
 */
export function serviceEvent(service: Service, view: ServiceView, action: "create" | "update" | "destroy", synthetic: boolean, options: { at?: string; changed?: string[] } = {}): RuntimeEvent {
  const at = action === "create" ? service.metadata.creationTimestamp : options.at;
  const { labels: _labels, ...attributes } = view;
  return create(RuntimeEventSchema, {
    action,
    runtime: RUNTIME_NAME,
    externalId: `${service.metadata.namespace}/${service.metadata.name}`,
    name: service.metadata.name,
    resourceType: "service",
    timestamp: (at !== undefined ? parseRfc3339Nano(at) : undefined) ?? timestampNow(),
    labels: { ...service.metadata.labels },
    attributes: {
      namespace: service.metadata.namespace,
      ...Object.fromEntries(Object.entries(attributes).filter(([, v]) => v !== undefined && v !== "")),
      ...(options.changed && options.changed.length > 0 ? { changed: options.changed.join(",") } : {}),
    },
    synthetic,
  });
}

/** EndpointSlice annotation: when the change that last updated the slice was triggered. */
export const LAST_CHANGE_TRIGGER_TIME = "endpoints.kubernetes.io/last-change-trigger-time";
