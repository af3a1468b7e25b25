import { afterAll, beforeAll, describe, it } from "vitest";
import assert from "node:assert/strict";
import * as grpc from "@grpc/grpc-js";
import { toBinary, type DescService } from "@bufbuild/protobuf";
import { InventoryService } from "../../gen/fleetlet/agent/v1/inventory_pb.js";
import { MetricsService } from "../../gen/fleetlet/agent/v1/metrics_pb.js";
import { FleetService } from "../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { RuntimeService } from "../../gen/fleetlet/agent/v1/runtime_pb.js";
import { MeteringService } from "../../gen/fleetlet/agent/v1/metering_pb.js";
import { StandbyService } from "../../gen/fleetlet/agent/v1/standby_pb.js";
import { TEST_IMAGE, TestDockerd, dockerdSkipReason } from "../helpers/dockerd.js";
import { mustRunInCi } from "../helpers/root.js";
import { startDaemon, type DaemonProcess } from "../helpers/daemon-process.js";
import { tempDir } from "../helpers/temp-dir.js";
import { prng, randomBytes, randomMessage } from "../helpers/random-message.js";
import { agentClients } from "../helpers/clients.js";
import { Code, ConnectError } from "@connectrpc/connect";
import { errorMessage } from "../../lib/error-message.js";

// Random bytes and random field values to every method of both daemons. Every call must end
// with a deliberate status: UNKNOWN or INTERNAL would mean an unhandled exception. The daemons
// must still be alive and serving afterwards.

const SEED = Number(process.env.FLEETLET_FUZZ_SEED ?? Date.now() % 1e9);
const CASES = Number(process.env.FLEETLET_FUZZ_CASES ?? 150);
const dirs = [tempDir("fuzz-agent"), tempDir("fuzz-agg")];
let agent: DaemonProcess;
let aggregator: DaemonProcess;

// RuntimeService is fuzzed against a real engine when one can run (always in CI): random
// external ids, tails and cursors reach dockerd.
let dockerd: TestDockerd | undefined;

beforeAll(async () => {
  let runtime = ["--runtime", "none"];
  if (!mustRunInCi(dockerdSkipReason())) {
    dockerd = await TestDockerd.start();
    dockerd.docker("run", "-d", "--network", "none", "--name", "fz1", TEST_IMAGE, "sh", "-c", "echo fuzz; exec sleep 1000");
    runtime = ["--runtime", "docker", "--docker-host", dockerd.host];
  }
  agent = await startDaemon(["agent", "--listen", "127.0.0.1:0", "--state-dir", dirs[0]!.path, "--metrics-listen", "off", "--log-level", "info", ...runtime]);
  aggregator = await startDaemon(["aggregator", "--listen", "127.0.0.1:0", "--state-dir", dirs[1]!.path, "--metrics-listen", "off", "--hosts", `self=${agent.address}`]);
});

afterAll(async () => {
  await Promise.all([agent.stop(), aggregator.stop()]);
  await dockerd?.stop();
  for (const d of dirs) d.remove();
});

function callRaw(client: grpc.Client, path: string, streaming: boolean, body: Buffer): Promise<grpc.status> {
  const id = (b: Buffer) => b;
  const deadline = Date.now() + 3000;
  return new Promise((res) => {
    if (!streaming) {
      client.makeUnaryRequest(path, id, id, body, new grpc.Metadata(), { deadline }, (err) => res(err ? err.code : grpc.status.OK));
      return;
    }
    const call = client.makeServerStreamRequest(path, id, id, body, new grpc.Metadata(), { deadline });
    // One message is proof enough that a watch started; then hang up.
    call.on("data", () => call.cancel());
    call.on("error", () => undefined);
    call.on("status", (s: grpc.StatusObject) => res(s.code));
  });
}

