import { KubeConfig } from "@kubernetes/client-node";

export interface KubeConfigSource {
  /** A kubeconfig file. */
  kubeconfig?: string;
  /** The pod's service account (KUBERNETES_SERVICE_HOST/PORT and the mounted token and CA). */
  inCluster?: boolean;
  /** A context of the kubeconfig other than its current one. */
  context?: string;
}

/**
 * The client library's configuration from a file, the in-cluster service account, or its
 * defaults (KUBECONFIG, ~/.kube/config, then in-cluster). Throws when nothing usable is found:
 * the library would otherwise fall back to http://localhost:8080 and fail later, less clearly.
 */
export function loadKubeConfig(source: KubeConfigSource): KubeConfig {
  const kc = new KubeConfig();
  if (source.kubeconfig) kc.loadFromFile(source.kubeconfig);
  else if (source.inCluster) kc.loadFromCluster();
  else kc.loadFromDefault();
  if (source.context) kc.setCurrentContext(source.context);
  const cluster = kc.getCurrentCluster();
  if (!cluster?.server) throw new Error(`no API server in ${source.kubeconfig ?? (source.inCluster ? "the in-cluster configuration" : "the default kubeconfig")}`);
  if (source.inCluster && !process.env.KUBERNETES_SERVICE_HOST) throw new Error("not running in a cluster (KUBERNETES_SERVICE_HOST is not set)");
  return kc;
}

/** Where the API server is, for RuntimeInfo.endpoint before the configuration could be read. */
export function describeSource(source: KubeConfigSource): string {
  if (source.kubeconfig) return `kubeconfig ${source.kubeconfig}`;
  return source.inCluster ? "in-cluster" : "default kubeconfig";
}
