import { KeptFdFile, readBuffer } from "./kept-fd-file.js";
import {
  parseCounter,
  parseCounterBytes,
  parseProcStat,
  parseProcStatBytes,
  parseProcStatm,
  parseProcStatmBytes,
  type ProcStat,
  type ProcStatm,
} from "../../lib/proc-stat-parser.js";

// Parse straight from the shared read buffer; the string path only for oversized content.
function readStat(f: KeptFdFile): ProcStat {
  const n = f.readInto();
  return n >= 0 ? parseProcStatBytes(readBuffer, n) : parseProcStat(f.read());
}
function readStatm(f: KeptFdFile): ProcStatm {
  const n = f.readInto();
  return n >= 0 ? parseProcStatmBytes(readBuffer, n) : parseProcStatm(f.read());
}
function readCounter(f: KeptFdFile, what: string): bigint {
  const n = f.readInto();
  return n >= 0 ? parseCounterBytes(readBuffer, n, what) : parseCounter(f.read(), what);
}

/** Where the probe reads; tests point these at fixture trees. */
export interface KernelRoots {
  /** Default /proc. */
  proc: string;
  /** Default /sys/class/net. */
  sysClassNet: string;
}

export const DEFAULT_ROOTS: KernelRoots = { proc: "/proc", sysClassNet: "/sys/class/net" };

/** One raw reading of an instance's process and host-side interface. Units as the kernel gives them. */
export interface ProbeReading {
  cpu?: { utimeTicks: bigint; stimeTicks: bigint; startTimeTicks: bigint };
  memory?: { sizePages: bigint; residentPages: bigint };
  /** Host view: rx = bytes the host received from the instance. */
  interface?: { rxBytes: bigint; txBytes: bigint };
  /** Why a part is missing: "cpu: ...", "memory: ...", "network: ...". */
  unavailable: string[];
  /** The pid now belongs to another process (its start time changed) or is gone. */
  processGone: boolean;
}

/**
 * Kept-fd readers for one instance: /proc/<pid>/stat and statm, and the interface's
 * statistics/{rx,tx}_bytes. No RPC knowledge; pure reading and parsing.
 */
export class InstanceProbe {
  private readonly stat?: KeptFdFile;
  private readonly statm?: KeptFdFile;
  private readonly rx?: KeptFdFile;
  private readonly tx?: KeptFdFile;
  /** Start time of the process this probe belongs to; learnt on first read when not given. */
  expectedStartTime: bigint | undefined;

  constructor(
    readonly pid: number | undefined,
    readonly interfaceName: string | undefined,
    expectedStartTime: bigint | undefined,
    roots: KernelRoots = DEFAULT_ROOTS,
  ) {
    this.expectedStartTime = expectedStartTime;
    if (pid !== undefined) {
      this.stat = new KeptFdFile(`${roots.proc}/${pid}/stat`);
      this.statm = new KeptFdFile(`${roots.proc}/${pid}/statm`);
    }
    if (interfaceName) {
      this.rx = new KeptFdFile(`${roots.sysClassNet}/${interfaceName}/statistics/rx_bytes`);
      this.tx = new KeptFdFile(`${roots.sysClassNet}/${interfaceName}/statistics/tx_bytes`);
    }
  }

  read(): ProbeReading {
    const reading: ProbeReading = { unavailable: [], processGone: false };
    if (this.stat && this.statm && this.pid !== undefined) this.readProcess(reading, this.pid);
    if (this.rx && this.tx) {
      // Both counters or neither: a half pair would make rates and sums lie.
      try {
        const rxBytes = readCounter(this.rx, "rx_bytes");
        const txBytes = readCounter(this.tx, "tx_bytes");
        reading.interface = { rxBytes, txBytes };
      } catch (e) {
        reading.unavailable.push(`network: interface ${this.interfaceName}: ${describe(e)}`);
      }
    }
    return reading;
  }

  private readProcess(reading: ProbeReading, pid: number): void {
    let stat;
    try {
      stat = readStat(this.stat!);
    } catch (e) {
      const reason = isGone(e) ? `pid ${pid} not found` : describe(e);
      reading.unavailable.push(`cpu: ${reason}`, `memory: ${reason}`);
      reading.processGone = isGone(e);
      return;
    }
    if (this.expectedStartTime === undefined) {
      this.expectedStartTime = stat.startTimeTicks;
    } else if (stat.startTimeTicks !== this.expectedStartTime) {
      // Same pid, different process: ours exited and the pid was handed out again.
      const reason = `pid ${pid} was reused by another process (start time ${stat.startTimeTicks}, expected ${this.expectedStartTime})`;
      reading.unavailable.push(`cpu: ${reason}`, `memory: ${reason}`);
      reading.processGone = true;
      return;
    }
    reading.cpu = { utimeTicks: stat.utimeTicks, stimeTicks: stat.stimeTicks, startTimeTicks: stat.startTimeTicks };
    try {
      reading.memory = readStatm(this.statm!);
    } catch (e) {
      // stat was read but statm was not (the process exited in between): CPU still stands.
      reading.unavailable.push(`memory: ${isGone(e) ? `pid ${pid} not found` : describe(e)}`);
    }
  }

  close(): void {
    for (const f of [this.stat, this.statm, this.rx, this.tx]) f?.close();
  }
}

function isGone(e: unknown): boolean {
  const code = (e as NodeJS.ErrnoException).code;
  return code === "ENOENT" || code === "ESRCH";
}

function describe(e: unknown): string {
  const err = e as NodeJS.ErrnoException;
  if (err.code === "ENOENT") return "not found";
  return err.code ? `${err.code}` : String(err.message ?? e);
}
