/**
 * What a container runtime logs to: the four pino levels it uses, fields first. One interface
 * for every runtime so none of them needs pino: the agent passes a pino child
 * (`logger.child({ runtime })`), tests pass a recorder or nothing (then `silentLogger`).
 */
export interface RuntimeLogger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

/** For callers that pass no logger. */
export const silentLogger: RuntimeLogger = {
  debug() {},
  info() {},
  warn() {},
  error() {},
};
