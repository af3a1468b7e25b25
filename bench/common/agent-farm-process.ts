import { join } from "node:path";
import { REPO_ROOT, readJsonLine, startChild, type Child } from "./processes.js";

const FARM_JS = join(REPO_ROOT, "dist", "bench", "fanout", "agent-farm.js");

export interface Farm {
  child: Child;
  /** The agents' addresses once the farm serves. */
  addresses: Promise<string[]>;
}

/** `count` real agents with `instances` instances each in one process (bench/fanout/agent-farm.ts). */
export function startFarm(count: number, instances: number, dir: string, timeoutMs = 600_000): Farm {
  const child = startChild(process.execPath, [FARM_JS, String(count), String(instances), dir], { stdio: ["pipe", "pipe", "inherit"] });
  const addresses = readJsonLine<{ msg?: string; addresses?: string[] }>(child, (l) => l.msg === "farm serving", timeoutMs).then((l) => l.addresses ?? []);
  return { child, addresses };
}
