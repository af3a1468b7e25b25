import { Code, ConnectError } from "@connectrpc/connect";
import { invalidArgument } from "../../lib/rpc/field-error.js";
import type { ContainerRuntime } from "./container-runtime.js";

import { RUNTIME_NAMES } from "../../lib/runtime-names.js";

export { RUNTIME_NAMES, type RuntimeName } from "../../lib/runtime-names.js";

const MAX_EXTERNAL_ID = 512;

/** The runtimes this agent was configured with, and request-field checks against them. */
export class RuntimeSet {
  private readonly byName = new Map<string, ContainerRuntime>();

  constructor(readonly runtimes: ContainerRuntime[]) {
    for (const r of runtimes) this.byName.set(r.name, r);
  }

  get size(): number {
    return this.runtimes.length;
  }

  /** The runtimes a list/watch request names (`runtime` empty = all). */
  select(runtime: string, field = "runtime"): ContainerRuntime[] {
    if (runtime === "") return this.runtimes;
    return [this.one(runtime, field)];
  }

  /**
   * The runtime of a single-container request. Empty is fine when the agent has exactly one
   * runtime; an unknown name is INVALID_ARGUMENT, a known one that is not configured here
   * FAILED_PRECONDITION.
   */
  one(runtime: string, field = "runtime"): ContainerRuntime {
    if (runtime === "") {
      if (this.runtimes.length === 1) return this.runtimes[0]!;
      if (this.runtimes.length === 0) throw new ConnectError("no container runtime is configured on this agent (see --runtime)", Code.FailedPrecondition);
      throw invalidArgument(field, `is required when the agent has several runtimes (${[...this.byName.keys()].join(", ")})`);
    }
    const r = this.byName.get(runtime);
    if (r) return r;
    if (!(RUNTIME_NAMES as readonly string[]).includes(runtime)) {
      throw invalidArgument(field, `must be one of ${RUNTIME_NAMES.join(", ")}, got ${JSON.stringify(runtime.slice(0, 40))}`);
    }
    throw new ConnectError(`runtime ${runtime} is not configured on this agent (configured: ${[...this.byName.keys()].join(", ") || "none"})`, Code.FailedPrecondition);
  }
}

/** external_id: required, bounded, printable. Runtimes resolve it (id, prefix, name). */
export function requireExternalId(field: string, value: string): string {
  if (value === "") throw invalidArgument(field, "is required");
  if (value.length > MAX_EXTERNAL_ID) throw invalidArgument(field, `must be at most ${MAX_EXTERNAL_ID} characters`);
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(value)) throw invalidArgument(field, "must not contain control characters");
  return value;
}
