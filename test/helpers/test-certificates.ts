import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { connect } from "node:tls";

// Certificates `fleetlet certs` will not make on purpose: an expired one and one with no role.
// `openssl ca` / `openssl x509 -req` can set what our command does not, signed by a CA that
// `fleetlet certs ca` made (CA_DIR/ca.crt, CA_DIR/ca.key).

function newKeyAndRequest(outDir: string, name: string, subject: string): void {
  execFileSync("openssl", ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", join(outDir, `${name}.key`)]);
  execFileSync("openssl", ["req", "-new", "-key", join(outDir, `${name}.key`), "-subj", subject, "-out", join(outDir, `${name}.csr`)]);
}

/** OUT_DIR/NAME.crt|key: a viewer client certificate valid only on 1–2 January 2020. */
export function issueExpiredClientCertificate(caDir: string, outDir: string, name: string): void {
  const cnf = join(outDir, `${name}-ca.cnf`);
  writeFileSync(join(outDir, `${name}-index.txt`), "");
  writeFileSync(join(outDir, `${name}-serial`), "1000\n");
  writeFileSync(
    cnf,
    `[ca]\ndefault_ca = d\n[d]\ndatabase = ${join(outDir, `${name}-index.txt`)}\nnew_certs_dir = ${outDir}\nserial = ${join(outDir, `${name}-serial`)}\ndefault_md = sha256\npolicy = p\n[p]\ncommonName = supplied\norganizationalUnitName = optional\n`,
  );
  newKeyAndRequest(outDir, name, `/OU=viewer/CN=${name}`);
  execFileSync(
    "openssl",
    ["ca", "-batch", "-config", cnf, "-cert", join(caDir, "ca.crt"), "-keyfile", join(caDir, "ca.key"), "-in", join(outDir, `${name}.csr`), "-out", join(outDir, `${name}.crt`), "-startdate", "20200101000000Z", "-enddate", "20200102000000Z", "-notext"],
    { stdio: "ignore" },
  );
}

/** OUT_DIR/NAME.crt|key: a valid client certificate of the CA whose subject has no OU (no role). */
export function issueClientCertificateWithoutRole(caDir: string, outDir: string, name: string): void {
  newKeyAndRequest(outDir, name, `/CN=${name}`);
  execFileSync(
    "openssl",
    ["x509", "-req", "-in", join(outDir, `${name}.csr`), "-CA", join(caDir, "ca.crt"), "-CAkey", join(caDir, "ca.key"), "-CAcreateserial", "-days", "2", "-sha256", "-out", join(outDir, `${name}.crt`)],
    { stdio: "ignore" },
  );
}

/** The serial number of the certificate a fresh TLS connection to host:port is shown (h2 ALPN). */
export function servedCertificateSerial(address: string, files: { ca: string; cert: string; key: string }): Promise<string> {
  const at = address.lastIndexOf(":");
  return new Promise((resolve, reject) => {
    const socket = connect(
      { host: address.slice(0, at), port: Number(address.slice(at + 1)), ca: readFileSync(files.ca), cert: readFileSync(files.cert), key: readFileSync(files.key), ALPNProtocols: ["h2"] },
      () => {
        const serial = socket.getPeerCertificate().serialNumber;
        socket.destroy();
        resolve(serial);
      },
    );
    socket.on("error", reject);
  });
}
