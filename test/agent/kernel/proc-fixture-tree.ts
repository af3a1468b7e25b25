import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { tempDir } from "../../helpers/temp-dir.js";
import type { KernelRoots } from "../../../agent/kernel/instance-probe.js";

/** A fake /proc and /sys/class/net to point the readers at (metrics.md: injectable roots). */
export function fixtureTree(): KernelRoots & {
  setProcess(pid: number, stat: string, statm?: string): void;
  removeProcess(pid: number): void;
  setInterface(name: string, rx?: string, tx?: string): void;
  remove(): void;
} {
  const dir = tempDir("kernel-fixture");
  const proc = join(dir.path, "proc");
  const net = join(dir.path, "net");
  mkdirSync(proc);
  mkdirSync(net);
  return {
    proc,
    sysClassNet: net,
    setProcess(pid, stat, statm) {
      mkdirSync(join(proc, String(pid)), { recursive: true });
      writeFileSync(join(proc, String(pid), "stat"), stat);
      if (statm !== undefined) writeFileSync(join(proc, String(pid), "statm"), statm);
    },
    removeProcess(pid) {
      rmSync(join(proc, String(pid)), { recursive: true, force: true });
    },
    setInterface(name, rx, tx) {
      const d = join(net, name, "statistics");
      rmSync(join(net, name), { recursive: true, force: true });
      mkdirSync(d, { recursive: true });
      if (rx !== undefined) writeFileSync(join(d, "rx_bytes"), rx);
      if (tx !== undefined) writeFileSync(join(d, "tx_bytes"), tx);
    },
    remove: dir.remove,
  };
}

/** A stat line with the given comm and utime/stime/starttime, the rest plausible. */
export function statLine(comm: string, utime: number, stime: number, starttime = 4242, pid = 42): string {
  // fields 3..22: state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime cutime cstime priority nice threads itrealvalue starttime
  const after = ["R", 1, 42, 42, 0, -1, 4194560, 100, 0, 0, 0, utime, stime, 0, 0, 20, 0, 1, 0, starttime, 1000, 250];
  return `${pid} (${comm}) ${after.join(" ")} 0 0 0 0\n`;
}

