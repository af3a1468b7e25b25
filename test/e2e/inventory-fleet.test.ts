import { until } from "../helpers/until.js";
import { afterAll, beforeAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import { createClient, type Client } from "@connectrpc/connect";
import { InstanceState, InventoryService, type Instance } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { FleetEventType, FleetService, HostSyncState, type FleetInstance, type ListInstancesResponse } from "../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { createGrpcJsTransport } from "../../lib/rpc/grpc-transport.js";
import { prng } from "../helpers/random-message.js";
import { startDaemon, type DaemonProcess } from "../helpers/daemon-process.js";
import { startTcpProxy, type TcpProxy } from "../helpers/tcp-proxy-process.js";
import { compareMergedView } from "../helpers/inventory-checker.js";
import { tempDir } from "../helpers/temp-dir.js";

// inventory.md end to end with separate processes: an aggregator following 3 agents, each
// through a TCP proxy process (so a partition is a SIGSTOP of the proxy: the link is cut while
// the agent keeps serving its control plane). Under churn, h1's link is cut while instances are
// removed on it and it is SIGKILLed and restarted (a new incarnation: a relist must delete what
// vanished), and h2's link is cut for longer than --stale-after while instances are removed on
// it (resumed from the cursor: the deletes come as events); afterwards the merged view must equal the union of the agents' own lists
// exactly. An injected dropped change is repaired by the digest; an aggregator restart serves
// the stored view as STALE and resumes from its cursors without relisting.

const N = 3;
const STALE_AFTER_MS = 1500;
const DIGEST_INTERVAL_MS = 1000;
const DROPPED = "dropped-once";
const agentDirs = Array.from({ length: N }, (_, i) => tempDir(`invf-a${i}`));
const aggDir = tempDir("invf-agg");
const agents: (DaemonProcess | undefined)[] = [];
const proxies: TcpProxy[] = [];
const ports: number[] = [];
let aggregator: DaemonProcess | undefined;

const startAgent = async (i: number) => {
  const a = await startDaemon(["agent", "--listen", `127.0.0.1:${ports[i] ?? 0}`, "--state-dir", agentDirs[i]!.path, "--metrics-listen", "off", "--runtime", "none", "--standby", "off"]);
  ports[i] = Number(a.address.split(":").at(-1));
  return a;
};
const startAggregator = () =>
  startDaemon(
    [
      "aggregator",
      "--listen",
      "127.0.0.1:0",
      "--state-dir",
      aggDir.path,
      "--metrics-listen",
      "off",
      "--stale-after",
      `${STALE_AFTER_MS}ms`,
      "--digest-interval",
      `${DIGEST_INTERVAL_MS}ms`,
      "--reconnect-backoff-max",
      "500ms",
      "--hosts",
      proxies.map((p, i) => `h${i}=${p.address}`).join(","),
    ],
    15_000,
    { FLEETLET_TEST_DROP_INVENTORY_EVENT: DROPPED, FLEETLET_ENABLE_FAULT_INJECTION: "1" },
  );

function inventory(i: number): { inv: Client<typeof InventoryService>; close(): void } {
  const t = createGrpcJsTransport(agents[i]!.address);
  return { inv: createClient(InventoryService, t), close: () => t.close() };
}

function fleet(): { fleet: Client<typeof FleetService>; close(): void } {
  const t = createGrpcJsTransport(aggregator!.address);
  return { fleet: createClient(FleetService, t), close: () => t.close() };
}


/** Each agent's own list, as (host, instance). */
async function agentLists(): Promise<{ host: string; version: bigint; instances: Instance[] }[]> {
  const out = [];
  for (let i = 0; i < N; i++) {
    const c = inventory(i);
    try {
      const r = await c.inv.listInstances({});
      out.push({ host: `h${i}`, version: r.resourceVersion, instances: r.instances });
    } finally {
      c.close();
    }
  }
  return out;
}

function compare(merged: ListInstancesResponse, lists: { host: string; instances: Instance[] }[]): string[] {
  return compareMergedView(merged.instances, lists);
}

/** Waits until every host is SYNCED at its agent's current version, then returns the view. */
async function settledView(): Promise<{ view: ListInstancesResponse; lists: Awaited<ReturnType<typeof agentLists>> }> {
  return until("every host SYNCED at its agent's version", async () => {
    const lists = await agentLists();
    const c = fleet();
    try {
      const view = await c.fleet.listInstances({});
      const ok = lists.every((l) => view.hosts.some((h) => h.host === l.host && h.state === HostSyncState.SYNCED && h.resourceVersion === l.version));
      return ok ? { view, lists } : undefined;
    } finally {
      c.close();
    }
  });
}

beforeAll(async () => {
  for (let i = 0; i < N; i++) {
    agents[i] = await startAgent(i);
    proxies[i] = await startTcpProxy(agents[i]!.address);
  }
  aggregator = await startAggregator();
});

afterAll(async () => {
  await Promise.all([...agents.map((a) => a?.stop()), aggregator?.stop(), ...proxies.map((p) => p.stop())]);
  for (const d of [...agentDirs, aggDir]) d.remove();
});

describe("the merged inventory with separate processes", () => {
  it("under churn, an agent restart and a cut link: the merged view equals the union of the agents' lists (no ghosts, nothing missing)", async () => {
    // A watching client from the first list on: its own copy, built from events only, must
    // end equal to the view too.
    const watcher = fleet();
    const watched = new Map<string, FleetInstance>();
    const abort = new AbortController();
    const watching = (async () => {
      try {
        for await (const m of watcher.fleet.watchInstances({}, { signal: abort.signal })) {
          for (const e of m.events) {
            if (e.type === FleetEventType.RESYNC) throw new Error(`RESYNC: ${e.reason}`);
            if (e.type === FleetEventType.ADDED || e.type === FleetEventType.MODIFIED) watched.set(`${e.instance!.host}/${e.instance!.id}`, e.instance!);
            if (e.type === FleetEventType.DELETED) watched.delete(`${e.instance!.host}/${e.instance!.id}`);
          }
        }
      } catch (e) {
        if (!abort.signal.aborted) throw e;
      }
    })();

    // Instances the churn never touches: removed while a link is cut, they would stay behind
    // as ghosts if a relist did not delete.
    for (let i = 0; i < N; i++) {
      const c = inventory(i);
      for (let k = 0; k < 10; k++) await c.inv.registerInstance({ instance: { id: `fixed-${k}`, state: InstanceState.RUNNING } });
      c.close();
    }
    let stop = false;
    let changes = 0;
    const rand = prng(11);
    // Churn on every agent: register, change state, deregister ids vm0..vm29.
    const churn = Array.from({ length: N }, async (_, i) => {
      while (!stop) {
        const a = agents[i];
        if (!a) {
          await new Promise((r) => setTimeout(r, 50));
          continue;
        }
        const c = inventory(i);
        try {
          while (!stop && agents[i] === a) {
            const id = `vm${Math.floor(rand() * 30)}`;
            const roll = rand();
            if (roll < 0.5) await c.inv.registerInstance({ instance: { id, state: InstanceState.RUNNING, labels: { round: String(changes % 7) } } }, { timeoutMs: 3000 });
            else if (roll < 0.8) await c.inv.setInstanceState({ instanceId: id, state: rand() < 0.5 ? InstanceState.STOPPED : InstanceState.RUNNING }, { timeoutMs: 3000 }).catch(() => undefined);
            else await c.inv.deregisterInstance({ instanceId: id }, { timeoutMs: 3000 }).catch(() => undefined);
            changes++;
            await new Promise((r) => setTimeout(r, 5));
          }
        } catch {
          await new Promise((r) => setTimeout(r, 100)); // the agent was killed: reconnect
        } finally {
          c.close();
        }
      }
    });

    await new Promise((r) => setTimeout(r, 1500));
    // h1: its link is cut, instances are removed on it, then it restarts (a new incarnation):
    // the aggregator cannot resume and must relist — deleting what vanished meanwhile.
    const before1 = (await settledOrNow()).hosts.find((h) => h.host === "h1")!;
    proxies[1]!.child.kill("SIGSTOP");
    const c1 = inventory(1);
    for (let k = 0; k < 5; k++) await c1.inv.deregisterInstance({ instanceId: `fixed-${k}` });
    c1.close();
    const a1 = agents[1]!;
    agents[1] = undefined;
    a1.child.kill("SIGKILL");
    await a1.exited;
    agents[1] = await startAgent(1);
    proxies[1]!.child.kill("SIGCONT");

    // h2's link is cut for longer than --stale-after while instances are removed on h2.
    proxies[2]!.child.kill("SIGSTOP");
    const staleSeen = await until("h2 STALE", async () => {
      const c = fleet();
      try {
        const h = (await c.fleet.listInstances({ hosts: ["h2"] })).hosts[0];
        return h?.state === HostSyncState.STALE ? h : undefined;
      } finally {
        c.close();
      }
    });
    assert.ok(staleSeen.instanceCount > 0, "a STALE host keeps its last-known instances");
    const c2 = inventory(2);
    for (let k = 0; k < 5; k++) await c2.inv.deregisterInstance({ instanceId: `fixed-${k}` });
    c2.close();
    await new Promise((r) => setTimeout(r, 500));
    proxies[2]!.child.kill("SIGCONT");
    await new Promise((r) => setTimeout(r, 1500));
    stop = true;
    await Promise.all(churn);

    const { view, lists } = await settledView();
    for (const h of ["h1", "h2"]) assert.deepEqual(view.instances.filter((i) => i.host === h && i.id.startsWith("fixed-")).map((i) => i.id), ["fixed-5", "fixed-6", "fixed-7", "fixed-8", "fixed-9"], `${h}: the removed ones are gone`);
    assert.ok(changes > 200, `only ${changes} changes: the churn was too weak to test anything`);
    assert.deepEqual(compare(view, lists), [], "the merged view equals the agents' lists");
    const h1 = view.hosts.find((h) => h.host === "h1")!;
    assert.notEqual(h1.incarnation, before1.incarnation, "h1 is followed at its new incarnation");
    assert.ok(h1.relists >= 2, `h1 was relisted after its restart (relists ${h1.relists})`);
    // The watching client saw every change: its copy is the view.
    await until("the watcher caught up", async () => (watched.size === view.instances.length ? true : undefined), 5000);
    abort.abort();
    await watching;
    watcher.close();
    assert.deepEqual(
      compare({ ...view, instances: [...watched.values()] } as ListInstancesResponse, lists),
      [],
      "a client's copy built from WatchInstances events equals the agents' lists",
    );
  });

  it("an injected dropped change is repaired by the digest within two digest intervals", async () => {
    await settledView();
    const c = inventory(0);
    const registered = Date.now();
    await c.inv.registerInstance({ instance: { id: DROPPED, state: InstanceState.RUNNING } });
    c.close();
    const f = fleet();
    const repaired = await until("the dropped instance in the view", async () => {
      const r = await f.fleet.listInstances({ hosts: ["h0"] });
      return r.instances.some((i) => i.id === DROPPED) ? r : undefined;
    });
    const tookMs = Date.now() - registered;
    f.close();
    const h0 = repaired.hosts[0]!;
    assert.ok(h0.digestMismatches >= 1, "found by a digest mismatch, not by chance");
    assert.ok(tookMs <= 2 * DIGEST_INTERVAL_MS + 500, `repaired after ${tookMs} ms (digest interval ${DIGEST_INTERVAL_MS} ms)`);
    const { view, lists } = await settledView();
    assert.deepEqual(compare(view, lists), []);
  });

  it("an aggregator restart serves the stored view as STALE at once, resumes hosts from their cursors without a relist, relists a restarted one with its deletes", async () => {
    const { view: beforeRestart } = await settledView();
    aggregator!.child.kill("SIGKILL");
    await aggregator!.exited;
    // h0's link stays cut across the restart: it must be served from the store, STALE.
    proxies[0]!.child.kill("SIGSTOP");
    // While no aggregator watches, h2 loses two instances and restarts (a new incarnation):
    // its stored cursor cannot be resumed, and only a relist that deletes removes them.
    const c2 = inventory(2);
    for (const id of ["fixed-5", "fixed-6"]) await c2.inv.deregisterInstance({ instanceId: id });
    c2.close();
    const a2 = agents[2]!;
    agents[2] = undefined;
    a2.child.kill("SIGKILL");
    await a2.exited;
    agents[2] = await startAgent(2);
    aggregator = await startAggregator();
    const f = fleet();
    const first = await f.fleet.listInstances({});
    const h0 = first.hosts.find((h) => h.host === "h0")!;
    assert.equal(h0.state, HostSyncState.STALE);
    assert.equal(
      first.instances.filter((i) => i.host === "h0").length,
      beforeRestart.instances.filter((i) => i.host === "h0").length,
      "h0's last-known instances are served from the store",
    );
    // h1 resumes from its stored cursor: SYNCED with no relist; h2 is relisted.
    const resumed = await until("h1, h2 SYNCED", async () => {
      const r = await f.fleet.listInstances({});
      return ["h1", "h2"].every((h) => r.hosts.find((x) => x.host === h)?.state === HostSyncState.SYNCED) ? r : undefined;
    });
    assert.equal(resumed.hosts.find((x) => x.host === "h1")!.relists, 0, "h1 resumed without relisting");
    assert.equal(resumed.hosts.find((x) => x.host === "h2")!.relists, 1, "h2 (restarted) was relisted");
    assert.deepEqual(resumed.instances.filter((i) => i.host === "h2" && i.id.startsWith("fixed-")).map((i) => i.id), ["fixed-7", "fixed-8", "fixed-9"], "the relist deleted what vanished");
    proxies[0]!.child.kill("SIGCONT");
    const { view, lists } = await settledView();
    assert.equal(view.hosts.find((h) => h.host === "h0")!.relists, 0, "h0 resumed without relisting too");
    assert.deepEqual(compare(view, lists), []);
    f.close();
  });

  it("bad input names the field; a foreign cursor is RESYNC", async () => {
    const f = fleet();
    await assert.rejects(f.fleet.listInstances({ states: [99 as InstanceState] }), /invalid_argument.*states\[0\]: must be one of/i);
    await assert.rejects(f.fleet.listInstances({ hosts: ["nope"] }), /not_found.*host "nope" not found/i);
    const events = [];
    for await (const m of f.fleet.watchInstances({ cursor: "0000000000000000.5" })) events.push(...m.events);
    assert.deepEqual(events.map((e) => [FleetEventType[e.type], /another aggregator incarnation/.test(e.reason)]), [["RESYNC", true]]);
    // A filtered watch: only RUNNING instances of h1.
    const filtered = await f.fleet.listInstances({ hosts: ["h1"], states: [InstanceState.RUNNING] });
    assert.ok(filtered.instances.every((i) => i.host === "h1" && i.state === InstanceState.RUNNING));
    assert.deepEqual(filtered.hosts.map((h) => h.host), ["h1"]);
    f.close();
  });
});

/** The current view without waiting for it to settle. */
async function settledOrNow(): Promise<ListInstancesResponse> {
  const c = fleet();
  try {
    return await c.fleet.listInstances({});
  } finally {
    c.close();
  }
}
