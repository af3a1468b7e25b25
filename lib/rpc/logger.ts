import { pino, type Logger } from "pino";

export type { Logger };

/**
 * pino JSON on stdout (architecture.md). FLEETLET_LOG_LEVEL overrides the level; "silent" is
 * what tests and `fleetlet up` use for daemons whose output would clutter a terminal.
 */
export function createLogger(name: string, level?: string): Logger {
  return pino({
    name,
    level: level ?? process.env.FLEETLET_LOG_LEVEL ?? "info",
    base: { pid: process.pid, name },
    timestamp: pino.stdTimeFunctions.isoTime,
  });
}
