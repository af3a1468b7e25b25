import { afterAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import { startDaemon, type DaemonProcess } from "../helpers/daemon-process.js";
import { InstanceRegistry } from "../../agent/inventory/instance-registry.js";
import { agentClients } from "../helpers/clients.js";
import { tempDir } from "../helpers/temp-dir.js";
import { standInProcess } from "../helpers/stand-in-process.js";

// The instances' pid: not the agent's, nor the test process (an ancestor of the agent).
const standIn = standInProcess();

// Restart: SIGKILL the agent, start it again on the same state dir, the same instances are
// there; and SIGKILL in the middle of a registration storm never loses an acknowledged
// registration nor leaves a half-written state file.

const state = tempDir("restart");
let agent: DaemonProcess | undefined;
const start = () => startDaemon(["agent", "--listen", "127.0.0.1:0", "--state-dir", state.path, "--metrics-listen", "off"]);

afterAll(async () => {
  await agent?.stop();
  state.remove();
});

describe("agent restart", () => {
  it("keeps registered instances across SIGKILL", async () => {
    agent = await start();
    let c = agentClients(agent.address);
    for (const id of ["vm-a", "vm-b", "vm-c"]) {
      await c.inventory.registerInstance({ instance: { id, name: `name-${id}`, pid: standIn.pid, allocatedVcpus: 3, labels: { k: id } } });
    }
    const before = (await c.inventory.listInstances({})).instances;
    c.close();
    agent.child.kill("SIGKILL");
    await agent.exited;
    agent = await start();
    c = agentClients(agent.address);
    const afterList = (await c.inventory.listInstances({})).instances;
    c.close();
    assert.deepEqual(afterList, before);
  });

  it("never loses an acknowledged registration when killed mid-storm (5 rounds)", async () => {
    const acked = new Set<string>();
    for (let round = 0; round < 5; round++) {
      agent ??= await start();
      const c = agentClients(agent.address);
      let stop = false;
      const writers = Array.from({ length: 8 }, async (_, w) => {
        for (let i = 0; !stop; i++) {
          const id = `r${round}-w${w}-${i}`;
          try {
            await c.inventory.registerInstance({ instance: { id, labels: { round: String(round) } } });
            acked.add(id);
          } catch {
            return; // the agent died under us: this one was not acknowledged
          }
        }
      });
      // Kill at a different moment each round.
      await new Promise((r) => setTimeout(r, 100 + Math.floor(Math.random() * 300)));
      agent.child.kill("SIGKILL");
      await agent.exited;
      stop = true;
      await Promise.all(writers);
      c.close();
      agent = undefined;
      // What is on disk always loads (a torn journal tail is cut off, nothing else is wrong).
      InstanceRegistry.open(state.path).close();
    }
    agent = await start();
    const c = agentClients(agent.address);
    const present = new Set((await c.inventory.listInstances({})).instances.map((i) => i.id));
    c.close();
    const lost = [...acked].filter((id) => !present.has(id));
    assert.ok(acked.size > 50, `only ${acked.size} registrations acknowledged; the storm was too weak to test anything`);
    assert.deepEqual(lost, [], `${lost.length} acknowledged registrations lost`);
  });
});
