import { readdirSync, readFileSync } from "node:fs";
import { basename } from "node:path";

/** A hypervisor process found in /proc, with what its command line says about the guest. */
export interface DiscoveredHypervisor {
  pid: number;
  hypervisor: "cloud-hypervisor" | "firecracker" | "qemu";
  /** Stable id derived from the hypervisor and what names the guest (or the pid). */
  id: string;
  name: string;
  vcpus?: number;
  memoryBytes?: bigint;
  tapDevice?: string;
}

/**
 * Scans /proc for cloud-hypervisor, firecracker and qemu-system-* processes (inventory.md
 * "Discovered"). Only what the command line states is filled in; nothing is guessed.
 */
export function discoverHypervisors(procRoot = "/proc"): DiscoveredHypervisor[] {
  const found: DiscoveredHypervisor[] = [];
  let entries: string[];
  try {
    entries = readdirSync(procRoot);
  } catch {
    return found;
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    let argv: string[];
    try {
      argv = readFileSync(`${procRoot}/${entry}/cmdline`, "latin1").split("\0").filter((a) => a !== "");
    } catch {
      continue; // exited while we looked
    }
    const parsed = parseHypervisorCommandLine(Number(entry), argv);
    if (parsed) found.push(parsed);
  }
  return found.sort((a, b) => a.pid - b.pid);
}

export function parseHypervisorCommandLine(pid: number, argv: string[]): DiscoveredHypervisor | undefined {
  const exe = basename(argv[0] ?? "");
  const value = (flag: string) => {
    const i = argv.indexOf(flag);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const sanitize = (s: string) => s.replace(/[^A-Za-z0-9._-]/g, "-").replace(/^[^A-Za-z0-9]+/, "").slice(0, 100);
  if (exe === "cloud-hypervisor") {
    const name = sanitize(basename(value("--api-socket")?.replace(/^path=/, "").replace(/\.sock$/, "") ?? "")) || `pid${pid}`;
    const cpus = /(?:^|,)boot=(\d+)/.exec(value("--cpus") ?? "")?.[1];
    const mem = /(?:^|,)size=(\d+[KMGT]?)/.exec(value("--memory") ?? "")?.[1];
    const tap = /(?:^|,)tap=([^,]+)/.exec(value("--net") ?? "")?.[1];
    return { pid, hypervisor: "cloud-hypervisor", id: `ch-${name}`, name, vcpus: num(cpus), memoryBytes: sizeBytes(mem, "M"), tapDevice: tap };
  }
  if (exe === "firecracker") {
    const name = sanitize(value("--id") ?? "") || `pid${pid}`;
    return { pid, hypervisor: "firecracker", id: `fc-${name}`, name };
  }
  if (exe.startsWith("qemu-system-")) {
    const nameArg = value("-name") ?? "";
    const name = sanitize(/(?:^|,)guest=([^,]+)/.exec(nameArg)?.[1] ?? nameArg.split(",")[0] ?? "") || `pid${pid}`;
    const smp = value("-smp") ?? "";
    const cpus = /^(\d+)/.exec(smp)?.[1] ?? /(?:^|,)cpus=(\d+)/.exec(smp)?.[1];
    const m = value("-m") ?? "";
    const mem = /^(\d+[KMGT]?)/.exec(m)?.[1] ?? /(?:^|,)size=(\d+[KMGT]?)/.exec(m)?.[1];
    const netdev = argv.find((a, i) => argv[i - 1] === "-netdev" && a.startsWith("tap"));
    const tap = /(?:^|,)ifname=([^,]+)/.exec(netdev ?? "")?.[1];
    return { pid, hypervisor: "qemu", id: `qemu-${name}`, name, vcpus: num(cpus), memoryBytes: sizeBytes(mem, "M"), tapDevice: tap };
  }
  return undefined;
}

function num(s: string | undefined): number | undefined {
  return s === undefined ? undefined : Number(s);
}

/** "1024M", "2G", "512" (in `defaultUnit`) → bytes. */
function sizeBytes(s: string | undefined, defaultUnit: string): bigint | undefined {
  if (!s) return undefined;
  const m = /^(\d+)([KMGT]?)$/.exec(s);
  if (!m) return undefined;
  const unit = m[2] || defaultUnit;
  const shift = { K: 10n, M: 20n, G: 30n, T: 40n }[unit as "K" | "M" | "G" | "T"] ?? 0n;
  return BigInt(m[1] ?? "0") << shift;
}
