import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";

/**
 * The host-side end of a container's veth: the interface in the agent's network namespace
 * whose ifindex is the `iflink` of the container's eth0. Read through the container's own
 * /sys (/proc/<pid>/root/sys/class/net, which engines mount for the container's namespace),
 * so no namespace is entered. "" when there is none (no network, host network, macvlan, the
 * container gone): its instance then has no interface counters.
 */
export function hostInterfaceOf(pid: number, roots: { proc: string; sys: string } = { proc: "/proc", sys: "/sys" }): string {
  let iflink: number;
  try {
    const inner = join(roots.proc, String(pid), "root/sys/class/net");
    const eth = readdirSync(inner).filter((n) => n !== "lo").sort()[0];
    if (!eth) return "";
    iflink = Number(readFileSync(join(inner, eth, "iflink"), "utf8").trim());
    const own = Number(readFileSync(join(inner, eth, "ifindex"), "utf8").trim());
    if (!Number.isInteger(iflink) || iflink <= 0 || iflink === own) return ""; // not a veth
  } catch {
    return "";
  }
  try {
    const net = join(roots.sys, "class/net");
    for (const name of readdirSync(net)) {
      try {
        if (Number(readFileSync(join(net, name, "ifindex"), "utf8").trim()) === iflink) return name;
      } catch {
        // interface went away while scanning
      }
    }
  } catch {
    // no sysfs
  }
  return "";
}
