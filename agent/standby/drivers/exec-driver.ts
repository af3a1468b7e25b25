import { execFile } from "node:child_process";
import { DriverError, type DriverTarget, type StandbyDriver } from "./standby-driver.js";

export interface ExecDriverCommands {
  /** argv of the standby command; exit 0 = on standby. */
  standby: string[];
  wake: string[];
  timeoutMs?: number;
  /** Commands run at once, standby and wake together (default 16, like --standby-concurrency). */
  concurrency?: number;
  /**
   * Where a failed command's output goes (the agent's log). It is never put in the error:
   * errors reach callers (WakeInstance, GetStandbyStatus), and the output is the host's.
   */
  onFailureOutput?: (what: string, output: string) => void;
}

const DEFAULT_EXEC_CONCURRENCY = 16;

/**
 * Runs configured commands (hypervisors with their own pause/snapshot tooling). The instance is
 * passed in the environment: FLEETLET_INSTANCE_ID, FLEETLET_INSTANCE_PID, FLEETLET_INSTANCE_IP.
 * A non-zero exit is an error carrying the exit status; the trimmed output goes to
 * onFailureOutput only. At most `concurrency` commands run at once: a burst of wakes (each
 * instance's wake is its own call) queues instead of forking a process per instance.
 */
export function createExecDriver(commands: ExecDriverCommands): StandbyDriver {
  const limit = commands.concurrency ?? DEFAULT_EXEC_CONCURRENCY;
  let running = 0;
  const waiting: (() => void)[] = [];
  const bounded = async (work: () => Promise<void>) => {
    if (running >= limit) await new Promise<void>((resolve) => waiting.push(resolve));
    else running++;
    try {
      await work();
    } finally {
      // The slot passes straight to the next waiter, so `running` never dips below the queue.
      const next = waiting.shift();
      if (next) next();
      else running--;
    }
  };
  const run = (argv: string[], target: DriverTarget, what: string) =>
    bounded(() => runOne(argv, target, what));
  const runOne = (argv: string[], target: DriverTarget, what: string) =>
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
        if (output) commands.onFailureOutput?.(`${what} ${JSON.stringify(argv[0])}`, output);
        reject(new DriverError(`exec driver: ${what} ${JSON.stringify(argv[0])}: ${status}${output ? " (output in the agent's log)" : ""}`));
      });
    });
  return {
    name: "exec",
    standby: (t) => run(commands.standby, t, "standby"),
    wake: (t) => run(commands.wake, t, "wake"),
  };
}
