import { until } from "../helpers/until.js";
import { afterAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import net from "node:net";
import { chmodSync, existsSync, lstatSync, mkdirSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { InstanceState, InventoryService } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { FleetService, HostSyncState } from "../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { createGrpcJsTransport } from "../../lib/rpc/grpc-transport.js";
import { runFleetlet, startDaemon, type DaemonProcess } from "../helpers/daemon-process.js";
import { tempDir } from "../helpers/temp-dir.js";

// security.md "State on disk", end to end with the built daemons: after an agent and an
// aggregator ran (ledger, registry, hosts, both SQLite stores with their -wal and -shm), every
// directory is 0700 and every file 0600 even under umask 000 (SQLite creates its files 0644
// whatever the umask); a state dir writable by others stops a daemon with one line naming it;
// what an earlier version left 0755 / 0644 is narrowed with a log line; `fleetlet up` logs are
// 0600; a fault-injection variable without FLEETLET_ENABLE_FAULT_INJECTION=1 does nothing.

const dirs: { remove(): void }[] = [];
const daemons: DaemonProcess[] = [];
afterAll(async () => {
  await Promise.all(daemons.map((d) => d.stop()));
  for (const d of dirs) d.remove();
});

function dir(prefix: string): string {
  const d = tempDir(prefix);
  dirs.push(d);
  return d.path;
}

/** Spawns with umask 000, so the modes seen are the ones the code asks for, not the umask's. */
async function withUmask0<T>(f: () => Promise<T>): Promise<T> {
  const before = process.umask(0);
  try {
    return await f();
  } finally {
    process.umask(before);
  }
}


/** Every path under `root` (itself included) whose mode is not 0700 (dirs) / 0600 (files). */
function wrongModes(root: string): { names: string[]; wrong: string[] } {
  const names: string[] = [];
  const wrong: string[] = [];
  const visit = (p: string) => {
    const st = lstatSync(p);
    const mode = st.mode & 0o7777;
    names.push(p.slice(root.length + 1));
    if (st.isDirectory()) {
      if (mode !== 0o700) wrong.push(`${p} 0${mode.toString(8)}`);
      for (const n of readdirSync(p)) visit(join(p, n));
    } else if (mode !== 0o600) wrong.push(`${p} 0${mode.toString(8)}`);
  };
  visit(root);
  return { names, wrong };
}

const agentArgs = (stateDir: string) => ["agent", "--listen", "127.0.0.1:0", "--state-dir", stateDir, "--metrics-listen", "off", "--runtime", "none", "--standby", "off"];

function freePort(): Promise<number> {
  return new Promise((res) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => res(port));
    });
  });
}

