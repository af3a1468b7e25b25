import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { Code, ConnectError } from "@connectrpc/connect";
import { inspectToContainer } from "../../../../agent/runtime/docker/docker-container.js";
import { resolveDockerReference } from "../../../../agent/runtime/docker/docker-container-lookup.js";
import { compareApiVersions, negotiateApiVersion, parseDockerHost } from "../../../../agent/runtime/docker/docker-endpoint.js";
import { toConnectError } from "../../../../agent/runtime/docker/docker-errors.js";
import { inspectFixture } from "./docker-fixtures.js";

describe("external_id → container id", () => {
  // web a95651712a13…, paused 219092661ce6…, healthy 82d9321136cd…, oom 82d73e23dc3c…
  const known = ["running-tty-compose", "paused", "healthy", "oom-killed"].map((n) => inspectToContainer(inspectFixture(n)));
  const [web, paused, hc, oom] = known;

  it("full id, name (with or without /), unique prefix", () => {
    assert.equal(resolveDockerReference(known, web!.externalId), web!.externalId);
    assert.equal(resolveDockerReference(known, "web"), web!.externalId);
    assert.equal(resolveDockerReference(known, "/paused"), paused!.externalId);
    assert.equal(resolveDockerReference(known, "a956"), web!.externalId);
    assert.equal(resolveDockerReference(known, "82d93"), hc!.externalId);
    assert.equal(resolveDockerReference(known, "82d7"), oom!.externalId);
  });

  it("an ambiguous prefix is INVALID_ARGUMENT naming external_id", () => {
    assert.throws(
      () => resolveDockerReference(known, "82d"),
      (e: unknown) => e instanceof ConnectError && e.code === Code.InvalidArgument && /^external_id: .*ambiguous.*2 containers/.test(e.rawMessage),
    );
  });

  it("empty is INVALID_ARGUMENT; unknown is undefined (the caller asks the engine)", () => {
    assert.throws(() => resolveDockerReference(known, ""), (e: unknown) => e instanceof ConnectError && e.code === Code.InvalidArgument);
    assert.equal(resolveDockerReference(known, "nope"), undefined);
    assert.equal(resolveDockerReference(known, "ffff"), undefined);
  });
});

describe("docker endpoint and API version", () => {
  it("unix:// and tcp:// hosts; anything else is INVALID_ARGUMENT naming docker_host", () => {
    const u = parseDockerHost("unix:///run/x/docker.sock");
    assert.equal(u.options.socketPath, "/run/x/docker.sock");
    assert.equal(u.options.host, undefined);
    assert.equal(u.url, "unix:///run/x/docker.sock");
    const t = parseDockerHost("tcp://10.0.0.5:2375");
    assert.equal(t.options.host, "10.0.0.5");
    assert.equal(t.options.port, 2375);
    assert.throws(() => parseDockerHost("ssh://host"), (e: unknown) => e instanceof ConnectError && e.rawMessage.startsWith("docker_host: "));
    assert.throws(() => parseDockerHost("unix://relative.sock"), /docker_host/);
  });

  it("default: DOCKER_HOST, else the standard socket", () => {
    const saved = process.env.DOCKER_HOST;
    try {
      process.env.DOCKER_HOST = "unix:///tmp/from-env.sock";
      assert.equal(parseDockerHost(undefined).options.socketPath, "/tmp/from-env.sock");
      delete process.env.DOCKER_HOST;
      assert.equal(parseDockerHost(undefined).url, "unix:///var/run/docker.sock");
    } finally {
      if (saved === undefined) delete process.env.DOCKER_HOST;
      else process.env.DOCKER_HOST = saved;
    }
  });

  it("negotiation: the engine's version, capped at what we speak; too old or missing is an error", () => {
    assert.equal(negotiateApiVersion({ ApiVersion: "1.41" }), "1.41");
    assert.equal(negotiateApiVersion({ ApiVersion: "1.50" }), "1.48");
    assert.throws(() => negotiateApiVersion({ ApiVersion: "1.12" }), /older than 1\.24/);
    assert.throws(() => negotiateApiVersion({}), /did not report/);
    assert.equal(compareApiVersions("1.9", "1.10"), -1);
    assert.equal(compareApiVersions("1.41", "1.41"), 0);
  });

  it("engine errors → contract codes", () => {
    const engine = (statusCode: number, message: string) => Object.assign(new Error(`(HTTP code ${statusCode}) x`), { statusCode, json: { message } });
    assert.equal(toConnectError(engine(404, "No such container: x"), "c").code, Code.NotFound);
    const notRunning = toConnectError(engine(409, "Container abc is not running"), "docker container abc");
    assert.equal(notRunning.code, Code.FailedPrecondition);
    assert.equal(notRunning.rawMessage, "docker container abc: Container abc is not running");
    assert.equal(toConnectError(Object.assign(new Error("connect ECONNREFUSED"), { code: "ECONNREFUSED" }), "c").code, Code.Unavailable);
    assert.equal(toConnectError(Object.assign(new Error("connect ENOENT /x.sock"), { code: "ENOENT" }), "c").code, Code.Unavailable);
    assert.equal(toConnectError(new Error("socket hang up"), "c").code, Code.Unavailable);
    const ac = new AbortController();
    ac.abort(new ConnectError("deadline", Code.DeadlineExceeded));
    assert.equal(toConnectError(new Error("aborted"), "c", ac.signal).code, Code.DeadlineExceeded, "the caller's reason");
  });
});
