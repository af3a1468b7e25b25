import { afterAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { createCa, issueClientCertificate, issueServerCertificate } from "../../lib/tls-certificate-issuer.js";
import { tempDir } from "../helpers/temp-dir.js";

const dir = tempDir("certs");
const d = (...p: string[]) => join(dir.path, ...p);
afterAll(() => dir.remove());

describe("fleetlet certs (openssl)", () => {
  it("makes a CA, a server certificate with DNS and IP SANs, and a client certificate with OU=<role>; keys 0600", async () => {
    await createCa(d("ca"));
    const server = await issueServerCertificate({ caDir: d("ca"), outDir: d("out"), name: "h1", hosts: ["h1.example", "10.0.0.11", "::1"] });
    const client = await issueClientCertificate({ caDir: d("ca"), outDir: d("out"), name: "alice", role: "operator" });
    const ca = new X509Certificate(readFileSync(d("ca", "ca.crt")));
    assert.equal(ca.ca, true);
    const s = new X509Certificate(readFileSync(server.cert));
    assert.equal(s.ca, false);
    assert.equal(s.verify(ca.publicKey), true);
    assert.equal(s.subjectAltName, "DNS:h1.example, IP Address:10.0.0.11, IP Address:0:0:0:0:0:0:0:1");
    assert.equal(s.checkIP("10.0.0.11"), "10.0.0.11");
    const c = new X509Certificate(readFileSync(client.cert));
    assert.equal(c.subject, "OU=operator\nCN=alice");
    assert.equal(c.verify(ca.publicKey), true);
    assert.deepEqual(c.keyUsage, ["1.3.6.1.5.5.7.3.2"]);
    for (const key of [d("ca", "ca.key"), server.key, client.key]) assert.equal(statSync(key).mode & 0o777, 0o600, key);
    assert.notEqual(s.serialNumber, c.serialNumber);
  });

  it("refuses to overwrite, and names the flag of a bad argument", async () => {
    await assert.rejects(createCa(d("ca")), /ca\.crt exists: refusing to replace a CA/);
    await assert.rejects(issueServerCertificate({ caDir: d("ca"), outDir: d("out"), name: "h1", hosts: ["h1.example"] }), /h1\.crt exists/);
    await assert.rejects(issueServerCertificate({ caDir: d("ca"), outDir: d("out"), name: "h2", hosts: ["bad host"] }), /^Error: --host: "bad host" is neither/);
    await assert.rejects(issueServerCertificate({ caDir: d("ca"), outDir: d("out"), name: "h2", hosts: [] }), /--host: give at least one/);
    await assert.rejects(issueClientCertificate({ caDir: d("ca"), outDir: d("out"), name: "bob", role: "a/OU=admin" }), /--role: "a\/OU=admin" must be/);
    await assert.rejects(issueClientCertificate({ caDir: d("nope"), outDir: d("out"), name: "bob", role: "viewer" }), /--ca-dir: .*ca\.crt not found/);
  });
});
