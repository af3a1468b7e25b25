import { toPod, type Pod } from "./kube-objects.js";
import { KubeListWatch, type ChangeSource, type ListWatchHandler, type ListWatchOptions, type ObjectChange } from "./kube-list-watch.js";
import { podKey } from "./pod-to-container.js";

export type { ChangeSource };
export type PodChange = ObjectChange<Pod>;
export type PodListWatchHandler = ListWatchHandler<Pod>;

export interface PodListWatchOptions extends Omit<ListWatchOptions<Pod>, "resource"> {
  /** Only this namespace (else all). */
  namespace?: string;
  /** Only pods scheduled to this node. */
  nodeName?: string;
}

/** The pods in scope (a namespace, a node, or all), kept by the list+watch of kube-list-watch.ts. */
export class PodListWatch extends KubeListWatch<Pod> {
  constructor(options: PodListWatchOptions) {
    const { namespace, nodeName, ...rest } = options;
    super({
      ...rest,
      resource: {
        kind: "pod",
        path: namespace ? `/api/v1/namespaces/${encodeURIComponent(namespace)}/pods` : "/api/v1/pods",
        selector: nodeName ? { fieldSelector: `spec.nodeName=${nodeName}` } : undefined,
        parse: toPod,
        key: podKey,
      },
    });
  }
}
