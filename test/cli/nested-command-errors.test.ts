import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { runFleetlet } from "../helpers/daemon-process.js";

// Bad arguments of nested commands (`fleetlet hosts add`, ...) are one line naming the command,
// exit 2, like the top-level ones: commander does not pass exitOverride on to them by itself
// (`fleetlet hosts add x` printed two lines and exited 1).
describe("nested commands' bad arguments", () => {
  it("one line naming the command, exit 2", async () => {
    const cases: [string[], RegExp][] = [
      [["hosts", "add", "x"], /^fleetlet hosts add: error: missing required argument 'address'$/],
      [["hosts", "remove"], /^fleetlet hosts remove: error: missing required argument/],
      [["metering", "accept-gap", "h0"], /^fleetlet metering accept-gap: error: required option '--ledger-id <id>' not specified$/],
      [["policies", "delete"], /^fleetlet policies delete: error: missing required argument 'name'$/],
      [["certs", "ca"], /^fleetlet certs ca: error: required option '--out <dir>' not specified$/],
    ];
    for (const [args, re] of cases) {
      const r = await runFleetlet(args);
      assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
      assert.match(r.stderr.trim(), re);
      assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
    }
  });
});
