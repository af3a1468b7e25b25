/** The pino-like logger this runtime writes to (the agent passes a pino child). */
export interface KubeLogger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

/** For callers that pass no logger. */
export const silentLogger: KubeLogger = {
  debug() {},
  info() {},
  warn() {},
  error() {},
};
