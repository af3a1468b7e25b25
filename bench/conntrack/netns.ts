/**
 * Network namespaces for the benchmarks that need the kernel's conntrack (bench/conntrack,
 * bench/wake). Only names this module generates are created, and each one is deleted at
 * cleanup (also on failure and SIGINT/SIGTERM, through bench/common's cleanup list), after the
 * processes started in it have been stopped by pid (cleanups run in reverse order).
 */
import { execFileSync, type SpawnOptions } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { onCleanup, startChild, type Child } from "../common/processes.js";
import { Malfunction, printFigures } from "../common/report.js";

/** A short random hex tag for unique namespace, interface and cgroup names. */
export const uniqueTag = (bytes = 3): string => randomBytes(bytes).toString("hex");

/** Runs a command, throwing with its stderr (not inherited: the figures stay clean). */
export function sh(command: string, ...args: string[]): string {
  try {
    return execFileSync(command, args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    throw new Error(`${command} ${args.join(" ")}: ${(err.stderr ?? "").trim() || err.message}`);
  }
}

/** Like sh, for cleanup: a thing already gone is not an error. */
export function shQuiet(command: string, ...args: string[]): void {
  try {
    execFileSync(command, args, { stdio: "ignore" });
  } catch {
    // already gone
  }
}

/**
 * Why the benchmark cannot run here (not root, a tool missing), or undefined. The caller prints
 * it as SKIPPED and exits 0; in CI (CI=true) a skip is a setup failure (as in test/helpers/root.ts).
 */
export function missingPrerequisite(tools: readonly (readonly string[])[]): string | undefined {
  if (process.getuid?.() !== 0) return "needs root (network namespaces, iptables, conntrack)";
  for (const argv of tools) {
    try {
      execFileSync(argv[0]!, argv.slice(1), { stdio: "ignore" });
    } catch {
      return `needs ${argv[0]} (apt-get install -y iproute2 iptables conntrack)`;
    }
  }
  return undefined;
}

export function skipBench(title: string, reason: string): void {
  if (process.env.CI === "true") throw new Malfunction(`cannot run in CI: ${reason}`);
  printFigures(title, [["SKIPPED", reason]]);
}

/** `ip netns add NAME`, loopback up; deleted at cleanup. */
export function createNetns(name: string): void {
  sh("ip", "netns", "add", name);
  onCleanup(() => shQuiet("ip", "netns", "del", name));
  sh("ip", "-n", name, "link", "set", "lo", "up");
}

/**
 * Makes the kernel track flows in the namespace (a rule that uses conntrack, testing.md) and
 * lets TIME_WAIT entries expire after 1 s.
 */
export function enableConntrack(ns: string): void {
  sh("ip", "netns", "exec", ns, "iptables", "-A", "INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT");
  sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_timeout_time_wait=1");
}

/**
 * A process in the namespace: `ip netns exec` execs the command, so the pid is the command's
 * own, and stopping it by pid (at cleanup at the latest) stops the command.
 */
export function startInNs(ns: string, command: string, args: readonly string[], options: SpawnOptions = {}): Child {
  return startChild("ip", ["netns", "exec", ns, command, ...args], options);
}

/**
 * Like startInNs, but entering only the network namespace (`nsenter --net`), so the process
 * keeps the host's mounts: `ip netns exec` also remounts /sys for the namespace, and that fresh
 * sysfs has nothing under /sys/fs/cgroup (an agent started that way cannot use the cgroup
 * driver). nsenter execs the command: the pid is the command's own.
 */
export function startInNetNsOnly(ns: string, command: string, args: readonly string[], options: SpawnOptions = {}): Child {
  return startChild("nsenter", [`--net=/run/netns/${ns}`, "--", command, ...args], options);
}

export function hasNsenter(): boolean {
  try {
    execFileSync("nsenter", ["--version"], { stdio: "ignore" });
    return existsSync("/run/netns");
  } catch {
    return false;
  }
}
