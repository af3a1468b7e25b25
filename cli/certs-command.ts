import { Command } from "commander";
import { errorMessage } from "../lib/error-message.js";
import { createCa, issueClientCertificate, issueServerCertificate, type IssuedFiles } from "../lib/tls-certificate-issuer.js";
import { parse } from "./options.js";

const collect = (value: string, previous: string[] = []) => [...previous, ...value.split(",").map((s) => s.trim()).filter(Boolean)];

/** `fleetlet certs ca|server|client`: the files --tls-* and --agent-tls-* take (docs/operations.md "TLS"). */
export function certsCommand(): Command {
  const certs = new Command("certs").description("make a small CA and issue server and client certificates (uses openssl)");
  const run = async (command: Command, work: () => Promise<IssuedFiles>): Promise<void> => {
    try {
      const f = await work();
      process.stdout.write(`${f.cert}\n${f.key}\nserial ${f.serialNumber}, valid until ${f.notAfter}\n`);
    } catch (e) {
      command.error(`error: ${errorMessage(e)}`, { exitCode: 2 });
    }
  };
  certs.addCommand(
    new Command("ca")
      .description("create DIR/ca.crt and DIR/ca.key (0600): the CA every daemon and client is given with --tls-ca")
      .requiredOption("--out <dir>", "directory for ca.crt and ca.key (created 0700)")
      .option("--name <cn>", "the CA's common name", "fleetlet-ca")
      .option("--days <n>", "validity", parse.positiveInt, 3650)
      .action((o: { out: string; name: string; days: number }, command: Command) => run(command, () => createCa(o.out, { commonName: o.name, days: o.days }))),
  );
  certs.addCommand(
    new Command("server")
      .description("issue OUT/NAME.crt and NAME.key for a listener; --host lists every DNS name and IP clients dial (SANs)")
      .requiredOption("--ca-dir <dir>", "directory made by `fleetlet certs ca`")
      .requiredOption("--out <dir>", "directory for the certificate and key")
      .requiredOption("--name <name>", "file name and CN, e.g. the host name")
      .requiredOption("--host <name|ip...>", "SAN entries, repeat or comma-separate", collect)
      .option("--days <n>", "validity", parse.positiveInt, 397)
      .action((o: { caDir: string; out: string; name: string; host: string[]; days: number }, command: Command) =>
        run(command, () => issueServerCertificate({ caDir: o.caDir, outDir: o.out, name: o.name, hosts: o.host, days: o.days })),
      ),
  );
  certs.addCommand(
    new Command("client")
      .description("issue OUT/NAME.crt and NAME.key for a caller: CN=NAME (its identity), OU=ROLE (its role)")
      .requiredOption("--ca-dir <dir>", "directory made by `fleetlet certs ca`")
      .requiredOption("--out <dir>", "directory for the certificate and key")
      .requiredOption("--name <name>", "the identity (CN), e.g. aggregator, alice")
      .requiredOption("--role <role>", "viewer, operator, admin (or aggregator for the aggregator's own certificate)")
      .option("--days <n>", "validity", parse.positiveInt, 397)
      .action((o: { caDir: string; out: string; name: string; role: string; days: number }, command: Command) =>
        run(command, () => issueClientCertificate({ caDir: o.caDir, outDir: o.out, name: o.name, role: o.role, days: o.days })),
      ),
  );
  return certs;
}
