import { afterAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { accessSync, constants, mkdirSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fleetletVersion } from "../../lib/fleetlet-version.js";
import { repoPath } from "../helpers/paths.js";
import { tempDir } from "../helpers/temp-dir.js";
import { freePort } from "../helpers/up-process.js";

// Installed like a tool (issue 15): `npm pack` makes a tarball with the prebuilt JavaScript,
// which `npm install -g` puts in a prefix of its own; from another directory the installed
// `fleetlet` runs `up` (both daemons, demo instances, the fleet table) and the systemd units
// in deploy/ verify and start with it.

const dir = tempDir("install");
afterAll(() => dir.remove());

function run(cmd: string, args: string[], cwd: string, timeoutMs: number): string {
  return execFileSync(cmd, args, { cwd, encoding: "utf8", timeout: timeoutMs, stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, npm_config_fund: "false", npm_config_audit: "false", npm_config_update_notifier: "false" } });
}

describe("the packed tarball", () => {
  const prefix = join(dir.path, "prefix");
  const elsewhere = join(dir.path, "elsewhere");
  const bin = join(prefix, "bin", "fleetlet");
  let tarball = "";

  it("packs the prebuilt dist/ and the reader's C source, without tests or benches", () => {
    const out = run("npm", ["pack", "--pack-destination", dir.path, "--json"], repoPath(), 300_000);
    const [info] = JSON.parse(out.slice(out.indexOf("["))) as { filename: string; files: { path: string }[] }[];
    tarball = join(dir.path, info!.filename);
    const files = info!.files.map((f) => f.path);
    for (const f of ["bin/fleetlet.js", "dist/cli/main.js", "dist/agent/agent-daemon.js", "dist/aggregator/aggregator-daemon.js", "agent/kernel/native/conntrack-reader.c", "deploy/systemd/fleetlet-agent.service", "README.md"]) {
      assert.ok(files.includes(f), `${f} in the tarball`);
    }
    assert.deepEqual(files.filter((f) => /^dist\/(test|bench)\//.test(f) || f.endsWith(".map") || f.startsWith("test/")), []);
  });

  it("installs globally into a prefix and runs `fleetlet up --duration 5s` from another directory", async () => {
    assert.ok(tarball, "packed");
    // npm 11 runs no install script of a global install unless allowed: ours builds the
    // conntrack reader, better-sqlite3's its native module (docs/operations.md "Install").
    run("npm", ["install", "-g", "--prefix", prefix, "--allow-scripts=fleetlet,better-sqlite3", tarball], dir.path, 900_000);
    mkdirSync(elsewhere);
    assert.equal(run(bin, ["--version"], elsewhere, 30_000), `${fleetletVersion()}\n`);
    // The conntrack reader was built at install (postinstall), next to the installed agent.
    accessSync(join(prefix, "lib", "node_modules", "fleetlet", "dist", "agent", "kernel", "conntrack-reader"), constants.X_OK);
    const [aggPort, agentPort] = [await freePort(), await freePort()];
    const up = spawn(bin, ["up", "--duration", "5s", "--state-dir", join(elsewhere, "state"), "--aggregator-listen", `127.0.0.1:${aggPort}`, "--agent-listen", `127.0.0.1:${agentPort}`, "--agent-metrics-listen", "off", "--aggregator-metrics-listen", "off"], {
      cwd: elsewhere,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    up.stdout!.on("data", (b: Buffer) => (stdout += b.toString()));
    up.stderr!.on("data", (b: Buffer) => (stderr += b.toString()));
    const code = await new Promise<number | null>((r) => up.once("exit", (c) => r(c)));
    assert.equal(code, 0, stderr);
    assert.match(stdout, /fleetlet fleet/);
    assert.match(stdout, new RegExp(`local\\s+127\\.0\\.0\\.1:${agentPort}\\s`));
  }, 1_000_000);

  it("the systemd units verify with the installed fleetlet, and their ExecStart lines serve", async () => {
    assert.ok(tarball, "packed");
    accessSync(bin, constants.X_OK);
    const units = join(dir.path, "units");
    mkdirSync(units);
    const execStarts: string[][] = [];
    for (const name of readdirSync(repoPath("deploy", "systemd"))) {
      const text = readFileSync(repoPath("deploy", "systemd", name), "utf8").replaceAll("/usr/local/bin/fleetlet", bin);
      writeFileSync(join(units, name), text);
      const line = /^ExecStart=(.+)$/m.exec(text)?.[1];
      assert.ok(line, `${name} has ExecStart`);
      execStarts.push(line.split(/\s+/));
    }
    // Unknown keys are only warnings on stderr (exit 0): nothing may be printed at all.
    const verify = spawn("systemd-analyze", ["verify", ...readdirSync(units).map((n) => join(units, n))], { stdio: ["ignore", "pipe", "pipe"] });
    let printed = "";
    verify.stdout!.on("data", (b: Buffer) => (printed += b.toString()));
    verify.stderr!.on("data", (b: Buffer) => (printed += b.toString()));
    const verified = await new Promise<number | null>((r) => verify.once("exit", (c) => r(c)));
    assert.deepEqual([verified, printed], [0, ""]);
    // Each ExecStart as written, with its state dir, addresses and hosts file moved into the test's own.
    const hostsFile = join(dir.path, "hosts");
    writeFileSync(hostsFile, "");
    for (const argv of execStarts) {
      const [exe, which, ...flags] = argv;
      const replacements: Record<string, () => Promise<string>> = {
        "--state-dir": async () => join(dir.path, `unit-${which}`),
        "--listen": async () => `127.0.0.1:${await freePort()}`,
        "--metrics-listen": async () => `127.0.0.1:${await freePort()}`,
        "--hosts-file": async () => hostsFile,
      };
      const args = [which!];
      for (let i = 0; i < flags.length; i++) {
        const flag = flags[i]!;
        const replace = replacements[flag];
        args.push(flag);
        if (replace) {
          args.push(await replace());
          i++; // the unit's own value
        }
      }
      const daemon = spawn(exe!, args, { cwd: elsewhere, stdio: ["ignore", "pipe", "pipe"] });
      let log = "";
      daemon.stdout!.on("data", (b: Buffer) => (log += b.toString()));
      const serving = `${which} serving`;
      const deadline = Date.now() + 30_000;
      while (!log.includes(serving) && daemon.exitCode === null && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
      daemon.kill("SIGTERM");
      const code = await new Promise<number | null>((r) => (daemon.exitCode !== null ? r(daemon.exitCode) : daemon.once("exit", (c) => r(c))));
      assert.ok(log.includes(serving), `${which}: ${log.slice(0, 2000)}`);
      assert.equal(code, 0, `${which} stops cleanly on SIGTERM`);
      const first = JSON.parse(log.split("\n")[0]!) as { version: string };
      assert.equal(first.version, fleetletVersion(), "the version on its first log line");
    }
  }, 120_000);
});
