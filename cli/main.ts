import { Command, CommanderError, Option } from "commander";
import { agentCommand, aggregatorCommand } from "./daemon-commands.js";
import { certsCommand } from "./certs-command.js";
import { getCommand } from "./get-command.js";
import { hostsCommand } from "./hosts-command.js";
import { logsCommand } from "./logs-command.js";
import { meteringCommand } from "./metering-command.js";
import { policiesCommand } from "./policies-command.js";
import { upCommand } from "./up-command.js";
import { tokensCommand } from "./tokens-command.js";
import { setClientToken } from "./client-token.js";
import { addClientTlsOptions, setClientTls } from "./client-tls.js";
import { fleetletVersion } from "../lib/fleetlet-version.js";

/** The commands that call a daemon and take --tls-ca/--tls-cert/--tls-key (cli/client-tls.ts). */
const CLIENT_COMMANDS = new Set(["get", "hosts", "logs", "metering", "policies"]);

/**
 * The `fleetlet` command. Bad flags print one line and exit 2 (usage errors), as every daemon
 * must; --help exits 0.
 */
export async function main(argv: string[]): Promise<void> {
  const program: Command = new Command("fleetlet")
    .description("per-host gRPC agent and fleet aggregator for VMs and containers")
    .exitOverride()
    .configureOutput({ outputError: (text, write) => write(`fleetlet: ${text.trim().replace(/\n+/g, " ")}\n`) })
    .showSuggestionAfterError(true)
    .version(fleetletVersion(), "-V, --version", "print fleetlet's version")
    // The clients' bearer token (daemons with --tokens-file); accepted after the subcommand too.
    .addOption(new Option("--token <token>", "bearer token sent by the client commands").env("FLEETLET_TOKEN"))
    .hook("preAction", (root: Command) => setClientToken(root.opts<{ token?: string }>().token))
    .hook("preAction", (_program: Command, action: Command) => setClientTls(action));
  for (const sub of [agentCommand(), aggregatorCommand(), certsCommand(), getCommand(), hostsCommand(), logsCommand(), meteringCommand(), policiesCommand(), tokensCommand(), upCommand()]) {
    oneLineErrors(sub, `fleetlet ${sub.name()}`);
    if (CLIENT_COMMANDS.has(sub.name())) addClientTlsOptions(sub);
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

/**
 * Bad flags or arguments: one line naming the command, exit 2 (main's catch). Also for nested
 * commands (`fleetlet hosts add`): commander does not pass exitOverride on to commands added with
 * addCommand, so they printed two lines and exited 1.
 */
function oneLineErrors(cmd: Command, path: string): void {
  cmd.exitOverride().configureOutput({
    outputError: (text, write) => write(`${path}: ${text.trim().replace(/\n+/g, " ")}\n`),
  });
  for (const child of cmd.commands) oneLineErrors(child, `${path} ${child.name()}`);
}
