/**
 * The fleetlet side of bench/conntrack, run in the benchmark's namespace
 * (`ip netns exec NS node probe.js`): the agent's own conntrack source (ConntrackProcessSource:
 * the reader process + our decoder), opened with the agent's defaults as standby-setup.ts does,
 * counting what the standby controller would see. Like the controller, every overflow (events
 * lost) is answered with a resync dump. CPU counts this process and the reader process.
 *
 * Commands on stdin, one per line; answers are JSON lines on stdout:
 *   start PORT  reset the counters, CPU and event-loop histogram; count flows to PORT
 *   stats       the counters so far (the benchmark polls this until the events settle)
 * stdin closed: close the socket and exit. After `start`, the counters are also printed every
 * 250 ms as {"tick": ...}, so that what was seen is known even if the process dies.
 */
import { monitorEventLoopDelay } from "node:perf_hooks";
import { createInterface } from "node:readline";
import { readFileSync } from "node:fs";
import { ConntrackProcessSource } from "../../agent/kernel/conntrack-process-source.js";
import { systemConstants } from "../../agent/kernel/system-constants.js";
import { parseProcStat } from "../../lib/proc-stat-parser.js";

export interface ProbeStats {
  port: number;
  /** Every flow event decoded (any port), new + destroy. */
  events: number;
  /** Flow events whose original destination port is PORT. */
  portEvents: number;
  /** "new" events (IPCTNL_MSG_CT_NEW: new and updated flows) to PORT. */
  updates: number;
  /** "new" events in SYN_SENT (1) to PORT: one per new connection. */
  newSynSent: number;
  overflows: number;
  resyncs: number;
  resyncFailures: number;
  decodeErrors: number;
  /** User + system CPU of this process and of the reader process since `start`. */
  cpuMs: number;
  /** The reader process's share of cpuMs. */
  readerCpuMs: number;
  /** Times the reader process died (restarted by the source). */
  readerRestarts: number;
  /** Event-loop delay (timer interval minus its 5 ms resolution), p99 and max since `start`. */
  eventLoopP99Ms: number;
  eventLoopMaxMs: number;
  /** ms since `start` of the first and the last event to PORT. */
  firstEventMs: number | undefined;
  lastEventMs: number | undefined;
  receiveBufferBytes: number;
}

const socket = new ConntrackProcessSource();
const { clockTicksPerSecond } = systemConstants();
/** utime + stime of the reader process, in ms (0 once it is gone). */
function readerCpu(): number {
  try {
    const stat = parseProcStat(readFileSync(`/proc/${socket.readerPid}/stat`, "latin1"));
    return (Number(stat.utimeTicks + stat.stimeTicks) * 1000) / clockTicksPerSecond;
  } catch {
    return 0;
  }
}
let readerCpu0 = 0;
// The histogram holds whole timer intervals: the loop's delay is what exceeds the resolution.
const LOOP_RESOLUTION_MS = 5;
const loop = monitorEventLoopDelay({ resolution: LOOP_RESOLUTION_MS });
loop.enable();
const print = (o: unknown) => process.stdout.write(`${JSON.stringify(o)}\n`);

let port = -1;
let t0 = performance.now();
let cpu0 = process.cpuUsage();
let events = 0;
let portEvents = 0;
let updates = 0;
let newSynSent = 0;
let overflows = 0;
let resyncs = 0;
let resyncFailures = 0;
let decodeErrors0 = 0;
let firstEventMs: number | undefined;
let lastEventMs: number | undefined;
let ticker: NodeJS.Timeout | undefined;

socket.on("flow", (flow) => {
  events++;
  if (flow.dstPort !== port) return;
  portEvents++;
  const at = performance.now() - t0;
  firstEventMs ??= at;
  lastEventMs = at;
  if (flow.kind !== "new") return;
  updates++;
  if (flow.tcpState === 1) {
    newSynSent++;
  }
});
// As the controller: events were lost, so the event view is not trusted; resync with a dump.
socket.on("overflow", () => {
  overflows++;
  socket.dump().then(
    () => resyncs++,
    () => resyncFailures++,
  );
});
socket.on("error", (e: Error) => print({ error: e.message }));

function stats(): ProbeStats {
  const cpu = process.cpuUsage(cpu0);
  const readerCpuMs = Math.max(0, readerCpu() - readerCpu0);
  return {
    port,
    events,
    portEvents,
    updates,
    newSynSent,
    overflows,
    resyncs,
    resyncFailures,
    decodeErrors: socket.counters.decodeErrors - decodeErrors0,
    cpuMs: (cpu.user + cpu.system) / 1000 + readerCpuMs,
    readerCpuMs,
    readerRestarts: socket.counters.restarts,
    eventLoopP99Ms: Math.max(0, loop.percentile(99) / 1e6 - LOOP_RESOLUTION_MS),
    eventLoopMaxMs: Math.max(0, loop.max / 1e6 - LOOP_RESOLUTION_MS),
    firstEventMs,
    lastEventMs,
    receiveBufferBytes: socket.receiveBufferBytes,
  };
}

createInterface({ input: process.stdin }).on("line", (line) => {
  const [cmd, arg] = line.trim().split(/\s+/);
  if (cmd === "start") {
    port = Number(arg);
    events = portEvents = updates = newSynSent = overflows = resyncs = resyncFailures = 0;
    decodeErrors0 = socket.counters.decodeErrors;
    firstEventMs = lastEventMs = undefined;
    loop.reset();
    cpu0 = process.cpuUsage();
    readerCpu0 = readerCpu();
    t0 = performance.now();
    print({ started: port });
    ticker ??= setInterval(() => print({ tick: stats() }), 250);
  } else if (cmd === "stats") {
    print({ stats: stats() });
  }
});
process.stdin.on("end", () => {
  clearInterval(ticker);
  socket.close();
  process.exit(0);
});
// Subscribed before the first dump; the dump proves the table is readable.
socket.start().then(
  () => print({ ready: true, receiveBufferBytes: socket.receiveBufferBytes }),
  (e: Error) => print({ error: `dump: ${e.message}` }),
);
