import { afterAll, beforeAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { create, toJsonString } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { InstanceState } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { MeteringService, ReadMeteringEntriesResponseSchema as AgentReadSchema } from "../../gen/fleetlet/agent/v1/metering_pb.js";
import { ReadMeteringEntriesResponseSchema as FleetReadSchema, type FleetMeteringEntry } from "../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { createGrpcJsTransport } from "../../lib/rpc/grpc-transport.js";
import { emittedAtNs, formatIntervalDuration } from "../../cli/metering-intervals.js";
import { formatTable } from "../../cli/table.js";
import { agentClients, fleetClient } from "../helpers/clients.js";
import { FLEETLET_BIN, runFleetlet, startDaemon, type DaemonProcess } from "../helpers/daemon-process.js";
import { tempDir } from "../helpers/temp-dir.js";

// The metering CLI against a real agent and aggregator: `get metering` (fleet and one agent),
// `metering export` (bytes, cursor, --with-host, --follow, Ctrl-C, `| head`) and `metering
// intervals`, each checked against exactly what the lifecycle RPCs wrote.

const dirs = [tempDir("mcli-agent"), tempDir("mcli-agg")];
let agent: DaemonProcess;
let aggregator: DaemonProcess;
let agentClient: ReturnType<typeof agentClients>;
/** The merged feed after the lifecycle below: 10 entries. */
let feed: FleetMeteringEntry[];
let ledgerId: string;

const GI = 1n << 30n;
const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));
const emitted = (e: FleetMeteringEntry) => (JSON.parse(e.line) as { emitted_at: string }).emitted_at;
const msBetween = (a: FleetMeteringEntry, b: FleetMeteringEntry) => Math.round(Number(emittedAtNs(emitted(b)) - emittedAtNs(emitted(a))) / 1e6);

/** Reads the whole feed once it has `n` entries and the host is caught up. */
async function mergedFeed(n: number): Promise<FleetMeteringEntry[]> {
  const c = fleetClient(aggregator.address);
  try {
    for (let tries = 0; ; tries++) {
      const res = await c.fleet.readMeteringEntries({ fromFleetSeq: 1n, limit: 10_000 });
      const host = (await c.fleet.listHosts({})).hosts[0]?.metering;
      if (res.entries.length >= n && host?.lagEntries === 0n && host.agentLastSeq === BigInt(n)) return res.entries;
      if (tries > 150) assert.fail(`the aggregator merged ${res.entries.length} of ${n} entries`);
      await pause(100);
    }
  } finally {
    c.close();
  }
}

beforeAll(async () => {
  agent = await startDaemon(["agent", "--listen", "127.0.0.1:0", "--state-dir", dirs[0]!.path, "--metrics-listen", "off", "--runtime", "none", "--standby", "off"]);
  aggregator = await startDaemon(["aggregator", "--listen", "127.0.0.1:0", "--state-dir", dirs[1]!.path, "--metrics-listen", "off", "--hosts", `h1=${agent.address}`]);
  agentClient = agentClients(agent.address);
  const inv = agentClient.inventory;
  const vm1 = { id: "vm1", state: InstanceState.RUNNING, hypervisor: "cloud-hypervisor", allocatedVcpus: 4, allocatedMemoryBytes: GI, allocatedStorageBytes: 10n * GI };
  await inv.registerInstance({ instance: vm1 }); // 1 vm.storage.start boot, 2 vm.compute.start boot
  await inv.setInstanceState({ instanceId: "vm1", state: InstanceState.STOPPED }); // 3 vm.compute.stop stop-user
  await inv.setInstanceState({ instanceId: "vm1", state: InstanceState.RUNNING }); // 4 vm.compute.start restart
  await inv.registerSnapshot({ snapshot: { id: "snap1", instanceId: "vm1", hypervisor: "cloud-hypervisor", storageBytes: 2n * GI } }); // 5
  const vm2 = { id: "vm2", state: InstanceState.RUNNING, hypervisor: "firecracker", allocatedVcpus: 2, allocatedMemoryBytes: 512n << 20n, allocatedStorageBytes: 5n * GI };
  await inv.registerInstance({ instance: vm2 }); // 6 vm.storage.start boot, 7 vm.compute.start boot
  await inv.deregisterInstance({ instanceId: "vm2" }); // 8 vm.compute.stop stop-user, 9 vm.storage.stop vm-rm
  await inv.removeSnapshot({ snapshotId: "snap1" }); // 10 snap.storage.stop snap-rm
  feed = await mergedFeed(10);
  ledgerId = feed[0]!.ledgerId;
});

