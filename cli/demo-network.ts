import { execFileSync } from "node:child_process";
import net from "node:net";

/**
 * The network of `fleetlet up --demo-network` (root only), built entirely in namespaces it
 * creates so the machine's own interfaces, routes and firewall are never touched:
 *
 * - a "host" namespace `fl-demo-host-<pid>` where the demo's agent runs. It holds one veth end
 *   per demo (`fl-demo<N>`, the demo's "TAP") and, unless told not to, one nftables table
 *   (`inet fleetlet-demo`) with a rule that uses conntrack: the kernel tracks flows in a
 *   namespace only once a rule there uses conntrack, and standby needs them tracked to see
 *   connections and to wake a demo on a new one;
 * - one namespace per demo, `fl-demo<N>-<pid>`, holding the other veth end and the demo's echo
 *   server, as a VM sits behind its TAP.
 *
 * Names carry the pid of the `up` that made them, so two runs never remove each other's.
 */
export interface DemoNet {
  /** The demo's own namespace. */
  namespace: string;
  /** The veth end in the host namespace: what the agent reads counters of (`tap_device`). */
  hostInterface: string;
  hostIp: string;
  guestIp: string;
}

export interface DemoHost {
  namespace: string;
  nets: DemoNet[];
  /** How conntrack was turned on in the host namespace, or "none" (told not to, or it failed). */
  conntrackRule: "nftables" | "iptables" | "none";
  /** Why there is no rule when one was asked for. */
  conntrackRuleError?: string;
}

/** Addresses exist only inside the demo's namespaces: 10.254.<N>.0/30 per demo. */
const BASE = "10.254";
export const DEMO_ECHO_PORT = 7000;
const HOST_PREFIX = "fl-demo-host-";
const NFT_TABLE = "fleetlet-demo";

export function demoHostName(pid: number): string {
  return `${HOST_PREFIX}${pid}`;
}

export function demoNet(index: number, pid: number): DemoNet {
  return { namespace: `fl-demo${index}-${pid}`, hostInterface: `fl-demo${index}`, hostIp: `${BASE}.${index}.1`, guestIp: `${BASE}.${index}.2` };
}

const ip = (...args: string[]) => execFileSync("ip", args, { stdio: ["ignore", "ignore", "pipe"] });

/**
 * Creates the host namespace (loopback up, the conntrack rule unless `conntrackRule` is false)
 * and `count` demo namespaces wired to it. On failure, removes what it made and throws.
 */
export function createDemoHost(count: number, { conntrackRule = true, pid = process.pid } = {}): DemoHost {
  const host: DemoHost = { namespace: demoHostName(pid), nets: [], conntrackRule: "none" };
  try {
    ip("netns", "add", host.namespace);
    ip("-n", host.namespace, "link", "set", "lo", "up");
    for (let index = 0; index < count; index++) {
      const n = demoNet(index, pid);
      ip("netns", "add", n.namespace);
      host.nets.push(n);
      const guestIf = `${n.hostInterface}g`;
      ip("-n", host.namespace, "link", "add", n.hostInterface, "type", "veth", "peer", "name", guestIf, "netns", n.namespace);
      ip("-n", host.namespace, "addr", "add", `${n.hostIp}/30`, "dev", n.hostInterface);
      ip("-n", host.namespace, "link", "set", n.hostInterface, "up");
      ip("-n", n.namespace, "addr", "add", `${n.guestIp}/30`, "dev", guestIf);
      ip("-n", n.namespace, "link", "set", guestIf, "up");
      ip("-n", n.namespace, "link", "set", "lo", "up");
    }
  } catch (e) {
    removeDemoHost(host);
    throw new Error(`--demo-network: could not create the demo's namespaces: ${stderrOf(e)}`);
  }
  if (conntrackRule) enableConntrack(host);
  return host;
}

/**
 * One accepting rule that uses conntrack, in the host namespace only. nftables first; the
 * iptables command (often iptables-nft) when nft is not installed. Failing both is not fatal:
 * the demo runs and standby shows what a host without tracking does.
 */
function enableConntrack(host: DemoHost): void {
  const nft = `table inet ${NFT_TABLE} {
  chain input {
    type filter hook input priority 0; policy accept;
    ct state established,related accept
  }
}
`;
  const errors: string[] = [];
  try {
    execFileSync("ip", ["netns", "exec", host.namespace, "nft", "-f", "-"], { input: nft, stdio: ["pipe", "ignore", "pipe"] });
    host.conntrackRule = "nftables";
    return;
  } catch (e) {
    errors.push(`nft: ${stderrOf(e)}`);
  }
  try {
    ip("netns", "exec", host.namespace, "iptables", "-A", "INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT");
    host.conntrackRule = "iptables";
  } catch (e) {
    errors.push(`iptables: ${stderrOf(e)}`);
    host.conntrackRuleError = errors.join("; ");
  }
}

/** Removes the veths and namespaces of `host` (deleting a namespace also drops its rule). */
export function removeDemoHost(host: DemoHost): void {
  for (const n of host.nets) quietly("-n", host.namespace, "link", "del", n.hostInterface);
  for (const n of host.nets) quietly("netns", "del", n.namespace);
  quietly("netns", "del", host.namespace);
}

/**
 * Names left by an earlier `up --demo-network` that was killed before it could clean up: the
 * pid in the name is no longer running. Only the names are removed (processes still inside a
 * namespace, e.g. an agent left running, keep it alive until they exit).
 */
export function removeStaleDemoNamespaces(): string[] {
  let list = "";
  try {
    list = execFileSync("ip", ["netns", "list"], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
  } catch {
    return [];
  }
  const removed: string[] = [];
  for (const line of list.split("\n")) {
    const name = line.split(" ")[0] ?? "";
    const m = /^fl-demo(?:-host-|\d+-)(\d+)$/.exec(name);
    if (!m || pidAlive(Number(m[1]))) continue;
    // The veths go with the host namespace when nothing runs in it any more.
    quietly("netns", "del", name);
    removed.push(name);
  }
  return removed;
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

function quietly(...args: string[]): void {
  try {
    execFileSync("ip", args, { stdio: "ignore" });
  } catch {
    // not there: nothing to remove
  }
}

function stderrOf(e: unknown): string {
  const stderr = (e as { stderr?: Buffer }).stderr?.toString().trim();
  return stderr || (e as Error).message;
}

/** Sends `bytes` to the demo's echo server and reads them back: traffic both ways. */
export function pokeDemo(guestIp: string, bytes: number): Promise<void> {
  return new Promise((resolve) => {
    const sock = net.connect({ host: guestIp, port: DEMO_ECHO_PORT, timeout: 2000 });
    let got = 0;
    sock.on("data", (d) => {
      got += d.length;
      if (got >= bytes) sock.end();
    });
    sock.on("timeout", () => sock.destroy());
    sock.on("error", () => resolve());
    sock.on("close", () => resolve());
    sock.write(Buffer.alloc(bytes, 0x2e));
  });
}
