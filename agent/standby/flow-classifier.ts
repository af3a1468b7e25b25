import { cidrContains, type ParsedCidr } from "./standby-policy.js";

/** One TCP flow as conntrack reports it, in its original direction (client → server). */
export interface Flow {
  srcIp: string;
  srcPort: number;
  dstIp: string;
  dstPort: number;
  /** Numeric TCP conntrack state (TCP_CONNTRACK_*): 0 NONE, 1 SYN_SENT, ..., 7 TIME_WAIT, 8 CLOSE, ... */
  tcpState: number;
}

/**
 * Only NONE (0), TIME_WAIT (7) and CLOSE (8) are inactive; every other number is active,
 * including SYN_SENT (1: a woken guest may take seconds to answer) and any state a newer kernel
 * adds. By number, not by name: names differ between sources (standby.md "Classifier").
 */
export function isActiveTcpState(state: number): boolean {
  return state !== 0 && state !== 7 && state !== 8;
}

export interface ClassifierTarget {
  ip: string;
  ignoreDestinationPorts: ReadonlySet<number>;
  ignoreSourceCidrs: readonly ParsedCidr[];
}

/**
 * A flow counts as active inbound for an instance when its state is active, the instance is its
 * original destination (the instance is the server; flows it opens never count), the
 * destination port is not ignored and the source is not in an ignored network.
 */
export function isActiveInbound(flow: Flow, target: ClassifierTarget): boolean {
  return (
    isActiveTcpState(flow.tcpState) &&
    flow.dstIp === target.ip &&
    !target.ignoreDestinationPorts.has(flow.dstPort) &&
    !target.ignoreSourceCidrs.some((c) => cidrContains(c, flow.srcIp))
  );
}