afterAll(async () => {
  agentClient?.close();
  await Promise.all([agent?.stop(), aggregator?.stop()]);
  for (const d of dirs) d.remove();
});

/** KIND, VM/SNAPSHOT, REASON, SHAPE of the 10 entries, in order. */
const EXPECTED = [
  ["vm.storage.start", "vm1", "boot", "4cpu 1Gi 10Gi"],
  ["vm.compute.start", "vm1", "boot", "4cpu 1Gi 10Gi"],
  ["vm.compute.stop", "vm1", "stop-user", "4cpu 1Gi 10Gi"],
  ["vm.compute.start", "vm1", "restart", "4cpu 1Gi 10Gi"],
  ["snap.storage.start", "snap1", "-", "- - 2Gi"],
  ["vm.storage.start", "vm2", "boot", "2cpu 512Mi 5Gi"],
  ["vm.compute.start", "vm2", "boot", "2cpu 512Mi 5Gi"],
  ["vm.compute.stop", "vm2", "stop-user", "2cpu 512Mi 5Gi"],
  ["vm.storage.stop", "vm2", "vm-rm", "2cpu 512Mi 5Gi"],
  ["snap.storage.stop", "snap1", "snap-rm", "- - 2Gi"],
];

async function refuses(args: string[], reason: RegExp): Promise<void> {
  const r = await runFleetlet(args);
  assert.equal(r.code, 2, `exit code for ${args.join(" ")}: ${r.stderr}`);
  assert.equal(r.stdout, "");
  const lines = r.stderr.trim().split("\n");
  assert.equal(lines.length, 1, `one line, got: ${r.stderr}`);
  assert.match(lines[0] ?? "", reason);
}

describe("fleetlet get metering", () => {
  it("through the aggregator: every merged entry, then how far each host is merged", async () => {
    const r = await runFleetlet(["get", "metering", "--aggregator", aggregator.address]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stderr, "");
    const entries = formatTable(
      ["FLEET-SEQ", "HOST", "SEQ", "KIND", "VM/SNAPSHOT", "REASON", "SHAPE", "EMITTED-AT"],
      EXPECTED.map((cells, i) => [String(i + 1), "h1", String(i + 1), ...cells, emitted(feed[i]!)]),
    );
    // The agent's last report: its entries or, when quiet, its 5 s heartbeat.
    const reported = /h1 .* (\d+s ago) /.exec(r.stdout)?.[1] ?? "missing";
    assert.ok(Number.parseInt(reported) <= 6, `agent reported ${reported}`);
    const hosts = formatTable(
      ["HOST", "LEDGER", "MERGED-SEQ", "AGENT-LAST-SEQ", "LAG", "LAG-AGE", "AGENT-REPORTED", "LEDGER-CHANGES", "GAPS", "LAST-ERROR"],
      [["h1", ledgerId, "10", "10", "0", "0s", reported, "0", "0", "-"]],
    );
    assert.equal(r.stdout, `${entries}\n\n${hosts}\n\nfleet_seq 1..10 of 10\n`);
  });

  it("--from and --limit page through the feed and say where the next page starts", async () => {
    const r = await runFleetlet(["get", "metering", "--aggregator", aggregator.address, "--from", "4", "--limit", "2"]);
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.split("\n");
    assert.match(lines[1]!, /^4 +h1 +4 +vm\.compute\.start +vm1 +restart +4cpu 1Gi 10Gi +\S+Z$/);
    assert.match(lines[2]!, /^5 +h1 +5 +snap\.storage\.start +snap1 +- +- - 2Gi +\S+Z$/);
    assert.equal(lines.at(-2), "fleet_seq 4..5 of 10; more: --from 6");
    const none = await runFleetlet(["get", "metering", "--aggregator", aggregator.address, "--from", "11"]);
    assert.equal(none.code, 0, none.stderr);
    assert.match(none.stdout, /\n\nno entries from fleet_seq 11 \(last 10\)\n$/);
  });

  it("-o json is the protobuf JSON of the aggregator's ReadMeteringEntriesResponse", async () => {
    const r = await runFleetlet(["get", "metering", "--aggregator", aggregator.address, "-o", "json"]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, `${toJsonString(FleetReadSchema, create(FleetReadSchema, { entries: feed, nextFleetSeq: 11n, lastFleetSeq: 10n }), { prettySpaces: 2 })}\n`);
  });

  it("--agent: that agent's ledger, without fleet columns", async () => {
    const r = await runFleetlet(["get", "metering", "--agent", agent.address, "--from", "3", "--limit", "2"]);
    assert.equal(r.code, 0, r.stderr);
    const table = formatTable(
      ["SEQ", "KIND", "VM/SNAPSHOT", "REASON", "SHAPE", "EMITTED-AT"],
      [2, 3].map((i) => [String(i + 1), ...EXPECTED[i]!, emitted(feed[i]!)]),
    );
    assert.equal(r.stdout, `${table}\n\nledger ${ledgerId}: seq 3..4 of 10; more: --from 5\n`);

    const json = await runFleetlet(["get", "metering", "--agent", agent.address, "-o", "json"]);
    assert.equal(json.code, 0, json.stderr);
    const t = createGrpcJsTransport(agent.address);
    try {
      const res = await createClient(MeteringService, t).readMeteringEntries({});
      assert.equal(json.stdout, `${toJsonString(AgentReadSchema, res, { prettySpaces: 2 })}\n`);
      assert.deepEqual(res.entries.map((e) => e.line), feed.map((e) => e.line));
    } finally {
      t.close();
    }
  });

  it("bad flags: one line, exit 2", async () => {
    await Promise.all([
      refuses(["get", "metering", "--limit", "0"], /^fleetlet get: error: option '--limit <n>' argument '0' is invalid/),
      refuses(["get", "metering", "--limit", "10001"], /10001 is more than 10000/),
      refuses(["get", "metering", "--from", "-1"], /--from/),
      refuses(["get", "hosts", "--from", "3"], /--from and --limit apply to get metering only/),
      refuses(["get", "metering", "--agent", "127.0.0.1:1", "--aggregator", "127.0.0.1:2"], /give --agent or --aggregator, not both/),
    ]);
  });
});

