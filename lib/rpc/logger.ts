import { pino, type Logger } from "pino";
import { fleetletVersion } from "../fleetlet-version.js";

export type { Logger };

/**
 * pino JSON on stdout (architecture.md). FLEETLET_LOG_LEVEL overrides the level; "silent" is
 * what tests and `fleetlet up` use for daemons whose output would clutter a terminal. Every line
 * carries the daemon's pid, name and version (`fleetlet --version`).
 */
export function createLogger(name: string, level?: string, destination?: NodeJS.WritableStream): Logger {
  const options = {
    name,
    level: level ?? process.env.FLEETLET_LOG_LEVEL ?? "info",
    base: { pid: process.pid, name, version: fleetletVersion() },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: {
      // `pid` is the daemon's (base): a line's own `pid` (an instance's process) would make a
      // second key of the same name, and JSON parsers keep only the last one.
      log(fields: Record<string, unknown>): Record<string, unknown> {
        if (!("pid" in fields)) return fields;
        const { pid, ...rest } = fields;
        return { ...rest, instance_pid: pid };
      },
    },
  };
  return destination ? pino(options, destination) : pino(options);
}
