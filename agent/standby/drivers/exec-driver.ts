import { execFile } from "node:child_process";
import { DriverError, type DriverTarget, type StandbyDriver } from "./standby-driver.js";

export interface ExecDriverCommands {
  /** argv of the standby command; exit 0 = on standby. */
  standby: string[];
  wake: string[];
  timeoutMs?: number;
}

/**
 * Runs configured commands (hypervisors with their own pause/snapshot tooling). The instance is
 * passed in the environment: FLEETLET_INSTANCE_ID, FLEETLET_INSTANCE_PID, FLEETLET_INSTANCE_IP.
 * A non-zero exit is an error carrying the exit status and the trimmed output.
 */
export function createExecDriver(commands: ExecDriverCommands): StandbyDriver {
  const run = (argv: string[], target: DriverTarget, what: string) =>
    new Promise<void>((resolve, reject) => {
      if (argv.length === 0) {
        reject(new DriverError(`exec driver: no ${what} command configured`));
        return;
      }
      const env = {
        ...process.env,
        FLEETLET_INSTANCE_ID: target.id,
        FLEETLET_INSTANCE_PID: target.pid === undefined ? "" : String(target.pid),
        FLEETLET_INSTANCE_IP: target.ip,
      };
      execFile(argv[0]!, argv.slice(1), { env, timeout: commands.timeoutMs ?? 60_000, maxBuffer: 1 << 20 }, (err, stdout, stderr) => {
        if (!err) {
          resolve();
          return;
        }
        const output = `${stdout}${stderr}`.trim().slice(-2000);
        const status = typeof err.code === "number" ? `exit status ${err.code}` : err.killed ? "timed out" : String(err.code ?? err.message);
        reject(new DriverError(`exec driver: ${what} ${JSON.stringify(argv[0])}: ${status}${output ? `: ${output}` : ""}`));
      });
    });
  return {
    name: "exec",
    standby: (t) => run(commands.standby, t, "standby"),
    wake: (t) => run(commands.wake, t, "wake"),
  };
}
