import { randomBytes } from "node:crypto";
import { Command } from "commander";
import { hashToken } from "../lib/rpc/authz/tokens-file.js";
import { isRole, ROLES } from "../lib/rpc/authz/role-table.js";

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString("utf8").replace(/\r?\n$/, "");
}

/**
 * `fleetlet tokens`: bearer tokens for --tokens-file. The token is read from stdin (never an
 * argument: it would show in `ps` and shell history); the file only ever holds its SHA-256, the
 * same as `printf %s "$TOKEN" | sha256sum`.
 */
export function tokensCommand(): Command {
  const cmd = new Command("tokens").description("bearer tokens for --tokens-file (docs/operations.md \"Roles and tokens\")");
  cmd
    .command("hash")
    .description("print the SHA-256 of the token on stdin, as a tokens-file line when --name/--role are given")
    .option("--name <name>", "identity the token stands for")
    .option("--role <role>", `one of ${ROLES.join(", ")}`)
    .action(async (o: { name?: string; role?: string }, command: Command) => {
      if (o.role !== undefined && !isRole(o.role)) command.error(`error: option '--role': ${JSON.stringify(o.role)} is not one of ${ROLES.join(", ")}`, { exitCode: 2 });
      if ((o.name === undefined) !== (o.role === undefined)) command.error("error: --name and --role go together", { exitCode: 2 });
      if (o.name !== undefined && !/^\S+$/.test(o.name)) command.error("error: option '--name': must not be empty or contain spaces", { exitCode: 2 });
      const token = await readStdin();
      if (token === "") command.error("error: no token on stdin", { exitCode: 2 });
      const hash = hashToken(token);
      process.stdout.write(o.name ? `${o.name} ${o.role} ${hash}\n` : `${hash}\n`);
    });
  cmd
    .command("new")
    .description("print a new random token (32 bytes, base64url); hash it with `fleetlet tokens hash`")
    .action(() => {
      process.stdout.write(`${randomBytes(32).toString("base64url")}\n`);
    });
  return cmd;
}
