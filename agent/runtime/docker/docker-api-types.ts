/**
 * The Engine API's JSON as this runtime reads it: only the fields we use, every one optional or
 * nullable because engines and API versions leave them out (a stopped container's stats have
 * empty `memory_stats`; `Labels`, `Networks`, `Health` may be null). @types/dockerode types
 * these loosely or not at all, so what comes off the socket is narrowed to these shapes in one
 * place (docker-engine-client.ts) and the mapping code never sees `any`.
 */

export interface DockerHealthLogEntry {
  Start?: string;
  End?: string;
  ExitCode?: number;
  Output?: string;
}

export interface DockerInspect {
  Id: string;
  /** With Docker's leading "/". */
  Name?: string;
  Created?: string;
  /** The image id (sha256:...); Config.Image is the reference it was created from. */
  Image?: string;
  RestartCount?: number;
  State?: {
    /** created, running, paused, restarting, removing, exited, dead */
    Status?: string;
    Running?: boolean;
    Paused?: boolean;
    Restarting?: boolean;
    OOMKilled?: boolean;
    Dead?: boolean;
    Pid?: number;
    ExitCode?: number;
    Error?: string;
    StartedAt?: string;
    FinishedAt?: string;
    Health?: {
      Status?: string;
      FailingStreak?: number;
      Log?: DockerHealthLogEntry[] | null;
    } | null;
  };
  Config?: {
    Image?: string;
    Tty?: boolean;
    Labels?: Record<string, string> | null;
    Healthcheck?: { Test?: string[] | null } | null;
  };
  HostConfig?: {
    /** Bytes; 0 = no limit. */
    Memory?: number;
    /** `--cpus` in billionths of a CPU; 0 = not set. */
    NanoCpus?: number;
    /** `--cpu-quota` / `--cpu-period` in µs (CFS); quota 0 or -1 = not set, period 0 = the kernel's 100 ms. */
    CpuQuota?: number;
    CpuPeriod?: number;
  };
  NetworkSettings?: {
    IPAddress?: string;
    Networks?: Record<string, { IPAddress?: string } | null> | null;
  };
}

/** GET /containers/json: we only need the ids (each is inspected). */
export interface DockerListedContainer {
  Id: string;
}

export interface DockerNetworkCounters {
  rx_bytes?: number;
  tx_bytes?: number;
}

export interface DockerBlkioEntry {
  major?: number;
  minor?: number;
  /** "Read"/"Write"/"Sync"/"Async"/"Total" on cgroup v1, "read"/"write" on cgroup v2. */
  op?: string;
  value?: number;
}

export interface DockerCpuStats {
  cpu_usage?: { total_usage?: number; percpu_usage?: number[] | null };
  system_cpu_usage?: number;
  online_cpus?: number;
}

/** GET /containers/{id}/stats?stream=false (one-shot=true: `precpu_stats` empty, `preread` zero) */
export interface DockerStatsJson {
  /** When sampled; Go's zero time for a container that is not running. */
  read?: string;
  /** When `precpu_stats` was sampled (the engine's previous read, ~1 s earlier); zero time in one-shot answers. */
  preread?: string;
  cpu_stats?: DockerCpuStats;
  precpu_stats?: DockerCpuStats;
  memory_stats?: {
    usage?: number;
    limit?: number;
    /** cgroup v1: total_inactive_file (hierarchical) and inactive_file; v2: inactive_file. */
    stats?: Record<string, number> | null;
  };
  networks?: Record<string, DockerNetworkCounters> | null;
  blkio_stats?: { io_service_bytes_recursive?: DockerBlkioEntry[] | null } | null;
  pids_stats?: { current?: number; limit?: number } | null;
}

/** GET /events: one JSON message per line. */
export interface DockerEventMessage {
  Type?: string;
  Action?: string;
  Actor?: { ID?: string; Attributes?: Record<string, string> | null };
  /** Seconds. */
  time?: number;
  /**
   * Nanoseconds since the epoch. JSON.parse would round it (it exceeds 2^53), so
   * parseDockerEventLine() reads the digits from the text; this is the exact value.
   */
  timeNano?: bigint;
}

/** GET /version */
export interface DockerVersion {
  Version?: string;
  ApiVersion?: string;
  MinAPIVersion?: string;
}

/** GET /info */
export interface DockerInfo {
  /** RFC 3339 with nanoseconds, in the engine's local zone. */
  SystemTime?: string;
  MemTotal?: number;
  NCPU?: number;
  CgroupVersion?: string;
  /** The engine's own ID (daemon events carry it as Actor.ID) and host name. */
  ID?: string;
  Name?: string;
  /** Swarm membership: services exist (and emit events) only on an active manager. */
  Swarm?: { LocalNodeState?: string; ControlAvailable?: boolean; NodeID?: string } | null;
}
