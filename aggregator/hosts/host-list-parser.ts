import { HostOrigin } from "../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { ID_PATTERN } from "../../lib/rpc/field-error.js";
import { parseHostPort } from "../../lib/listen-address.js";
import { parseDurationMs } from "../../lib/duration.js";
import { hostTimeoutProblem } from "../../lib/host-timeout.js";
import type { HostConfig } from "./host-connection.js";
import { errorMessage } from "../../lib/error-message.js";

/** `--hosts NAME=ADDR,...`. Throws an Error naming the bad entry. */
export function parseHostsFlag(value: string): HostConfig[] {
  return value
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "")
    .map((entry) => parseEntry(entry, HostOrigin.FLAG, `entry ${JSON.stringify(entry)}`));
}

/**
 * A hosts file: one `NAME=ADDR [timeout=DURATION]` per line; blank lines and `#` comments are
 * skipped. Errors name the line.
 */
export function parseHostsFile(text: string, fileName: string): HostConfig[] {
  const out: HostConfig[] = [];
  text.split("\n").forEach((raw, i) => {
    const line = raw.replace(/#.*$/, "").trim();
    if (line === "") return;
    const [entry = "", ...opts] = line.split(/\s+/);
    const where = `${fileName}:${i + 1}`;
    const host = parseEntry(entry, HostOrigin.FILE, where);
    for (const opt of opts) {
      const m = /^timeout=(.+)$/.exec(opt);
      if (!m) throw new Error(`${where}: unknown option ${JSON.stringify(opt)} (expected timeout=DURATION)`);
      let ms: number;
      try {
        ms = parseDurationMs(m[1] ?? "");
      } catch (e) {
        throw new Error(`${where}: ${errorMessage(e)}`);
      }
      const problem = hostTimeoutProblem(ms);
      if (problem) throw new Error(`${where}: timeout ${problem}`);
      host.perHostTimeoutMs = ms;
    }
    out.push(host);
  });
  return out;
}

/** Hosts from all sources; a name given twice is an error rather than a silent override. */
export function mergeHostConfigs(...lists: HostConfig[][]): HostConfig[] {
  const byName = new Map<string, HostConfig>();
  for (const h of lists.flat()) {
    if (byName.has(h.name)) throw new Error(`host ${JSON.stringify(h.name)} is configured twice`);
    byName.set(h.name, h);
  }
  return [...byName.values()];
}

function parseEntry(entry: string, origin: HostOrigin, where: string): HostConfig {
  const eq = entry.indexOf("=");
  if (eq <= 0) throw new Error(`${where}: expected NAME=HOST:PORT`);
  const name = entry.slice(0, eq);
  const address = entry.slice(eq + 1);
  if (!ID_PATTERN.test(name)) throw new Error(`${where}: host name ${JSON.stringify(name)} must match ${ID_PATTERN.source}`);
  let port: number;
  try {
    port = parseHostPort(address).port;
  } catch (e) {
    throw new Error(`${where}: ${errorMessage(e)}`);
  }
  if (port === 0) throw new Error(`${where}: port 0 cannot be dialled`);
  return { name, address, origin, perHostTimeoutMs: undefined };
}
