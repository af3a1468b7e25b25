import { afterEach, beforeEach, describe, it, vi } from "vitest";
import assert from "node:assert/strict";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { Code, type ConnectError } from "@connectrpc/connect";
import { InstanceSchema, InstanceState, SnapshotSchema } from "../../../gen/fleetlet/agent/v1/inventory_pb.js";
import { InstanceRegistry } from "../../../agent/inventory/instance-registry.js";
import { RegistryStore } from "../../../agent/inventory/registry-store.js";
import { MeteringLedger } from "../../../agent/metering/ledger.js";
import { CaptureRecorder } from "../../../agent/metering/capture-recorder.js";
import { tempDir } from "../../helpers/temp-dir.js";

// The registry is the one place state changes, and it writes the metering entries of each
// change atomically with it: the registry file is the commit point, the ledger follows.

const kr = (l: CaptureRecorder) => l.entries().map((e) => `${e.kind} ${e.reason ?? "-"} ${e.vmId}`);
let dir: ReturnType<typeof tempDir>;

beforeEach(() => (dir = tempDir("reg-meter")));
afterEach(() => dir.remove());

describe("registry + metering", () => {
  it("writes each change's entries with it; concurrent changes share one ledger append", async () => {
    const ledger = new CaptureRecorder();
    const r = InstanceRegistry.open(dir.path);
    await r.attachLedger(ledger);
    await Promise.all(Array.from({ length: 50 }, (_, i) => r.upsert(create(InstanceSchema, { id: `vm${i}`, state: InstanceState.RUNNING, allocatedVcpus: 2 }))));
    assert.equal(ledger.entries().length, 100, "storage start + compute start each");
    assert.ok(ledger.appends < 50, `${ledger.appends} appends for 50 registrations (group commit)`);
    await r.setState("vm3", InstanceState.STANDBY, "standby");
    await r.setState("vm3", InstanceState.RUNNING, "wake");
    await r.setState("vm4", InstanceState.STOPPED, "crash");
    await r.setState("vm4", InstanceState.STOPPED, "request"); // no-op
    await r.remove("vm5");
    assert.deepEqual(kr(ledger).slice(100), [
      "vm.compute.stop standby vm3",
      "vm.compute.start hibernate-wake vm3",
      "vm.compute.stop stop-crash vm4",
      "vm.compute.stop stop-user vm5",
      "vm.storage.stop vm-rm vm5",
    ]);
    // Open intervals survive a restart: vm4 starting again is a restart, not a boot.
    const again = InstanceRegistry.open(dir.path);
    await again.attachLedger(ledger);
    await again.setState("vm4", InstanceState.RUNNING);
    assert.equal(kr(ledger).at(-1), "vm.compute.start restart vm4");
  });

  it("after a crash between the registry write and the ledger append, the entries are appended on restart, once", async () => {
    const ledger = new CaptureRecorder();
    const r = InstanceRegistry.open(dir.path);
    await r.attachLedger(ledger);
    await r.upsert(create(InstanceSchema, { id: "a", state: InstanceState.RUNNING }));
    // Simulate the crash: the registry file has the next change and its pending entries, the
    // ledger does not (a failed append leaves exactly that on disk).
    ledger.failNext = true;
    await assert.rejects(r.setState("a", InstanceState.STOPPED), /could not append to the metering ledger: ENOSPC/);
    r.close(); // the "crashed" agent: no retry of its own
    const pending = RegistryStore.open(dir.path).state?.pending;
    assert.deepEqual([pending?.afterSeq, pending?.entries.length], [2, 1]);
    const restarted = InstanceRegistry.open(dir.path);
    assert.equal(restarted.get("a")?.state, InstanceState.STOPPED, "the change is committed");
    await restarted.attachLedger(ledger);
    assert.deepEqual(kr(ledger), ["vm.storage.start boot a", "vm.compute.start boot a", "vm.compute.stop stop-user a"]);
    // Opening again over a ledger that already has them appends nothing more.
    const third = InstanceRegistry.open(dir.path);
    await third.attachLedger(ledger);
    assert.equal(ledger.entries().length, 3);
  });

  it("a repeat of a change whose ledger append failed is acknowledged only with its entries in the ledger", async () => {
    const ledger = new CaptureRecorder();
    const r = InstanceRegistry.open(dir.path);
    await r.attachLedger(ledger);
    await r.upsert(create(InstanceSchema, { id: "a", state: InstanceState.RUNNING }));
    ledger.failNext = true;
    await assert.rejects(r.setState("a", InstanceState.STOPPED), /could not append to the metering ledger/);
    assert.equal(ledger.entries().length, 2, "the stop is committed but not metered yet");
    // The same request again: the state is already STOPPED in memory and on disk, but its entry
    // is only pending. OK must mean metered.
    await r.setState("a", InstanceState.STOPPED);
    assert.deepEqual(kr(ledger), ["vm.storage.start boot a", "vm.compute.start boot a", "vm.compute.stop stop-user a"]);
    r.close();
  });

  it("a crash mid-append that left part of a batch: the rest is appended on restart", async () => {
    const ledger = new CaptureRecorder();
    const r = InstanceRegistry.open(dir.path);
    await r.attachLedger(ledger);
    ledger.failNext = true;
    await assert.rejects(r.upsert(create(InstanceSchema, { id: "p", state: InstanceState.RUNNING })));
    r.close();
    // The first of the batch's two entries reached the disk before the crash.
    const pending = RegistryStore.open(dir.path).state!.pending!.entries as { emittedAtNs: string }[];
    assert.equal(pending.length, 2);
    await ledger.append([{ kind: "vm.storage.start", vmId: "p", reason: "boot", shape: {}, emittedAtNs: BigInt(pending[0]!.emittedAtNs) }]);
    await InstanceRegistry.open(dir.path).attachLedger(ledger);
    assert.deepEqual(kr(ledger), ["vm.storage.start boot p", "vm.compute.start boot p"]);
  });

  it("a ledger that does not match the registry stops the agent", async () => {
    const ledger = new CaptureRecorder();
    const r = InstanceRegistry.open(dir.path);
    await r.attachLedger(ledger);
    await r.upsert(create(InstanceSchema, { id: "a", state: InstanceState.RUNNING }));
    ledger.failNext = true;
    await assert.rejects(r.setState("a", InstanceState.STOPPED));
    r.close();
    const other = new CaptureRecorder(); // e.g. the metering directory of another agent
    await assert.rejects(InstanceRegistry.open(dir.path).attachLedger(other), /registry and ledger do not belong together/);
  });

  it("instances from before metering get their registration entries when the ledger is attached", async () => {
    const file = join(dir.path, "instances.json");
    writeFileSync(file, JSON.stringify({ format: 1, resourceVersion: "2", instances: [{ id: "old1", state: "INSTANCE_STATE_RUNNING" }, { id: "old2", state: "INSTANCE_STATE_CREATED" }] }));
    const ledger = new CaptureRecorder();
    await InstanceRegistry.open(dir.path).attachLedger(ledger);
    assert.deepEqual(kr(ledger), ["vm.storage.start boot old1", "vm.compute.start boot old1", "vm.storage.start boot old2"]);
    await InstanceRegistry.open(dir.path).attachLedger(ledger);
    assert.equal(ledger.entries().length, 3, "only once");
  });

  it("snapshots: start once, stop once (a second removal is NOT_FOUND and writes nothing); restore and clone carry the snapshot", async () => {
    const ledger = new CaptureRecorder();
    const r = InstanceRegistry.open(dir.path);
    await r.attachLedger(ledger);
    const snap = create(SnapshotSchema, { id: "s1", instanceId: "a", hypervisor: "firecracker", storageBytes: 5000n });
    await r.registerSnapshot(snap);
    await r.registerSnapshot(snap); // same again: no second start
    await r.removeSnapshot("s1");
    await assert.rejects(r.removeSnapshot("s1"), /snapshot "s1" not found/);
    assert.deepEqual(ledger.entries().map((e) => [e.kind, e.snapshotId, e.reason ?? "-", e.shape.storageBytes]), [
      ["snap.storage.start", "s1", "-", 5000],
      ["snap.storage.stop", "s1", "snap-rm", 5000],
    ]);
    await r.upsert(create(InstanceSchema, { id: "c1", state: InstanceState.RUNNING, allocatedVcpus: 2 }), { sourceSnapshotId: "s1" });
    await r.restore("c1", create(InstanceSchema, { id: "c1", state: InstanceState.RUNNING, allocatedVcpus: 4 }), "s2");
    assert.deepEqual(
      ledger.entries().slice(2).map((e) => `${e.kind} ${e.reason} ${e.sourceSnapshotId} ${e.shape.cpu}`),
      ["vm.storage.start clone s1 2", "vm.compute.start clone s1 2", "vm.compute.stop restore s2 2", "vm.storage.stop restore s2 2", "vm.storage.start restore s2 4", "vm.compute.start restore s2 4"],
    );
    // Snapshots are durable with the registry.
    assert.deepEqual(InstanceRegistry.open(dir.path).snapshotList(), []);
    await r.registerSnapshot(create(SnapshotSchema, { id: "s3", storageBytes: 1n }));
    assert.deepEqual(InstanceRegistry.open(dir.path).snapshotList().map((x) => x.id), ["s3"]);
  });

  describe("registry and ledger are checked against each other on every start", () => {
    /**
     * A registry and a real ledger with: a, b registered RUNNING, b renamed (a record without
     * metering entries), then a stopped (ledger seq 5, the journal's last line).
     */
    async function stoppedA(): Promise<{ journal: string; ledgerDir: string; lines: string[] }> {
      const ledgerDir = join(dir.path, "metering");
      const ledger = MeteringLedger.open(ledgerDir);
      const r = InstanceRegistry.open(dir.path);
      await r.attachLedger(ledger);
      await r.upsert(create(InstanceSchema, { id: "a", state: InstanceState.RUNNING }));
      await r.upsert(create(InstanceSchema, { id: "b", state: InstanceState.RUNNING }));
      await r.upsert(create(InstanceSchema, { id: "b", state: InstanceState.RUNNING, name: "renamed" }));
      await r.setState("a", InstanceState.STOPPED);
      r.close();
      await ledger.close();
      const journal = join(dir.path, "instances-1.journal");
      return { journal, ledgerDir, lines: readFileSync(journal, "utf8").split("\n").filter(Boolean) };
    }
    const stops = (l: MeteringLedger) => l.read(1, 100).filter((e) => e.kind === "vm.compute.stop").map((e) => `${e.seq} ${e.vmId}`);

    it("the journal's last whole line dropped: start refuses naming the journal and the ledger entry with offsets; no second vm.compute.stop", async () => {
      const { journal, ledgerDir, lines } = await stoppedA();
      const kept = lines.slice(0, -1).map((l) => `${l}\n`).join("");
      writeFileSync(journal, kept);
      const ledger = MeteringLedger.open(ledgerDir);
      assert.deepEqual(stops(ledger), ["5 a"]);
      const offsetOf5 = readFileSync(join(ledgerDir, "ledger-00000000000000000001.jsonl"), "utf8").split("\n").slice(0, 4).join("\n").length + 1;
      const r = InstanceRegistry.open(dir.path);
      assert.equal(r.get("a")?.state, InstanceState.RUNNING, "the stop's record is gone");
      await assert.rejects(r.attachLedger(ledger), (e: Error) => {
        assert.match(e.message, /registry and metering ledger disagree/);
        assert.match(e.message, /says the ledger ends at seq 4, but it holds entries up to 5/);
        assert.ok(e.message.includes(`${join(ledgerDir, "ledger-00000000000000000001.jsonl")} at byte offset ${offsetOf5}`), e.message);
        assert.ok(e.message.includes(`${journal} at byte offset ${Buffer.byteLength(kept)}`), e.message);
        assert.match(e.message, /vm\.compute\.stop a/);
        return true;
      });
      r.close();
      // Before this check the agent started, and the next stop of a metered a second stop.
      assert.deepEqual(stops(ledger), ["5 a"]);
      assert.equal(readFileSync(journal, "utf8"), kept, "nothing changed on disk");
      await ledger.close();
    });

    it("a torn cut of the last line whose entries are in the ledger (it was acknowledged): refused, and the torn bytes are not deleted", async () => {
      const { journal, ledgerDir, lines } = await stoppedA();
      const cut = `${lines.slice(0, -1).map((l) => `${l}\n`).join("")}${lines.at(-1)!.slice(0, 40)}`;
      writeFileSync(journal, cut);
      const ledger = MeteringLedger.open(ledgerDir);
      const r = InstanceRegistry.open(dir.path);
      assert.equal(r.store.tornRecords, 1);
      await assert.rejects(r.attachLedger(ledger), /a registry record was lost/);
      r.close();
      assert.equal(readFileSync(journal, "utf8"), cut, "the torn line is kept for the operator");
      await ledger.close();
    });

    it("a ledger behind the registry (its last entries lost), or a ledger without its registry: refused", async () => {
      const memory = new CaptureRecorder();
      const r = InstanceRegistry.open(dir.path);
      await r.attachLedger(memory);
      await r.upsert(create(InstanceSchema, { id: "a", state: InstanceState.RUNNING }));
      await r.setState("a", InstanceState.STOPPED);
      r.close();
      // The last entry alone missing is a crash between registry and ledger (appended again on
      // start); two are more than the last record carried.
      memory.truncate(1);
      await assert.rejects(InstanceRegistry.open(dir.path).attachLedger(memory), /says the ledger ends at seq 2, but it ends at 1 .*: metering entries the registry committed are missing/);
      rmSync(join(dir.path, "instances.json"));
      rmSync(join(dir.path, "instances-1.journal"));
      await assert.rejects(InstanceRegistry.open(dir.path).attachLedger(memory), /instances\.json: missing, but the metering ledger holds entries 1\.\.1/);
    });

    it("a clean restart passes the check, and records keep saying where the ledger ends", async () => {
      const { ledgerDir } = await stoppedA();
      const ledger = MeteringLedger.open(ledgerDir);
      const r = InstanceRegistry.open(dir.path);
      await r.attachLedger(ledger);
      await r.setState("a", InstanceState.RUNNING);
      r.close();
      assert.equal(RegistryStore.open(dir.path).state?.ledgerSeq, 6);
      assert.equal(RegistryStore.open(dir.path).state?.ledgerId, ledger.ledgerId);
      await ledger.close();
    });

    it("a replaced ledger (metering/ deleted: a new ledger_id, empty) is followed from seq 1, as operations.md says; another registry's full ledger is refused", async () => {
      const { ledgerDir } = await stoppedA();
      const other = join(dir.path, "other-metering");
      const foreign = MeteringLedger.open(other);
      await foreign.append([{ kind: "vm.storage.start", vmId: "x", reason: "boot", shape: {}, emittedAtNs: 1n }]);
      await assert.rejects(InstanceRegistry.open(dir.path).attachLedger(foreign), /counts in ledger [0-9a-f]{16}, but the ledger is [0-9a-f]{16} with entries up to 1: registry and ledger do not belong together/);
      await foreign.close();
      rmSync(ledgerDir, { recursive: true });
      const fresh = MeteringLedger.open(ledgerDir);
      const r = InstanceRegistry.open(dir.path);
      await r.attachLedger(fresh);
      await r.setState("a", InstanceState.RUNNING);
      assert.deepEqual(fresh.read(1, 10).map((e) => `${e.seq} ${e.kind} ${e.vmId}`), ["1 vm.compute.start a"]);
      r.close();
      await fresh.close();
    });
  });

  describe("a ledger disk that is full (issue 12 point 13)", () => {
    afterEach(() => void vi.useRealTimers());

    it("each change writes its entries once, retries append with backoff and no registry write, the episode is told once, the client hears it was applied", async () => {
      vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout"] });
      const ledger = new CaptureRecorder();
      const r = InstanceRegistry.open(dir.path);
      await r.attachLedger(ledger);
      await r.upsert(create(InstanceSchema, { id: "z", state: InstanceState.CREATED })); // the first commit: a snapshot
      const events: string[] = [];
      r.onLedgerTrouble = (e) => events.push(e.kind === "start" ? `start ${e.pendingEntries} ${e.error}` : `end ${e.failures} ${e.pendingEntries}`);
      ledger.failAll = true;
      await assert.rejects(r.upsert(create(InstanceSchema, { id: "a", state: InstanceState.RUNNING })), (e: ConnectError) => e.code === Code.Unavailable && /^applied, not yet metered: the change is durable in the registry, but could not append to the metering ledger: ENOSPC/.test(e.rawMessage));
      assert.equal(r.get("a")?.state, InstanceState.RUNNING, "applied");
      assert.equal(r.pendingMeteringEntries, 2);
      const journal = join(dir.path, "instances-1.journal");
      const size = () => readFileSync(journal).length;
      const afterFirst = size();
      // Retries: 1 s, then 2 s, then 4 s later; none writes to the registry.
      const tick = async (ms: number) => {
        await vi.advanceTimersByTimeAsync(ms);
        for (let k = 0; k < 5; k++) await new Promise((res) => setImmediate(res));
      };
      assert.equal(ledger.failures, 1);
      await tick(1000);
      assert.equal(ledger.failures, 2);
      await tick(1000);
      assert.equal(ledger.failures, 2, "backed off: the next retry is 2 s after the last");
      await tick(1000);
      assert.equal(ledger.failures, 3);
      await tick(4000);
      assert.equal(ledger.failures, 4);
      assert.equal(size(), afterFirst, "retries write nothing to the registry");
      // Another change during the outage records only its own entries, on top of the pending ones.
      await assert.rejects(r.upsert(create(InstanceSchema, { id: "b", state: InstanceState.CREATED })), /applied, not yet metered/);
      const last = JSON.parse(readFileSync(journal, "utf8").trimEnd().split("\n").at(-1)!.slice(9)) as { pending?: unknown; pm?: unknown[]; ls?: number };
      assert.equal(last.pending, undefined);
      assert.equal(last.pm?.length, 1, "b's storage start only, not a's entries again");
      assert.equal(last.ls, 1 + 3, "the ledger's end once all three pending entries are in");
      assert.deepEqual(events, ["start 2 ENOSPC: no space left on device, write"], "told once per episode");
      // What a restart would load: all three pending, in order.
      const stored = RegistryStore.open(dir.path).state!.pending!;
      assert.deepEqual([stored.afterSeq, (stored.entries as { vmId: string }[]).map((e) => e.vmId)], [1, ["a", "a", "b"]]);
      // The disk has room again: the next retry appends them, once, and the episode ends.
      ledger.failAll = false;
      await tick(60_000);
      assert.deepEqual(kr(ledger), ["vm.storage.start boot z", "vm.storage.start boot a", "vm.compute.start boot a", "vm.storage.start boot b"]);
      assert.deepEqual(events.slice(1), ["end 5 3"]);
      assert.equal(r.pendingMeteringEntries, 0);
      assert.equal(r.ledgerAppendFailures, 5);
      await r.setState("a", InstanceState.RUNNING); // the same request again: OK now
      r.close();
      const again = InstanceRegistry.open(dir.path);
      await again.attachLedger(ledger);
      assert.equal(ledger.entries().length, 4, "nothing appended twice on restart");
    });
  });
});

