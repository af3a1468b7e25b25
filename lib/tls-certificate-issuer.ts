import { execFile } from "node:child_process";
import { randomBytes, X509Certificate } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { isIP } from "node:net";
import { join } from "node:path";

/**
 * A small CA and the certificates of a fleet, made by the `openssl` binary with fixed argument
 * lists (no shell, no hand-written ASN.1). Keys are P-256, written 0600 and never overwritten.
 * Client certificates carry the caller's identity in CN and its role in OU (`OU=<role>`), which
 * is what the authorisation layer reads (security.md "Identities and transport").
 */

export const CA_CERT = "ca.crt";
export const CA_KEY = "ca.key";

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const DNS_NAME = /^(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*$/;

/** An argument a user got wrong: the message names the flag. */
export class CertificateArgumentError extends Error {}

function openssl(args: string[], input?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = execFile("openssl", args, { encoding: "utf8", maxBuffer: 1024 * 1024 }, (err, stdout, stderr) => {
      if (err) {
        const detail = (stderr || err.message).trim().split("\n")[0];
        reject(new Error(`openssl ${args[0]}: ${detail}`));
      } else {
        resolve(stdout);
      }
    });
    if (input !== undefined) child.stdin?.end(input);
  });
}

function checkName(flag: string, value: string): string {
  if (!NAME.test(value)) throw new CertificateArgumentError(`${flag}: ${JSON.stringify(value)} must be 1-64 of letters, digits, '.', '_', '-' (starting with a letter or digit)`);
  return value;
}

function checkDays(days: number): number {
  if (!Number.isInteger(days) || days <= 0 || days > 36500) throw new CertificateArgumentError(`--days: ${days} must be a whole number of days from 1 to 36500`);
  return days;
}

/** Writes a new file only (never replaces a key or certificate someone relies on). */
function writeNew(path: string, text: string, mode: number): void {
  writeFileSync(path, text, { mode, flag: "wx" });
  chmodSync(path, mode);
}

async function newKey(path: string): Promise<void> {
  if (existsSync(path)) throw new CertificateArgumentError(`${path} exists: refusing to overwrite a key`);
  // Read from stdout and written here with 0600, so the key is never on disk with wider rights.
  const pem = await openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]);
  writeNew(path, pem, 0o600);
}

/** 16 random bytes, positive: serials must be unique per CA (RFC 5280 asks for up to 20 octets). */
function serial(): string {
  const bytes = randomBytes(16);
  bytes[0] = bytes[0]! & 0x7f;
  return `0x${bytes.toString("hex")}`;
}

export interface IssuedFiles {
  cert: string;
  key: string;
  serialNumber: string;
  notAfter: string;
}

function described(cert: string, key: string): IssuedFiles {
  const x = new X509Certificate(readFileSync(cert));
  return { cert, key, serialNumber: x.serialNumber, notAfter: x.validTo };
}

/** `fleetlet certs ca`: DIR/ca.crt and DIR/ca.key (the key stays on the machine that issues). */
export async function createCa(dir: string, options: { commonName?: string; days?: number } = {}): Promise<IssuedFiles> {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const cert = join(dir, CA_CERT);
  const key = join(dir, CA_KEY);
  if (existsSync(cert)) throw new CertificateArgumentError(`${cert} exists: refusing to replace a CA`);
  await newKey(key);
  const pem = await openssl([
    "req", "-x509", "-new", "-key", key, "-sha256",
    "-subj", `/CN=${checkName("--name", options.commonName ?? "fleetlet-ca")}`,
    "-days", String(checkDays(options.days ?? 3650)),
    "-set_serial", serial(),
    "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
    "-addext", "keyUsage=critical,keyCertSign,cRLSign",
  ]);
  writeNew(cert, pem, 0o644);
  return described(cert, key);
}

export interface LeafRequest {
  caDir: string;
  outDir: string;
  name: string;
  days?: number;
}

/** `fleetlet certs server`: for an agent or the aggregator listener; SANs are the names/IPs clients dial. */
export async function issueServerCertificate(request: LeafRequest & { hosts: string[] }): Promise<IssuedFiles> {
  if (request.hosts.length === 0) throw new CertificateArgumentError("--host: give at least one DNS name or IP clients dial");
  const san = request.hosts.map((h) => {
    if (isIP(h)) return `IP:${h}`;
    if (DNS_NAME.test(h) && h.length <= 253) return `DNS:${h}`;
    throw new CertificateArgumentError(`--host: ${JSON.stringify(h)} is neither an IP address nor a DNS name`);
  });
  return issue(request, `/CN=${checkName("--name", request.name)}`, [
    `subjectAltName=${san.join(",")}`,
    "extendedKeyUsage=serverAuth",
  ]);
}

/** `fleetlet certs client`: CN = the identity, OU = its role (viewer, operator, admin, ...). */
export async function issueClientCertificate(request: LeafRequest & { role: string }): Promise<IssuedFiles> {
  const name = checkName("--name", request.name);
  const role = checkName("--role", request.role);
  return issue(request, `/OU=${role}/CN=${name}`, ["extendedKeyUsage=clientAuth"]);
}

async function issue(request: LeafRequest, subject: string, extensions: string[]): Promise<IssuedFiles> {
  const caCert = join(request.caDir, CA_CERT);
  const caKey = join(request.caDir, CA_KEY);
  for (const f of [caCert, caKey]) if (!existsSync(f)) throw new CertificateArgumentError(`--ca-dir: ${f} not found (make one with \`fleetlet certs ca\`)`);
  mkdirSync(request.outDir, { recursive: true, mode: 0o700 });
  const cert = join(request.outDir, `${request.name}.crt`);
  const key = join(request.outDir, `${request.name}.key`);
  if (existsSync(cert)) throw new CertificateArgumentError(`${cert} exists: remove it first to issue a new one`);
  await newKey(key);
  const addext = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment", ...extensions].flatMap((e) => ["-addext", e]);
  const csr = await openssl(["req", "-new", "-key", key, "-subj", subject, ...addext]);
  const pem = await openssl(
    [
      "x509", "-req", "-sha256",
      "-CA", caCert, "-CAkey", caKey,
      "-set_serial", serial(),
      "-days", String(checkDays(request.days ?? 397)),
      "-copy_extensions", "copyall",
    ],
    csr,
  );
  writeNew(cert, pem, 0o644);
  return described(cert, key);
}
