import { readFileSync } from "node:fs";
import { type Command, InvalidArgumentError, Option } from "commander";
import { parseHostPort, type ListenAddress } from "../lib/listen-address.js";
import { parseDurationMs } from "../lib/duration.js";
import { hostTimeoutProblem } from "../lib/host-timeout.js";
import { errorMessage } from "../lib/error-message.js";

/** Commander argument parsers: each throws InvalidArgumentError with the rule that failed. */
export const parse = {
  address(value: string): ListenAddress {
    try {
      return parseHostPort(value);
    } catch (e) {
      throw new InvalidArgumentError(errorMessage(e));
    }
  },
  optionalAddress(value: string): ListenAddress | undefined {
    if (value === "" || value === "off") return undefined;
    return parse.address(value);
  },
  durationMs(value: string): number {
    try {
      const ms = parseDurationMs(value);
      if (ms <= 0) throw new Error(`${JSON.stringify(value)} must be greater than 0`);
      return ms;
    } catch (e) {
      throw new InvalidArgumentError(errorMessage(e));
    }
  },
  hostTimeoutMs(value: string): number {
    const ms = parse.durationMs(value);
    const problem = hostTimeoutProblem(ms);
    if (problem) throw new InvalidArgumentError(problem);
    return ms;
  },
  nonNegativeDurationMs(value: string): number {
    try {
      const ms = parseDurationMs(value);
      if (ms < 0) throw new Error(`${JSON.stringify(value)} must not be negative`);
      return ms;
    } catch (e) {
      throw new InvalidArgumentError(errorMessage(e));
    }
  },
  positiveInt(value: string): number {
    if (!/^\d+$/.test(value) || Number(value) <= 0 || !Number.isSafeInteger(Number(value))) {
      throw new InvalidArgumentError(`${JSON.stringify(value)} is not a positive integer`);
    }
    return Number(value);
  },
  nonNegativeInt(value: string): number {
    if (!/^\d+$/.test(value) || !Number.isSafeInteger(Number(value)) || Number(value) > 0xffffffff) {
      throw new InvalidArgumentError(`${JSON.stringify(value)} is not a whole number >= 0`);
    }
    return Number(value);
  },
};

/**
 * An option that can also come from FLEETLET_<PREFIX>_<NAME> and from the --config file, in the
 * order flag > environment > config file > default (architecture.md "Configuration").
 */
export function configurable(prefix: string, flags: string, description: string): Option {
  const option = new Option(flags, description);
  option.env(`FLEETLET_${prefix}_${option.attributeName().replace(/[A-Z]/g, (c) => `_${c}`).toUpperCase()}`);
  return option;
}

/**
 * Applies `--config FILE` (JSON object keyed by flag name, e.g. {"state-dir": "/x"}) to every
 * option still at its default. Unknown keys are an error, so a typo is not silently ignored.
 */
export function applyConfigFile(command: Command): void {
  const file = command.getOptionValue("config") as string | undefined;
  if (!file) return;
  let doc: Record<string, unknown>;
  try {
    doc = JSON.parse(readFileSync(file, "utf8")) as Record<string, unknown>;
  } catch (e) {
    command.error(`--config ${file}: ${errorMessage(e)}`, { exitCode: 2 });
  }
  if (typeof doc !== "object" || doc === null || Array.isArray(doc)) {
    command.error(`--config ${file}: must be a JSON object`, { exitCode: 2 });
  }
  for (const [key, raw] of Object.entries(doc)) {
    const option = command.options.find((o) => o.long === `--${key}`);
    if (!option || key === "config") command.error(`--config ${file}: unknown key ${JSON.stringify(key)}`, { exitCode: 2 });
    const attr = option.attributeName();
    const source = command.getOptionValueSource(attr);
    if (source !== undefined && source !== "default") continue;
    const text = String(raw);
    try {
      const value = option.parseArg ? option.parseArg(text, undefined) : text;
      command.setOptionValueWithSource(attr, value, "config");
    } catch (e) {
      command.error(`--config ${file}: ${key}: ${errorMessage(e)}`, { exitCode: 2 });
    }
  }
}