describe("fleetlet get metering: honest status", () => {
  it("an agent not heard from since the aggregator started (SIGSTOPped): AGENT-LAST-SEQ and LAG '?', reported 'never', then numbers once it is back", async () => {
    const dir = tempDir("mcli-agg2");
    agent.child.kill("SIGSTOP");
    let second: DaemonProcess | undefined;
    try {
      second = await startDaemon(["aggregator", "--listen", "127.0.0.1:0", "--state-dir", dir.path, "--metrics-listen", "off", "--hosts", `h1=${agent.address}`]);
      const r = await runFleetlet(["get", "metering", "--aggregator", second.address]);
      assert.equal(r.code, 0, r.stderr);
      const row = r.stdout.split("\n").find((l) => l.startsWith("h1 "));
      assert.match(row ?? "", /^h1 +- +0 +\? +\? +0s +never /, r.stdout);
      agent.child.kill("SIGCONT");
      let after = "";
      for (let tries = 0; tries < 100; tries++) {
        const again = await runFleetlet(["get", "metering", "--aggregator", second.address]);
        after = again.stdout.split("\n").find((l) => l.startsWith("h1 ")) ?? "";
        if (/ 10 +10 +0 +0s +\d+s ago /.test(after)) break;
        await pause(200);
      }
      assert.match(after, new RegExp(`^h1 +${ledgerId} +10 +10 +0 +0s +\\d+s ago `));
    } finally {
      agent.child.kill("SIGCONT");
      await second?.stop();
      dir.remove();
    }
  });
});

