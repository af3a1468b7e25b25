import { timestampFromMs, type Timestamp } from "@bufbuild/protobuf/wkt";
import { InstanceState, type Instance } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import type { InstanceStats } from "../../gen/fleetlet/agent/v1/metrics_pb.js";
import { InstanceProbe, DEFAULT_ROOTS, type KernelRoots } from "../kernel/instance-probe.js";
import { systemConstants, type SystemConstants } from "../kernel/system-constants.js";
import type { InstanceRegistry } from "../inventory/instance-registry.js";
import { monotonicMs } from "../../lib/monotonic-clock.js";

interface ProbeEntry {
  probe: InstanceProbe;
  /** The CPU reading cpu_utilization_ratio is measured from (monotonic clock). */
  baseline?: { cpuUsec: bigint; monoUsec: number };
  /** onProcessGone fired already for this probe's process. */
  goneReported: boolean;
  /** The learnt start time was handed to the registry. */
  startTimeNoted: boolean;
}

/**
 * The ratio is measured against a baseline at least this old, renewed once it is older than
 * BASELINE_RENEW_USEC: CPU time moves in whole ticks (10 ms at 100 Hz), so a ratio over a few
 * milliseconds between two callers would be noise (0, then 3.3, then 0).
 */
const MIN_RATIO_WINDOW_USEC = 100_000;
const BASELINE_RENEW_USEC = 1_000_000;

export interface CollectorOptions {
  roots?: KernelRoots;
  constants?: SystemConstants;
  /** Wall clock in microseconds (sampled_at); injectable for tests. */
  nowUsec?: () => number;
  /** Monotonic clock in microseconds (ratios); defaults to nowUsec when that is injected. */
  monoUsec?: () => number;
}

/**
 * Turns probe readings into InstanceStats: units, the instance view of network counters, ratios
 * and `unavailable` reasons. Keeps one probe (kept fds) per instance and drops it when the
 * instance goes away or its pid or interface changes.
 */
export class StatsCollector {
  private readonly probes = new Map<string, ProbeEntry>();
  private readonly roots: KernelRoots;
  private readonly constants: SystemConstants;
  private readonly nowUsec: () => number;
  private readonly monoUsec: () => number;
  private readonly unsubscribe: () => void;
  /**
   * The last sweep of all RUNNING instances, for callers that accept a recent answer; its age is
   * on the monotonic clock (a wall-clock step back must not keep serving it).
   */
  private lastSweep: { atMonoUsec: number; stats: InstanceStats[] } | undefined;
  /** Called when a measured instance's process turned out gone (exited or pid reused). */
  onProcessGone: ((instance: Instance) => void) | undefined;

  constructor(
    private readonly registry: InstanceRegistry,
    options: CollectorOptions = {},
  ) {
    this.roots = options.roots ?? DEFAULT_ROOTS;
    this.constants = options.constants ?? systemConstants();
    this.nowUsec = options.nowUsec ?? (() => Date.now() * 1000);
    this.monoUsec = options.monoUsec ?? options.nowUsec ?? (() => monotonicMs() * 1000);
    this.unsubscribe = registry.subscribe((change) => {
      // A registration or removal must show in the very next answer.
      this.lastSweep = undefined;
      const entry = this.probes.get(change.instance.id);
      if (!entry) return;
      const next = change.type === "upsert" ? change.instance : undefined;
      if (!next || next.pid !== entry.probe.pid || next.tapDevice !== (entry.probe.interfaceName ?? "")) {
        entry.probe.close();
        this.probes.delete(change.instance.id);
      }
    });
  }