describe("state on disk", () => {
  it("after an agent and an aggregator ran: every dir 0700, every file 0600 (SQLite -wal/-shm, ledger .crc included), under umask 000", async () => {
    const agentDir = dir("modes-agent");
    const aggDir = dir("modes-agg");
    // An aggregator state dir as an earlier version left it: 0755, hosts.json 0644.
    chmodSync(aggDir, 0o755);
    writeFileSync(join(aggDir, "hosts.json"), `${JSON.stringify({ hosts: [] })}\n`, { mode: 0o644 });
    chmodSync(join(aggDir, "hosts.json"), 0o644);
    const agent = await withUmask0(() => startDaemon(agentArgs(agentDir)));
    daemons.push(agent);
    const agg = await withUmask0(() =>
      startDaemon(["aggregator", "--listen", "127.0.0.1:0", "--state-dir", aggDir, "--metrics-listen", "off", "--hosts", `h0=${agent.address}`]),
    );
    daemons.push(agg);
    assert.ok(
      agg.lines.some((l) => l.includes("narrowed a path readable by group or others") && l.includes(`"path":"${aggDir}/hosts.json"`) && l.includes('"from":"0644"')),
      agg.lines.join("\n"),
    );

    const at = createGrpcJsTransport(agent.address);
    const ft = createGrpcJsTransport(agg.address);
    try {
      const inv = createClient(InventoryService, at);
      for (const id of ["vm1", "vm2", "vm3"]) await inv.registerInstance({ instance: { id, state: InstanceState.RUNNING } });
      const fleet = createClient(FleetService, ft);
      await fleet.addHost({ name: "h1", address: "127.0.0.1:1" });
      await until("metering entries merged", async () => ((await fleet.readMeteringEntries({})).entries.length >= 3 ? true : undefined));
      await until("vm3 in the merged inventory", async () => ((await fleet.listInstances({})).instances.some((i) => i.id === "vm3") ? true : undefined));
    } finally {
      at.close();
      ft.close();
    }
    // Walked while both run: the SQLite -wal and -shm exist only while a connection is open.
    const a = wrongModes(agentDir);
    const g = wrongModes(aggDir);
    for (const name of ["instances.json", "metering", "metering/ledger.json", "agent.pid"]) assert.ok(a.names.includes(name), `${name} in ${a.names.join(", ")}`);
    assert.ok(a.names.some((n) => /^metering\/ledger-\d{20}\.crc$/.test(n)) && a.names.some((n) => /^metering\/ledger-\d{20}\.jsonl$/.test(n)), a.names.join(", "));
    for (const name of ["hosts.json", "metering.sqlite", "metering.sqlite-wal", "metering.sqlite-shm", "inventory.sqlite", "inventory.sqlite-wal", "inventory.sqlite-shm", "aggregator.pid"]) {
      assert.ok(g.names.includes(name), `${name} in ${g.names.join(", ")}`);
    }
    assert.deepEqual([...a.wrong, ...g.wrong], []);
  });

  it("a state dir writable by others, or a group-writable file in it: the daemon does not start and names the path and its mode", async () => {
    const open = dir("modes-0777");
    chmodSync(open, 0o777);
    const r = await runFleetlet(agentArgs(open));
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, new RegExp(`state dir ${open}: ${open} is writable by group or others \\(mode 0777\\); refusing to start`));
    assert.equal(existsSync(join(open, "agent.pid")), false);

    const agg = dir("modes-gw");
    writeFileSync(join(agg, "metering.sqlite"), "");
    chmodSync(join(agg, "metering.sqlite"), 0o664);
    const r2 = await runFleetlet(["aggregator", "--listen", "127.0.0.1:0", "--state-dir", agg, "--metrics-listen", "off"]);
    assert.notEqual(r2.code, 0);
    assert.match(r2.stderr, new RegExp(`state dir ${agg}: ${agg}/metering.sqlite is writable by group or others \\(mode 0664\\); refusing to start`));
  });

  it("FLEETLET_TEST_DROP_INVENTORY_EVENT does nothing without FLEETLET_ENABLE_FAULT_INJECTION=1, and drops the event with it", async () => {
    const agent = await startDaemon(agentArgs(dir("fi-agent")));
    daemons.push(agent);
    const aggregatorWith = async (env: Record<string, string>) => {
      const a = await startDaemon(
        ["aggregator", "--listen", "127.0.0.1:0", "--state-dir", dir("fi-agg"), "--metrics-listen", "off", "--digest-interval", "10m", "--hosts", `h0=${agent.address}`],
        15_000,
        env,
      );
      daemons.push(a);
      return a;
    };
    const plain = await aggregatorWith({ FLEETLET_TEST_DROP_INVENTORY_EVENT: "vm-dropped" });
    const enabled = await aggregatorWith({ FLEETLET_TEST_DROP_INVENTORY_EVENT: "vm-dropped", FLEETLET_ENABLE_FAULT_INJECTION: "1" });
    assert.ok(plain.lines.some((l) => l.includes("fault-injection variables ignored")), plain.lines.join("\n"));
    assert.ok(enabled.lines.some((l) => l.includes("FAULT INJECTION ENABLED")), enabled.lines.join("\n"));
    const at = createGrpcJsTransport(agent.address);
    const transports = [at];
    try {
      const views = [plain, enabled].map((a) => {
        const t = createGrpcJsTransport(a.address);
        transports.push(t);
        return createClient(FleetService, t);
      });
      // Both follow h0 by its watch before the change, so it comes as a watched event.
      for (const v of views) await until("h0 SYNCED", async () => ((await v.listInstances({})).hosts.some((h) => h.host === "h0" && h.state === HostSyncState.SYNCED) ? true : undefined));
      const inv = createClient(InventoryService, at);
      await inv.registerInstance({ instance: { id: "vm-dropped", state: InstanceState.RUNNING } });
      await inv.registerInstance({ instance: { id: "vm-after", state: InstanceState.RUNNING } });
      const version = (await inv.listInstances({})).resourceVersion;
      // Each view at the agent's version (so past the change): only the enabled one lost it.
      const seen = [];
      for (const v of views) {
        const view = await until("the view at the agent's version", async () => {
          const r = await v.listInstances({});
          return r.hosts.some((h) => h.host === "h0" && h.resourceVersion === version) ? r : undefined;
        });
        seen.push(view.instances.map((i) => i.id).sort());
      }
      assert.deepEqual(seen, [
        ["vm-after", "vm-dropped"],
        ["vm-after"],
      ]);
    } finally {
      for (const t of transports) t.close();
    }
  });

  it("`fleetlet up` writes its logs 0600 (narrowing one an earlier version left 0644) in a 0700 dir, under umask 000", async () => {
    const base = join(dir("modes-up"), "up");
    mkdirSync(base, { mode: 0o700 });
    writeFileSync(join(base, "agent.log"), "", { mode: 0o644 });
    chmodSync(join(base, "agent.log"), 0o644);
    const [aggPort, agentPort] = [await freePort(), await freePort()];
    const r = await withUmask0(() =>
      runFleetlet(
        ["up", "--state-dir", base, "--aggregator-listen", `127.0.0.1:${aggPort}`, "--agent-listen", `127.0.0.1:${agentPort}`,
          "--agent-metrics-listen", "off", "--aggregator-metrics-listen", "off", "--no-demo", "--duration", "1s", "--refresh", "1s"],
        60_000,
      ),
    );
    assert.equal(r.code, 0, r.stderr + r.stdout);
    const { names, wrong } = wrongModes(base);
    for (const name of ["agent.log", "aggregator.log", "agent", "aggregator"]) assert.ok(names.includes(name), `${name} in ${names.join(", ")}`);
    assert.deepEqual(wrong, []);
  });
});