async function fuzz(address: string, services: DescService[], pid: number): Promise<Map<string, number>> {
  const rnd = prng(SEED);
  const client = new grpc.Client(address, grpc.credentials.createInsecure());
  const seen = new Map<string, number>();
  try {
    for (let i = 0; i < CASES; i++) {
      for (const service of services) {
        for (const method of service.methods) {
          const path = `/${service.typeName}/${method.name}`;
          const body = rnd() < 0.5 ? randomBytes(method.input, rnd) : Buffer.from(toBinary(method.input, randomMessage(method.input, rnd)));
          const code = await callRaw(client, path, method.methodKind === "server_streaming", body);
          const key = `${method.name}:${grpc.status[code]}`;
          seen.set(key, (seen.get(key) ?? 0) + 1);
          assert.ok(
            code !== grpc.status.UNKNOWN && code !== grpc.status.INTERNAL,
            `${path} answered ${grpc.status[code]} for ${body.toString("hex")} (seed ${SEED}, case ${i})`,
          );
        }
      }
      process.kill(pid, 0); // still alive
    }
  } finally {
    client.close();
  }
  return seen;
}

describe("bad input through the agent's port", () => {
  const cases: [string, object, RegExp][] = [
    ["an id with '/'", { id: "a/b" }, /^instance\.id: "a\/b" must match/],
    ["a negative pid", { id: "x", pid: -4 }, /^instance\.pid: must be between 1 and 4194304, got -4$/],
    ["a tap name ../x", { id: "x", tapDevice: "../x" }, /^instance\.tap_device: interface name "\.\.\/x" must not contain/],
    ["a tap name of 16 characters", { id: "x", tapDevice: "abcdefghijklmnop" }, /^instance\.tap_device: interface name must be 1-15 characters, got 16$/],
  ];
  for (const [what, instance, message] of cases) {
    it(`${what} → INVALID_ARGUMENT naming the field`, async () => {
      const c = agentClients(agent.address);
      try {
        await assert.rejects(c.inventory.registerInstance({ instance }), (e: unknown) => {
          assert.ok(e instanceof ConnectError);
          assert.equal(e.code, Code.InvalidArgument);
          assert.match(e.rawMessage, message);
          return true;
        });
      } finally {
        c.close();
      }
    });
  }
  it("an unknown id → NOT_FOUND, for every method that takes one", async () => {
    const c = agentClients(agent.address);
    try {
      for (const call of [
        () => c.inventory.getInstance({ instanceId: "nope" }),
        () => c.inventory.deregisterInstance({ instanceId: "nope" }),
        () => c.metrics.getInstanceStats({ instanceId: "nope" }),
      ]) {
        await assert.rejects(call(), (e: unknown) => e instanceof ConnectError && e.code === Code.NotFound && /instance "nope" not found/.test(e.rawMessage));
      }
    } finally {
      c.close();
    }
  });
});

describe(`fuzzing every method (seed ${SEED})`, () => {
  it("the agent answers every random request with a deliberate status and stays up", async () => {
    let seen: Map<string, number>;
    try {
      seen = await fuzz(agent.address, [InventoryService, MetricsService, StandbyService, RuntimeService, MeteringService], agent.pid);
    } catch (e) {
      // The agent's last words say what killed it.
      throw new Error(`${errorMessage(e)}\nagent output:\n${agent.lines.slice(-15).join("\n")}`);
    }
    assert.ok([...seen.keys()].some((k) => k.endsWith(":INVALID_ARGUMENT")), "some inputs were rejected as invalid");
    assert.equal(agent.child.exitCode, null);
  });
  it("the aggregator does the same", async () => {
    let seen: Map<string, number>;
    try {
      seen = await fuzz(aggregator.address, [FleetService], aggregator.pid);
    } catch (e) {
      throw new Error(`${errorMessage(e)}\naggregator output:\n${aggregator.lines.slice(-15).join("\n")}`);
    }
    assert.ok([...seen.keys()].some((k) => k.endsWith(":INVALID_ARGUMENT")));
    assert.equal(aggregator.child.exitCode, null);
  });
});