  /** Measures one instance now. Always answers: what cannot be read is unset with a reason. */
  measure(instance: Instance, wallUsec = this.nowUsec(), sampledAt?: Timestamp): InstanceStats {
    // A literal rather than create(): this runs per instance per sweep, and protobuf-es v2
    // messages are plain objects (unset optional fields are simply absent).
    const stats: InstanceStats = {
      $typeName: "fleetlet.agent.v1.InstanceStats",
      instanceId: instance.id,
      instanceName: instance.name,
      sampledAt: sampledAt ?? timestampFromMs(Math.floor(wallUsec / 1000)),
      allocatedVcpus: instance.allocatedVcpus,
      allocatedMemoryBytes: instance.allocatedMemoryBytes,
      unavailable: [],
    };
    const hasInterface = instance.tapDevice !== "";
    if (instance.pid === undefined && !hasInterface) return stats;
    const entry = this.probeFor(instance);
    const reading = entry.probe.read();
    stats.unavailable = reading.unavailable;
    if (reading.cpu) {
      const ticks = reading.cpu.utimeTicks + reading.cpu.stimeTicks;
      const cpuUsec = (ticks * 1_000_000n) / BigInt(this.constants.clockTicksPerSecond);
      stats.cpuUsec = cpuUsec;
      stats.cpuSeconds = Number(cpuUsec) / 1e6;
      const mono = this.monoUsec();
      const base = entry.baseline;
      if (!base || cpuUsec < base.cpuUsec) {
        // First reading, or the counter went down (a new process): a new baseline, no ratio.
        entry.baseline = { cpuUsec, monoUsec: mono };
      } else {
        const window = mono - base.monoUsec;
        if (window >= MIN_RATIO_WINDOW_USEC && instance.allocatedVcpus > 0) {
          stats.cpuUtilizationRatio = Number(cpuUsec - base.cpuUsec) / (window * instance.allocatedVcpus);
        }
        if (window >= BASELINE_RENEW_USEC) entry.baseline = { cpuUsec, monoUsec: mono };
      }
      if (instance.pid !== undefined && instance.pidStartTime === undefined && !entry.startTimeNoted && entry.probe.expectedStartTime !== undefined) {
        // Learnt now (the process did not exist at registration): keep it across restarts.
        entry.startTimeNoted = true;
        this.registry.noteStartTime(instance.id, instance.pid, entry.probe.expectedStartTime).catch(() => {
          entry.startTimeNoted = false; // retried at the next reading
        });
      }
    } else {
      entry.baseline = undefined;
    }
    if (reading.memory) {
      const page = BigInt(this.constants.pageSizeBytes);
      stats.memoryRssBytes = reading.memory.residentPages * page;
      stats.memoryVmsBytes = reading.memory.sizePages * page;
      if (instance.allocatedMemoryBytes > 0n) {
        stats.memoryUtilizationRatio = Number(stats.memoryRssBytes) / Number(instance.allocatedMemoryBytes);
      }
    }
    if (reading.interface) {
      // The host side's tx is what the instance received, and the other way round.
      stats.netRxBytes = reading.interface.txBytes;
      stats.netTxBytes = reading.interface.rxBytes;
    }
    if (reading.processGone && !entry.goneReported) {
      // The probe stays: it remembers the start time, so a new process that gets the pid is
      // never taken for the instance, and this fires once, not at every reading.
      entry.goneReported = true;
      if (instance.state === InstanceState.RUNNING) this.onProcessGone?.(instance);
    }
    return stats;
  }

  /** RUNNING instances plus any asked for by id, sorted by id; unknown ids are skipped. */
  sweep(extraIds: readonly string[] = []): InstanceStats[] {
    const wanted = new Set(extraIds);
    const out: InstanceStats[] = [];
    // One timestamp for the whole sweep: every figure in it was read within this pass.
    const wallUsec = this.nowUsec();
    const sampledAt = timestampFromMs(Math.floor(wallUsec / 1000));
    for (const instance of this.registry.list()) {
      if (instance.state === InstanceState.RUNNING || wanted.has(instance.id)) out.push(this.measure(instance, wallUsec, sampledAt));
    }
    if (wanted.size === 0) this.lastSweep = { atMonoUsec: this.monoUsec(), stats: out };
    return out;
  }

  /**
   * Like sweep(), but answers from the last sweep of all RUNNING instances (by any caller: RPC,
   * watch sampler, Prometheus scrape) when it is at most `maxAgeMs` old, so concurrent and
   * frequent callers share one pass over /proc instead of each paying for their own. Instances
   * asked for by id that the last sweep did not cover are measured now. `sampled_at` tells the
   * caller how old each figure is; any registry change invalidates the cached sweep.
   */
  recentSweep(maxAgeMs: number, extraIds: readonly string[] = []): InstanceStats[] {
    const last = this.lastSweep;
    if (maxAgeMs <= 0 || !last || (this.monoUsec() - last.atMonoUsec) / 1000 > maxAgeMs) {
      const fresh = this.sweep();
      return extraIds.length === 0 ? fresh : this.withExtras(fresh, extraIds);
    }
    return extraIds.length === 0 ? last.stats : this.withExtras(last.stats, extraIds);
  }

  private withExtras(base: InstanceStats[], extraIds: readonly string[]): InstanceStats[] {
    const have = new Set(base.map((s) => s.instanceId));
    const extra: InstanceStats[] = [];
    for (const id of new Set(extraIds)) {
      const instance = have.has(id) ? undefined : this.registry.get(id);
      if (instance) extra.push(this.measure(instance));
    }
    if (extra.length === 0) return base;
    return [...base, ...extra].sort((a, b) => (a.instanceId < b.instanceId ? -1 : a.instanceId > b.instanceId ? 1 : 0));
  }

  close(): void {
    this.unsubscribe();
    for (const entry of this.probes.values()) entry.probe.close();
    this.probes.clear();
  }

  private probeFor(instance: Instance): ProbeEntry {
    let entry = this.probes.get(instance.id);
    if (!entry) {
      entry = {
        probe: new InstanceProbe(instance.pid, instance.tapDevice || undefined, instance.pidStartTime, this.roots),
        goneReported: false,
        startTimeNoted: false,
      };
      this.probes.set(instance.id, entry);
    }
    return entry;
  }
}
