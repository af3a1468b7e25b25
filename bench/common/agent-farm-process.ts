import { join } from "node:path";
import type { TlsFiles } from "../../lib/rpc/tls-credentials.js";
import { REPO_ROOT, readJsonLine, startChild, type Child } from "./processes.js";

const FARM_JS = join(REPO_ROOT, "dist", "bench", "fanout", "agent-farm.js");

export interface Farm {
  child: Child;
  /** The agents' addresses once the farm serves. */
  addresses: Promise<string[]>;
}

export interface FarmOptions {
  timeoutMs?: number;
  /** Every agent serves TLS with these files (with caFile: mTLS), as `fleetlet agent --tls-*`. */
  tls?: TlsFiles;
}

/** `count` real agents with `instances` instances each in one process (bench/fanout/agent-farm.ts). */
export function startFarm(count: number, instances: number, dir: string, { timeoutMs = 600_000, tls }: FarmOptions = {}): Farm {
  const tlsArgs = tls ? [["--tls-cert", tls.certFile], ["--tls-key", tls.keyFile], ["--tls-ca", tls.caFile]].flatMap(([flag, file]) => (file === undefined ? [] : [flag!, file])) : [];
  const child = startChild(process.execPath, [FARM_JS, String(count), String(instances), dir, ...tlsArgs], { stdio: ["pipe", "pipe", "inherit"] });
  const addresses = readJsonLine<{ msg?: string; addresses?: string[] }>(child, (l) => l.msg === "farm serving", timeoutMs).then((l) => l.addresses ?? []);
  return { child, addresses };
}