describe("fleetlet metering intervals", () => {
  it("pairs starts with stops: closed ones with their duration, open ones up to --as-of", async () => {
    const asOfMs = Number(emittedAtNs(emitted(feed[3]!)) / 1_000_000n) + 90_000;
    const asOf = new Date(asOfMs).toISOString();
    const r = await runFleetlet(["metering", "intervals", "--aggregator", aggregator.address, "--as-of", asOf]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stderr, "");
    const [s1, c1, p1, c2, s5, s6, c7, p8, s9, p10] = feed.map(emitted) as string[];
    const d = (a: number, b: number) => formatIntervalDuration(msBetween(feed[a]!, feed[b]!));
    const table = formatTable(
      ["HOST", "KIND", "ID", "STATUS", "START", "STOP", "DURATION", "SHAPE", "REASONS"],
      [
        ["h1", "vm.storage", "vm1", "open", s1!, "open", "1m30s", "4cpu 1Gi 10Gi", "boot"],
        ["h1", "vm.compute", "vm1", "closed", c1!, p1!, d(1, 2), "4cpu 1Gi 10Gi", "boot/stop-user"],
        ["h1", "vm.compute", "vm1", "open", c2!, "open", "1m30s", "4cpu 1Gi 10Gi", "restart"],
        ["h1", "snap.storage", "snap1", "closed", s5!, p10!, d(4, 9), "- - 2Gi", "-/snap-rm"],
        ["h1", "vm.storage", "vm2", "closed", s6!, s9!, d(5, 8), "2cpu 512Mi 5Gi", "boot/vm-rm"],
        ["h1", "vm.compute", "vm2", "closed", c7!, p8!, d(6, 7), "2cpu 512Mi 5Gi", "boot/stop-user"],
      ],
    );
    assert.equal(r.stdout, `${table}\n\n4 closed, 2 open; fleet_seq 1..10; open ones as of ${asOf}\n`);
  });

  it("--from after a start: its stop is reported without a start; --vm keeps one VM", async () => {
    const asOf = "2099-01-01T00:00:00.000Z";
    const r = await runFleetlet(["metering", "intervals", "--aggregator", aggregator.address, "--from", "3", "--vm", "vm1", "--as-of", asOf]);
    assert.equal(r.code, 0, r.stderr);
    const open = formatIntervalDuration(Date.parse(asOf) - Number(emittedAtNs(emitted(feed[3]!)) / 1_000_000n));
    const table = formatTable(
      ["HOST", "KIND", "ID", "STATUS", "START", "STOP", "DURATION", "SHAPE", "REASONS"],
      [
        ["h1", "vm.compute", "vm1", "no-start", "-", emitted(feed[2]!), "-", "4cpu 1Gi 10Gi", "?/stop-user"],
        ["h1", "vm.compute", "vm1", "open", emitted(feed[3]!), "open", open, "4cpu 1Gi 10Gi", "restart"],
      ],
    );
    assert.equal(r.stdout, `${table}\n\n0 closed, 1 open, 1 stopped without a start (started before fleet_seq 3); fleet_seq 3..10; open ones as of ${asOf}\n`);
  });

  it("-o json: every interval with both ends, the shape, and where the read stopped", async () => {
    const r = await runFleetlet(["metering", "intervals", "--aggregator", aggregator.address, "-o", "json", "--vm", "vm2"]);
    assert.equal(r.code, 0, r.stderr);
    const doc = JSON.parse(r.stdout) as Record<string, unknown>;
    assert.match(doc.as_of as string, /^\d{4}-\d\d-\d\dT[\d:.]+Z$/);
    delete doc.as_of;
    const end = (i: number, reason: string) => ({ fleet_seq: i + 1, seq: i + 1, reason, emitted_at: emitted(feed[i]!) });
    const shape = { cpu: 2, mem_bytes: 536870912, storage_bytes: 5368709120 };
    assert.deepEqual(doc, {
      from_fleet_seq: 1,
      next_fleet_seq: 11,
      intervals: [
        { host: "h1", ledger_id: ledgerId, kind: "vm.storage", vm_id: "vm2", status: "closed", start: end(5, "boot"), stop: end(8, "vm-rm"), duration_ms: msBetween(feed[5]!, feed[8]!), shape, hypervisor: "firecracker" },
        { host: "h1", ledger_id: ledgerId, kind: "vm.compute", vm_id: "vm2", status: "closed", start: end(6, "boot"), stop: end(7, "stop-user"), duration_ms: msBetween(feed[6]!, feed[7]!), shape, hypervisor: "firecracker" },
      ],
      problems: [],
    });
  });

  it("bad flags: one line, exit 2", async () => {
    await Promise.all([
      refuses(["metering", "intervals", "-o", "yaml"], /^fleetlet metering intervals: error: option '-o, --output <format>' argument 'yaml' is invalid/),
      refuses(["metering", "intervals", "--as-of", "yesterday"], /"yesterday" is not an RFC 3339 time/),
      refuses(["metering", "intervals", "--aggregator", "nope"], /^fleetlet metering intervals: error: --aggregator: "nope" is not host:port/),
      refuses(["metering", "bogus"], /^fleetlet metering: error: unknown command 'bogus'/),
    ]);
  });
});

