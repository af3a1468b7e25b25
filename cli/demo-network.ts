import { execFileSync } from "node:child_process";
import net from "node:net";

/**
 * Optional network for the demo instances of `fleetlet up --demo-network` (root only): each demo
 * runs in a network namespace of its own behind a veth pair, as a VM behind its TAP would, so
 * the NET columns show real counters. Only namespaces and interfaces created here are touched,
 * each named fleetlet-demo<N> / fl-demo<N>, and traffic goes only to their addresses.
 */
export interface DemoNet {
  namespace: string;
  hostInterface: string;
  guestIp: string;
}

const BASE = "10.254";

export function demoNet(index: number): DemoNet {
  return { namespace: `fleetlet-demo${index}`, hostInterface: `fl-demo${index}`, guestIp: `${BASE}.${index}.2` };
}

/** Creates the namespace and veth pair; removes a leftover of an earlier run first. */
export function createDemoNet(index: number): DemoNet {
  const n = demoNet(index);
  removeDemoNet(n);
  const ip = (...args: string[]) => execFileSync("ip", args, { stdio: ["ignore", "ignore", "pipe"] });
  ip("netns", "add", n.namespace);
  ip("link", "add", n.hostInterface, "type", "veth", "peer", "name", `${n.hostInterface}g`);
  ip("link", "set", `${n.hostInterface}g`, "netns", n.namespace);
  ip("addr", "add", `${BASE}.${index}.1/30`, "dev", n.hostInterface);
  ip("link", "set", n.hostInterface, "up");
  ip("-n", n.namespace, "addr", "add", `${n.guestIp}/30`, "dev", `${n.hostInterface}g`);
  ip("-n", n.namespace, "link", "set", `${n.hostInterface}g`, "up");
  ip("-n", n.namespace, "link", "set", "lo", "up");
  return n;
}

export function removeDemoNet(n: DemoNet): void {
  for (const args of [["link", "del", n.hostInterface], ["netns", "del", n.namespace]]) {
    try {
      execFileSync("ip", args, { stdio: "ignore" });
    } catch {
      // not there: nothing to remove
    }
  }
}

/** Sends `bytes` to the demo's echo server and reads them back: traffic both ways. */
export function pokeDemo(n: DemoNet, bytes: number): Promise<void> {
  return new Promise((resolve) => {
    const sock = net.connect({ host: n.guestIp, port: 7000, timeout: 2000 });
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
