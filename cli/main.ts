import { Command, CommanderError } from "commander";
import { agentCommand, aggregatorCommand } from "./daemon-commands.js";
import { getCommand } from "./get-command.js";
import { hostsCommand } from "./hosts-command.js";
import { logsCommand } from "./logs-command.js";
import { meteringCommand } from "./metering-command.js";
import { upCommand } from "./up-command.js";

/**
 * The `fleetlet` command. Bad flags print one line and exit 2 (usage errors), as every daemon
 * must; --help exits 0.
 */
export async function main(argv: string[]): Promise<void> {
  const program = new Command("fleetlet")
    .description("per-host gRPC agent and fleet aggregator for VMs and containers")
    .exitOverride()
    .configureOutput({ outputError: (text, write) => write(`fleetlet: ${text.trim().replace(/\n+/g, " ")}\n`) })
    .showSuggestionAfterError(true);
  for (const sub of [agentCommand(), aggregatorCommand(), getCommand(), hostsCommand(), logsCommand(), meteringCommand(), upCommand()]) {
    sub.exitOverride().configureOutput({
      outputError: (text, write) => write(`fleetlet ${sub.name()}: ${text.trim().replace(/\n+/g, " ")}\n`),
    });
    program.addCommand(sub);
  }
  try {
    await program.parseAsync(argv);
  } catch (e) {
    if (e instanceof CommanderError) {
      const ok = e.code === "commander.helpDisplayed" || e.code === "commander.version" || e.code === "commander.help" || e.exitCode === 0;
      process.exit(ok ? 0 : 2);
    }
    throw e;
  }
}
