import { describe, it } from "vitest";
import assert from "node:assert/strict";
import net from "node:net";
import { join } from "node:path";
import { startForwarder } from "../../cli/socket-forwarder.js";
import { tempDir } from "../helpers/temp-dir.js";

// The chain `up --demo-network` uses to reach its agent: loopback TCP → unix socket → server.
// Here the server answers only after the client's FIN (a request ended by half-close), so a
// forwarder that closed both ways on the first FIN would lose the answer.

function answerAfterEnd(path: string): Promise<net.Server> {
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    let got = "";
    // The forwarder may drop the connection meanwhile (the close() case): the late answer then
    // meets a closed socket (EPIPE), which is what that case expects, not a failure.
    s.on("error", () => undefined);
    s.on("data", (d: Buffer) => (got += d.toString()));
    s.on("end", () => setTimeout(() => !s.destroyed && s.end(`got ${got}`), 50));
  });
  return new Promise((res) => server.listen(path, () => res(server)));
}

describe("socket forwarder", () => {
  it("passes bytes both ways, and an answer sent after the client's FIN still arrives", async () => {
    const d = tempDir("forwarder");
    const path = join(d.path, "s.sock");
    const server = await answerAfterEnd(path);
    const fwd = await startForwarder({ host: "127.0.0.1", port: 0 }, { path });
    try {
      const port = (fwd.address as net.AddressInfo).port;
      assert.ok(port > 0, "bound port reported");
      const answer = await new Promise<string>((res, rej) => {
        const c = net.connect({ host: "127.0.0.1", port, allowHalfOpen: true });
        let got = "";
        c.on("data", (b: Buffer) => (got += b.toString()));
        c.on("end", () => res(got));
        c.on("error", rej);
        c.end("hello");
      });
      assert.equal(answer, "got hello");
    } finally {
      await fwd.close();
      server.close();
      d.remove();
    }
  });

  it("close() drops connections still open, and a target that is not there closes the client", async () => {
    const d = tempDir("forwarder");
    const path = join(d.path, "s.sock");
    const server = await answerAfterEnd(path);
    const fwd = await startForwarder({ host: "127.0.0.1", port: 0 }, { path });
    const port = (fwd.address as net.AddressInfo).port;
    const open = net.connect({ host: "127.0.0.1", port });
    await new Promise((r) => open.once("connect", r));
    const closed = new Promise((r) => open.once("close", r));
    await fwd.close();
    await closed;
    assert.equal(open.destroyed, true, "the open connection was dropped, not waited for");
    server.close();

    const missing = await startForwarder({ host: "127.0.0.1", port: 0 }, { path: join(d.path, "nothing.sock") });
    const c = net.connect({ host: "127.0.0.1", port: (missing.address as net.AddressInfo).port });
    c.on("error", () => undefined);
    let received = 0;
    c.on("data", (b: Buffer) => (received += b.length));
    await new Promise((r) => c.once("close", r));
    assert.equal(received, 0);
    assert.equal(c.destroyed, true, "the client is closed when the target cannot be reached");
    await missing.close();
    d.remove();
  });
});
