import { readFileSync } from "node:fs";
import * as grpc from "@grpc/grpc-js";
import { type Command, Option } from "commander";
import { errorMessage } from "../lib/error-message.js";

/**
 * TLS of the CLI's client commands (get, hosts, logs, metering): --tls-ca to verify the daemon
 * (CA and the dialled host name/IP), --tls-cert/--tls-key to present a client certificate
 * (mTLS). Also FLEETLET_TLS_CA / FLEETLET_TLS_CERT / FLEETLET_TLS_KEY. The options live on each
 * client command, not on `fleetlet` itself, which would swallow the daemons' own --tls-* flags.
 */
export function addClientTlsOptions(command: Command): Command {
  return command
    .addOption(new Option("--tls-ca <file>", "PEM CA the daemon's certificate must chain to (dial over TLS)").env("FLEETLET_TLS_CA"))
    .addOption(new Option("--tls-cert <file>", "PEM client certificate to present (mTLS)").env("FLEETLET_TLS_CERT"))
    .addOption(new Option("--tls-key <file>", "PEM private key of --tls-cert").env("FLEETLET_TLS_KEY"));
}

// Set once before a client command runs (cli/main.ts preAction hook); undefined = plaintext.
let credentials: grpc.ChannelCredentials | undefined;

/** Reads the files of the running command (or an ancestor's); a bad file is a one-line usage error. */
export function setClientTls(actionCommand: Command): void {
  let files: { tlsCa?: string; tlsCert?: string; tlsKey?: string } = {};
  for (let c: Command | null = actionCommand; c; c = c.parent) {
    if (c.options.some((o) => o.long === "--tls-ca") && c.name() !== "agent" && c.name() !== "aggregator") {
      files = c.opts();
      break;
    }
  }
  credentials = undefined;
  if (files.tlsCa === undefined && files.tlsCert === undefined && files.tlsKey === undefined) return;
  try {
    if (files.tlsCa === undefined) throw new Error("--tls-ca: needed to verify the daemon's certificate");
    if ((files.tlsCert === undefined) !== (files.tlsKey === undefined)) throw new Error("--tls-cert and --tls-key go together");
    credentials = grpc.credentials.createSsl(
      read("--tls-ca", files.tlsCa),
      files.tlsKey === undefined ? null : read("--tls-key", files.tlsKey),
      files.tlsCert === undefined ? null : read("--tls-cert", files.tlsCert),
    );
  } catch (e) {
    actionCommand.error(`error: ${errorMessage(e)}`, { exitCode: 2 });
  }
}

function read(flag: string, file: string): Buffer {
  try {
    return readFileSync(file);
  } catch (e) {
    throw new Error(`${flag}: ${errorMessage(e)}`);
  }
}

export function clientTlsCredentials(): grpc.ChannelCredentials | undefined {
  return credentials;
}
