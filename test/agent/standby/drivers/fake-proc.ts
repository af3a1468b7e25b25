import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { tempDir } from "../../../helpers/temp-dir.js";

/** include/linux/sched.h PF_KTHREAD, with the flags a real kworker has besides it. */
export const KTHREAD_FLAGS = 0x0020_8040;

export interface FakeProcess {
  ppid: number;
  pgrp?: number;
  flags?: number;
  start?: bigint;
  uid?: number;
  /** /proc/<pid>/cgroup content; default a v2-only "0::/". */
  cgroup?: string;
}

/** A fake /proc with stat, status and cgroup per process (the fields pid-ownership.ts reads). */
export function fakeProc(processes: Record<number, FakeProcess>): { root: string; remove(): void } {
  const dir = tempDir("fake-proc");
  for (const [pidText, p] of Object.entries(processes)) {
    const pid = Number(pidText);
    const d = join(dir.path, pidText);
    mkdirSync(d);
    // Fields 3..24: state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime
    // stime cutime cstime priority nice threads itrealvalue starttime vsize rss.
    writeFileSync(join(d, "stat"), `${pid} (p ${pid}) S ${p.ppid} ${p.pgrp ?? pid} ${p.pgrp ?? pid} 0 -1 ${p.flags ?? 0x0040_0100} 0 0 0 0 1 1 0 0 20 0 1 0 ${p.start ?? 1000n} 1000 10\n`);
    const uid = p.uid ?? 0;
    writeFileSync(join(d, "status"), `Name:\tp\nPid:\t${pid}\nPPid:\t${p.ppid}\nUid:\t${uid}\t${uid}\t${uid}\t${uid}\nGid:\t0\t0\t0\t0\n`);
    writeFileSync(join(d, "cgroup"), p.cgroup ?? "0::/\n");
  }
  return { root: dir.path, remove: dir.remove };
}
