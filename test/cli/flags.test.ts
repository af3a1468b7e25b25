import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { runFleetlet, startDaemon } from "../helpers/daemon-process.js";
import { tempDir } from "../helpers/temp-dir.js";

// Every daemon refuses bad flags with a one-line reason and exit code 2 (api.md).

async function refuses(args: string[], reason: RegExp): Promise<void> {
  const r = await runFleetlet(args);
  assert.equal(r.code, 2, `exit code for ${args.join(" ")}: ${r.stderr}`);
  const lines = r.stderr.trim().split("\n");
  assert.equal(lines.length, 1, `one line, got: ${r.stderr}`);
  assert.match(lines[0] ?? "", reason);
}

describe("help", () => {
  it("up --help shows its defaults as they are written on the command line, never as objects", async () => {
    const r = await runFleetlet(["up", "--help"]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /--aggregator-listen <host:port> +aggregator gRPC address \(default: 127\.0\.0\.1:7700\)/);
    assert.match(r.stdout, /--agent-listen <host:port> +agent gRPC address \(default: 127\.0\.0\.1:7701\)/);
    assert.match(r.stdout, /--refresh <duration> .*\(default: 1s\)/);
    assert.doesNotMatch(r.stdout, /default: \{/);
    // A bare number is refused with examples of what is accepted (the unit is not guessed).
    await refuses(["up", "--refresh", "2"], /--refresh.*"2" is not a duration \(e\.g\. 500ms, 2s, 1m30s\)/);
  });
});

describe("bad flags", () => {
  it("agent: unknown flag", () => refuses(["agent", "--bogus"], /^fleetlet agent: error: unknown option '--bogus'/));
  it("agent: bad listen address", () => refuses(["agent", "--listen", "nope"], /--listen.*"nope" is not host:port/));
  it("agent: port out of range", () => refuses(["agent", "--listen", "127.0.0.1:70000"], /port 70000 is out of range/));
  it("agent: bad tap prefix", () => refuses(["agent", "--tap-prefix", "much-too-long"], /--tap-prefix/));
  it("agent: bad label budget", () => refuses(["agent", "--metrics-label-budget", "-3"], /metrics-label-budget/));
  it("agent: bad log level", () => refuses(["agent", "--log-level", "loud"], /--log-level/));
  it("agent: bad --allowed-uids / --allowed-cgroups / --standby-cgroup-root", async () => {
    await refuses(["agent", "--allowed-uids", "0,bob"], /--allowed-uids.*"bob" is not a whole number/);
    await refuses(["agent", "--allowed-cgroups", "/machine.slice,user.slice"], /--allowed-cgroups.*"user.slice" is not an absolute cgroup path/);
    await refuses(["agent", "--standby-cgroup-root", "/a/../b"], /--standby-cgroup-root.*is not an absolute cgroup path/);
  });
  it("agent: unusable state dir", async () => {
    const d = tempDir("notadir");
    const file = join(d.path, "file");
    writeFileSync(file, "x");
    await refuses(["agent", "--state-dir", file, "--listen", "127.0.0.1:0", "--metrics-listen", "off"], /^fleetlet agent: state dir .* is not usable/);
    d.remove();
  });
  it("agent: a state dir in use by a running agent", async () => {
    const d = tempDir("inuse");
    const first = await startDaemon(["agent", "--listen", "127.0.0.1:0", "--state-dir", d.path, "--metrics-listen", "off"]);
    try {
      await refuses(["agent", "--state-dir", d.path, "--listen", "127.0.0.1:0", "--metrics-listen", "off"], new RegExp(`in use by another agent \\(pid ${first.pid}\\)`));
    } finally {
      await first.stop();
      d.remove();
    }
  });
  it("agent: config file with an unknown key", async () => {
    const d = tempDir("config");
    writeFileSync(join(d.path, "c.json"), JSON.stringify({ "stat-dir": "/x" }));
    await refuses(["agent", "--config", join(d.path, "c.json")], /unknown key "stat-dir"/);
    d.remove();
  });
  it("aggregator: malformed --hosts", () => refuses(["aggregator", "--hosts", "a=nohostport"], /"nohostport" is not host:port/));
  it("aggregator: a host name twice", () => refuses(["aggregator", "--hosts", "a=127.0.0.1:1,a=127.0.0.1:2"], /configured twice/));
  it("aggregator: bad hosts file line, named by file and line", async () => {
    const d = tempDir("hostsfile");
    const f = join(d.path, "hosts");
    writeFileSync(f, "# fleet\nok=127.0.0.1:7701\nbad line here\n");
    await refuses(["aggregator", "--hosts-file", f], new RegExp(`${f}:3: expected NAME=HOST:PORT`));
    d.remove();
  });
  it("aggregator: bad duration", () => refuses(["aggregator", "--per-host-timeout", "2"], /"2" is not a duration/));
  it("get: unknown resource", () => refuses(["get", "pods"], /unknown resource "pods"/));
});

describe("configuration sources", () => {
  it("flag > FLEETLET_AGENT_* env > config file > default", async () => {
    const d = tempDir("precedence");
    const cfg = join(d.path, "c.json");
    writeFileSync(cfg, JSON.stringify({ "state-dir": join(d.path, "from-config"), listen: "127.0.0.1:1" }));
    // Config gives state-dir; env overrides listen (port 0); neither is overridden by a flag.
    const env = { ...process.env, FLEETLET_AGENT_LISTEN: "127.0.0.1:0", FLEETLET_AGENT_METRICS_LISTEN: "off" };
    const { spawn } = await import("node:child_process");
    const { FLEETLET_BIN } = await import("../helpers/daemon-process.js");
    const child = spawn(process.execPath, [FLEETLET_BIN, "agent", "--config", cfg], { env, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout.on("data", (b: Buffer) => (out += b.toString()));
    child.stderr.on("data", (b: Buffer) => (out += b.toString()));
    for (let i = 0; i < 100 && !out.includes("agent serving"); i++) await new Promise((r) => setTimeout(r, 100));
    child.kill("SIGTERM");
    const code = await new Promise((r) => child.once("exit", r));
    const line = JSON.parse(out.split("\n").find((l) => l.includes("agent serving")) ?? "{}") as { address?: string; state_dir?: string };
    assert.equal(line.state_dir, join(d.path, "from-config"));
    assert.match(line.address ?? "", /^127\.0\.0\.1:\d+$/);
    assert.notEqual(line.address, "127.0.0.1:1");
    assert.equal(code, 0, "SIGTERM is a clean exit");
    d.remove();
  });
});

describe("state dir claim", () => {
  it("takes over a pid file whose pid now belongs to another process (pid reuse)", async () => {
    const { writeFileSync } = await import("node:fs");
    const d = tempDir("stale-pid");
    // pid 1 exists, but its start time is not the one recorded: a stale claim.
    writeFileSync(join(d.path, "agent.pid"), "1 123456789\n");
    const agent = await startDaemon(["agent", "--listen", "127.0.0.1:0", "--state-dir", d.path, "--metrics-listen", "off"]);
    await agent.stop();
    d.remove();
  });
});
