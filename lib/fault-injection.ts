/**
 * Test-only fault injection (dropped conntrack events, a dropped inventory event) is driven by
 * environment variables, which anyone who can set a daemon's environment could set by mistake or
 * on purpose. They take effect only when FLEETLET_ENABLE_FAULT_INJECTION=1 is set as well, and a
 * daemon says so loudly at start (security.md "State on disk": not reachable in a normal run).
 */
export const FAULT_INJECTION_SWITCH = "FLEETLET_ENABLE_FAULT_INJECTION";

/** Every fault-injection variable the daemons read. */
export const FAULT_INJECTION_VARIABLES = ["FLEETLET_FAULT_DROP_CONNTRACK_NEW", "FLEETLET_FAULT_DROP_CONNTRACK_EVENTS", "FLEETLET_TEST_DROP_INVENTORY_EVENT"] as const;

export type FaultInjectionVariable = (typeof FAULT_INJECTION_VARIABLES)[number];

/** The variable's value when fault injection is enabled, else undefined (as if it were unset). */
export function faultInjection(name: FaultInjectionVariable, env: NodeJS.ProcessEnv = process.env): string | undefined {
  if (env[FAULT_INJECTION_SWITCH] !== "1") return undefined;
  const value = env[name];
  return value === "" ? undefined : value;
}

/** Says at daemon start which fault-injection variables are set and whether they take effect. */
export function reportFaultInjection(logger: { warn(obj: object, msg: string): void }, env: NodeJS.ProcessEnv = process.env): void {
  const set = FAULT_INJECTION_VARIABLES.filter((n) => env[n] !== undefined && env[n] !== "");
  if (env[FAULT_INJECTION_SWITCH] === "1") {
    logger.warn({ variables: set }, `FAULT INJECTION ENABLED (${FAULT_INJECTION_SWITCH}=1): this daemon misbehaves on purpose; never run it like this in production`);
  } else if (set.length > 0) {
    logger.warn({ variables: set }, `fault-injection variables ignored: they need ${FAULT_INJECTION_SWITCH}=1 (tests only)`);
  }
}