describe("metering off (the agent's --metering off: no ledger attached, issue 12 point 7)", () => {
  it("changes while off write no entries; turned on again, the start-up check passes and still holds", async () => {
    const ledger = new CaptureRecorder("00000000000000aa");
    const on = InstanceRegistry.open(dir.path);
    await on.attachLedger(ledger);
    await on.upsert(create(InstanceSchema, { id: "a", state: InstanceState.RUNNING }));
    // c's entries are committed in the registry, not yet in the ledger, when metering goes off.
    ledger.failNext = true;
    await assert.rejects(on.upsert(create(InstanceSchema, { id: "c", state: InstanceState.CREATED })), /applied, not yet metered/);
    on.close();
    const stored = () => {
      const st = RegistryStore.open(dir.path).state!;
      return [st.ledgerSeq, st.ledgerId, st.pending?.afterSeq, st.pending?.entries.length];
    };
    assert.deepEqual(stored(), [3, "00000000000000aa", 2, 1]);

    // Off: the registry runs without a ledger; its changes are applied and not metered.
    const off = InstanceRegistry.open(dir.path);
    await off.setState("a", InstanceState.STOPPED);
    await off.upsert(create(InstanceSchema, { id: "b", state: InstanceState.RUNNING }));
    await off.upsert(create(InstanceSchema, { id: "b", state: InstanceState.RUNNING })); // a repeat: no write
    await off.remove("a");
    assert.equal(off.pendingMeteringEntries, 1, "c's entry waits for the ledger; nothing of the off period joins it");
    const writes = off.writes;
    off.close();
    assert.equal(writes, 3);
    assert.equal(ledger.lastSeq, 2);
    // Its records still say where the ledger ends and what it still owes (nothing was written
    // to it), so the check stays armed instead of being skipped as for a registry from before
    // it was recorded.
    assert.deepEqual(stored(), [3, "00000000000000aa", 2, 1]);

    // On again: starts, settles what an earlier run owed, and meters on from the registry's state.
    const again = InstanceRegistry.open(dir.path);
    await again.attachLedger(ledger);
    await again.setState("b", InstanceState.STOPPED);
    again.close();
    assert.deepEqual(kr(ledger), ["vm.storage.start boot a", "vm.compute.start boot a", "vm.storage.start boot c", "vm.compute.stop stop-user b"]);
    assert.equal(RegistryStore.open(dir.path).state?.ledgerSeq, 4);

    // The check is live after an off period: a ledger that lost entries is refused.
    ledger.truncate(1);
    await assert.rejects(InstanceRegistry.open(dir.path).attachLedger(ledger), /says the ledger ends at seq 3, but it ends at 1 .*: metering entries the registry committed are missing/);
  });

  it("a registry written with metering off from the start: metering turned on later starts a ledger from seq 1", async () => {
    const off = InstanceRegistry.open(dir.path);
    await off.upsert(create(InstanceSchema, { id: "a", state: InstanceState.RUNNING }));
    off.close();
    const ledger = new CaptureRecorder("00000000000000bb");
    const on = InstanceRegistry.open(dir.path);
    await on.attachLedger(ledger);
    await on.setState("a", InstanceState.STOPPED);
    on.close();
    assert.deepEqual(kr(ledger), ["vm.compute.stop stop-user a"]);
    assert.equal(RegistryStore.open(dir.path).state?.ledgerSeq, 1);
  });
});
