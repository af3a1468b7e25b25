/**
 * Caps on what one daemon holds (security.md "Limits"; docs/operations.md "Limits"), kept apart
 * from the registries so the CLI can show the defaults without loading a daemon's modules.
 */

/** How much one agent's registry holds (docs/operations.md "Limits"); each a flag of the agent. */
export interface RegistryLimits {
  /** Instances in all (--max-instances). */
  maxInstances: number;
  /** Registered snapshots (--max-snapshots). */
  maxSnapshots: number;
  /** Instances naming one pid (--max-instances-per-pid): each keeps 4 fds open for its stats. */
  maxInstancesPerPid: number;
}

export const DEFAULT_REGISTRY_LIMITS: RegistryLimits = { maxInstances: 100_000, maxSnapshots: 100_000, maxInstancesPerPid: 16 };

/** Hosts one aggregator holds by default (--max-hosts; docs/operations.md "Limits"). */
export const DEFAULT_MAX_HOSTS = 10_000;
