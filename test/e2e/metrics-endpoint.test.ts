import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import { startDaemon, type DaemonProcess } from "../helpers/daemon-process.js";
import { agentClients } from "../helpers/clients.js";
import { tempDir } from "../helpers/temp-dir.js";

// The agent's Prometheus endpoint as a scraper sees it: per-instance fleetlet_vm_* series,
// event-loop delay, and the standby instruments with every phase present.

const state = tempDir("metrics-endpoint");
let agent: DaemonProcess;
let port: number;

before(async () => {
  port = await new Promise<number>((res) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => res(p));
    });
  });
  agent = await startDaemon(["agent", "--listen", "127.0.0.1:0", "--state-dir", state.path, "--metrics-listen", `127.0.0.1:${port}`]);
  const c = agentClients(agent.address);
  await c.inventory.registerInstance({ instance: { id: "m-1", name: "scraped", pid: agent.pid, allocatedVcpus: 1 } });
  c.close();
});

after(async () => {
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
  it("answers 404 elsewhere", async () => {
    assert.equal((await fetch(`http://127.0.0.1:${port}/`)).status, 404);
  });
});
