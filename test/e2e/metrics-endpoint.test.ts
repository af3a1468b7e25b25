import { afterAll, beforeAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import net from "node:net";
import { createClient } from "@connectrpc/connect";
import { InstanceState } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { MeteringService } from "../../gen/fleetlet/agent/v1/metering_pb.js";
import { createGrpcJsTransport } from "../../lib/rpc/grpc-transport.js";
import { startDaemon, type DaemonProcess } from "../helpers/daemon-process.js";
import { agentClients } from "../helpers/clients.js";
import { tempDir } from "../helpers/temp-dir.js";
import { standInProcess } from "../helpers/stand-in-process.js";
import { fleetletVersion } from "../../lib/fleetlet-version.js";

// The instances' pid: not the agent's, nor the test process (an ancestor of the agent).
const standIn = standInProcess();

// The agent's Prometheus endpoint as a scraper sees it: per-instance fleetlet_vm_* series,
// event-loop delay, and the standby instruments with every phase present.

const state = tempDir("metrics-endpoint");
let agent: DaemonProcess;
let port: number;

beforeAll(async () => {
  port = await new Promise<number>((res) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => res(p));
    });
  });
  agent = await startDaemon(["agent", "--listen", "127.0.0.1:0", "--state-dir", state.path, "--metrics-listen", `127.0.0.1:${port}`]);
  const c = agentClients(agent.address);
  await c.inventory.registerInstance({ instance: { id: "m-1", name: "scraped", pid: standIn.pid, allocatedVcpus: 1 } });
  c.close();
});

afterAll(async () => {
  await agent.stop();
  state.remove();
});

describe("GET /metrics on the agent", () => {
  it("has the instance's series, the event-loop delay and every standby phase", async () => {
    const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    assert.match(text, /^fleetlet_vm_cpu_seconds_total\{instance_id="m-1",instance_name="scraped"\} \d+(\.\d+)?$/m);
    assert.match(text, /^fleetlet_vm_memory_rss_bytes\{instance_id="m-1",instance_name="scraped"\} \d+$/m);
    assert.match(text, /^fleetlet_event_loop_delay_p99_seconds\{/m);
    for (const phase of ["UNSUPPORTED", "DISABLED", "INELIGIBLE", "ACTIVE", "IDLE_COUNTDOWN", "READY_FOR_STANDBY", "STANDBY_REQUESTED", "IN_STANDBY", "WAKING", "ERROR"]) {
      assert.match(text, new RegExp(`^fleetlet_standby_instances\\{phase="${phase}",`, "m"), phase);
    }
    const disabled = /^fleetlet_standby_instances\{phase="(DISABLED|UNSUPPORTED)",[^}]*\} 1$/m.test(text);
    assert.ok(disabled, "the policy-less instance is counted once");
    assert.match(text, /^fleetlet_standby_attempts_total\{result="ok",/m);
  });
  it("has the metering instruments: entries appended equal the ledger's last seq, sync and commit durations", async () => {
    const c = agentClients(agent.address);
    // A second instance, RUNNING: two more entries (storage and compute start), one more commit.
    await c.inventory.registerInstance({ instance: { id: "m-2", state: InstanceState.RUNNING } });
    c.close();
    const m = createClient(MeteringService, createGrpcJsTransport(agent.address));
    const ledger = await m.readMeteringEntries({ fromSeq: 1n });
    const last = Number(ledger.entries.at(-1)?.seq ?? 0n);
    assert.ok(last >= 3, `at least 3 entries (m-1 storage, m-2 storage + compute), got ${last}`);
    const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    const value = (re: RegExp) => Number(re.exec(text)?.[1] ?? NaN);
    assert.equal(value(/^fleetlet_metering_entries_appended_total\{[^}]*\} (\d+)$/m), last);
    assert.equal(value(/^fleetlet_metering_ledger_last_seq\{[^}]*\} (\d+)$/m), last);
    const syncs = value(/^fleetlet_metering_ledger_syncs_total\{[^}]*\} (\d+)$/m);
    assert.ok(syncs >= 2 && syncs <= last, `syncs ${syncs}`);
    assert.equal(value(/^fleetlet_metering_ledger_sync_duration_seconds_count\{[^}]*\} (\d+)$/m), syncs);
    assert.equal(value(/^fleetlet_metering_unacknowledged_entries\{[^}]*\} (\d+)$/m), last, "no aggregator acknowledged anything");
    // The first commit of a new state dir writes the snapshot; later ones append to the journal.
    assert.ok(value(/^fleetlet_registry_commits_total\{kind="journal",[^}]*\} (\d+)$/m) >= 1);
    assert.ok(value(/^fleetlet_registry_commit_duration_seconds_count\{kind="snapshot",[^}]*\} (\d+)$/m) >= 1);
  });
  it("is text format 0.0.4 (no OpenMetrics `# UNIT`), with build info, process metrics and per-method gRPC server metrics", async () => {
    const c = agentClients(agent.address);
    await c.inventory.listInstances({});
    await c.inventory.getInstance({ instanceId: "nope" }).catch(() => undefined);
    c.close();
    const res = await fetch(`http://127.0.0.1:${port}/metrics`);
    assert.match(res.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
    const text = await res.text();
    assert.doesNotMatch(text, /^# UNIT /m);
    assert.match(text, new RegExp(`^fleetlet_build_info\\{service="fleetlet-agent",version="${fleetletVersion().replace(/\./g, "\\.")}",node_version="${process.version.replace(/\./g, "\\.")}"\\} 1$`, "m"));
    const value = (re: RegExp) => Number(re.exec(text)?.[1] ?? NaN);
    assert.ok(value(/^process_resident_memory_bytes (\d+)$/m) > 10 * 2 ** 20, "RSS above 10 MiB");
    assert.ok(value(/^process_cpu_seconds_total ([\d.]+)$/m) > 0);
    const started = value(/^process_start_time_seconds (\d+)$/m);
    assert.ok(Math.abs(started - Date.now() / 1000) < 600, `started ${started}`);
    assert.ok(value(/^process_open_fds (\d+)$/m) > 3);
    const svc = 'grpc_service="fleetlet.agent.v1.InventoryService"';
    assert.ok(value(new RegExp(`^grpc_server_handled_total\\{${svc},grpc_method="RegisterInstance",grpc_code="OK",[^}]*\\} (\\d+)$`, "m")) >= 1);
    assert.ok(value(new RegExp(`^grpc_server_handled_total\\{${svc},grpc_method="GetInstance",grpc_code="NOT_FOUND",[^}]*\\} (\\d+)$`, "m")) >= 1);
    assert.ok(value(new RegExp(`^grpc_server_handling_seconds_count\\{${svc},grpc_method="ListInstances",[^}]*\\} (\\d+)$`, "m")) >= 1);
    assert.match(text, new RegExp(`^grpc_server_handling_seconds_bucket\\{${svc},grpc_method="ListInstances",[^}]*le="\\+Inf"\\} \\d+$`, "m"));
  });
  it("answers 404 elsewhere", async () => {
    assert.equal((await fetch(`http://127.0.0.1:${port}/`)).status, 404);
  });
});
