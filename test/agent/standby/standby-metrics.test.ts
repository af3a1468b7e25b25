import { afterAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { InstanceState } from "../../../gen/fleetlet/agent/v1/inventory_pb.js";
import { StandbyPolicySchema } from "../../../gen/fleetlet/agent/v1/standby_pb.js";
import { CONTROLLER_OPERATIONS, StandbyController, type StandbyInstance } from "../../../agent/standby/standby-controller.js";
import { registerStandbyInstruments } from "../../../agent/standby/standby-metrics.js";
import { startDaemonMetrics, type DaemonMetrics } from "../../../lib/otel-metrics.js";
import { parseHostPort } from "../../../lib/listen-address.js";
import { FakeClock, FakeFlowSource, settle } from "./fake-clock.js";

// fleetlet_standby_controller_errors_total{operation}: every operation exported (zeros too), and
// a failure counted under its own.

let metrics: DaemonMetrics | undefined;
afterAll(() => metrics?.shutdown());

describe("standby metrics", () => {
  it("controller errors by operation", async () => {
    metrics = await startDaemonMetrics("test", parseHostPort("127.0.0.1:0"));
    const clock = new FakeClock();
    const source = new FakeFlowSource();
    const vm: StandbyInstance = { id: "vm1", state: InstanceState.RUNNING, networkEnabled: true, ip: "10.0.0.2", hasVgpu: false, policy: create(StandbyPolicySchema, { enabled: true, idleTimeout: "1m0s" }) };
    let failStandby = true;
    const controller = new StandbyController({
      clock,
      source,
      instances: { list: () => [vm], get: (id) => (id === vm.id ? vm : undefined) },
      runtime: { get: () => undefined, set: () => undefined },
      standby: async () => {
        if (failStandby) throw new Error("exit status 1");
      },
      wake: async () => undefined,
      setState: async () => undefined,
    });
    registerStandbyInstruments(metrics.meter, controller, undefined, () => [vm.id]);
    await controller.start();
    source.failDumps = true;
    source.emit("error", new Error("netlink socket closed"));
    await settle();
    await clock.advance(200); // the retry one reconnect delay later fails too
    source.failDumps = false;
    await clock.advance(200); // and the next one succeeds
    await clock.advance(60_000); // the countdown ends; the driver fails
    failStandby = false;
    const text = await (await fetch(metrics.url!)).text();
    const value = (operation: string) => {
      const line = text.split("\n").find((l) => l.startsWith("fleetlet_standby_controller_errors_total{") && l.includes(`operation="${operation}"`));
      assert.ok(line, `a series for ${operation}:\n${text}`);
      return Number(line.split(" ").pop());
    };
    assert.equal(value("resync"), 2);
    assert.equal(value("standby"), 1);
    for (const op of CONTROLLER_OPERATIONS.filter((o) => o !== "resync" && o !== "standby")) assert.equal(value(op), 0, op);
    controller.close();
  });
});