describe("fleetlet metering export", () => {
  it("writes each entry's line byte for byte, and the cursor to resume from on stderr", async () => {
    const r = await runFleetlet(["metering", "export", "--aggregator", aggregator.address]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, feed.map((e) => `${e.line}\n`).join(""));
    assert.equal(r.stderr, "fleetlet metering export: 10 entries; resume with --from 11\n");
    const none = await runFleetlet(["metering", "export", "--aggregator", aggregator.address, "--from", "11"]);
    assert.equal(none.stdout, "");
    assert.equal(none.stderr, "fleetlet metering export: 0 entries; resume with --from 11\n");
  });

  it("--from resumes; --with-host wraps each line with its fleet_seq and host", async () => {
    const r = await runFleetlet(["metering", "export", "--aggregator", aggregator.address, "--from", "9", "--with-host"]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, `{"fleet_seq":9,"host":"h1","entry":${feed[8]!.line}}\n{"fleet_seq":10,"host":"h1","entry":${feed[9]!.line}}\n`);
    assert.equal(r.stderr, "fleetlet metering export: 2 entries; resume with --from 11\n");
    for (const line of r.stdout.trim().split("\n")) JSON.parse(line);
  });

  it("bad flags: one line, exit 2", async () => {
    await Promise.all([
      refuses(["metering", "export", "--from", "x"], /^fleetlet metering export: error: option '--from <fleet_seq>' argument 'x' is invalid/),
      refuses(["metering", "export", "--bogus"], /unknown option '--bogus'/),
      refuses(["metering", "export", "--aggregator", "127.0.0.1:99999"], /port 99999 is out of range/),
    ]);
  });

  it("an aggregator that does not answer: exit 1, and the cursor to resume from", async () => {
    const r = await runFleetlet(["metering", "export", "--aggregator", "127.0.0.1:1", "--from", "5", "--timeout", "2s"]);
    assert.equal(r.code, 1);
    assert.equal(r.stdout, "");
    assert.match(r.stderr, /^fleetlet metering export: 127\.0\.0\.1:1: /);
    assert.match(r.stderr, /\nfleetlet metering export: 0 entries; resume with --from 5\n$/);
  });

  it("--follow: the backlog, then entries as they are merged; Ctrl-C ends cleanly with the cursor", async () => {
    const child = spawn(process.execPath, [FLEETLET_BIN, "metering", "export", "--aggregator", aggregator.address, "--follow", "--from", "9"], { stdio: ["ignore", "pipe", "pipe"] });
    const lines: string[] = [];
    let stderr = "";
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((res) => child.once("exit", (code) => res(code)));
    let wanted = 0;
    let reached: () => void = () => {};
    createInterface({ input: child.stdout }).on("line", (l) => {
      lines.push(l);
      if (lines.length >= wanted) reached();
    });
    const untilLines = (n: number) =>
      new Promise<void>((res, rej) => {
        wanted = n;
        const timer = setTimeout(() => rej(new Error(`${lines.length} lines, wanted ${n}; stderr: ${stderr}`)), 15_000);
        reached = () => {
          clearTimeout(timer);
          res();
        };
        if (lines.length >= n) reached();
      });
    try {
      await untilLines(2);
      await agentClient.inventory.setInstanceState({ instanceId: "vm1", state: InstanceState.STOPPED }); // 11 vm.compute.stop stop-user
      await untilLines(3);
      child.kill("SIGINT");
      assert.equal(await exited, 0, stderr);
    } finally {
      child.kill("SIGKILL");
    }
    feed = await mergedFeed(11);
    assert.deepEqual(lines, feed.slice(8).map((e) => e.line));
    assert.match(lines[2]!, /^\{"seq":11,"kind":"vm\.compute\.stop","vm_id":"vm1","reason":"stop-user",/);
    assert.equal(stderr, "fleetlet metering export: 3 entries; resume with --from 12\n");
  });

  it("--follow | head -n 1: the reader going away ends it quietly (EPIPE), exit 0", async () => {
    const child = spawn("bash", ["-o", "pipefail", "-c", `"${process.execPath}" "${FLEETLET_BIN}" metering export --aggregator ${aggregator.address} --follow | head -n 1`], { stdio: ["ignore", "pipe", "pipe"], detached: true });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((res) => child.once("exit", (code) => res(code)));
    try {
      for (let i = 0; i < 150 && !stdout.includes("\n"); i++) await pause(100);
      assert.equal(stdout, `${feed[0]!.line}\n`);
      // head has gone; the next entry written hits the closed pipe.
      await pause(300);
      await agentClient.inventory.setInstanceState({ instanceId: "vm1", state: InstanceState.RUNNING });
      const code = await Promise.race([exited, pause(15_000).then(() => "still running")]);
      assert.equal(code, 0, stderr);
      assert.equal(stderr, "");
    } finally {
      // bash and the fleetlet it started (their own process group), should either be left.
      try {
        process.kill(-child.pid!, "SIGKILL");
      } catch {
        // already gone
      }
    }
  });
});
