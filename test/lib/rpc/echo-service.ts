import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import { Behavior, EchoService } from "../../../gen/fleetlet/testing/v1/echo_pb.js";

/** What the handlers observed, so tests can assert on the server side too. */
export interface EchoProbe {
  /** Why the handler's signal aborted, per method, once it did. */
  abortReasons: Map<string, unknown>;
  /** Responses produced by the server stream so far (for back-pressure checks). */
  produced: number;
}

function waitAbort(method: string, ctx: HandlerContext, probe: EchoProbe): Promise<never> {
  return new Promise((_, reject) => {
    const done = () => {
      probe.abortReasons.set(method, ctx.signal.reason);
      reject(ctx.signal.reason);
    };
    if (ctx.signal.aborted) done();
    else ctx.signal.addEventListener("abort", done, { once: true });
  });
}

function act(method: string, b: Behavior, code: number, text: string, ctx: HandlerContext, probe: EchoProbe): Promise<void> | void {
  if (b === Behavior.FAIL) throw new ConnectError(text, code as Code);
  if (b === Behavior.THROW) throw new Error(`plain failure: ${text}`);
  if (b === Behavior.HANG) return waitAbort(method, ctx, probe);
}

export function createEchoService(probe: EchoProbe): ServiceImpl<typeof EchoService> {
  return {
    async echo(req, ctx) {
      await act("echo", req.behavior, req.errorCode, req.text, ctx, probe);
      return { text: req.text };
    },
    async *echoServerStream(req, ctx) {
      for (let i = 0; i < req.count; i++) {
        if (i === req.after) await act("echoServerStream", req.behavior, req.errorCode, req.text, ctx, probe);
        probe.produced++;
        yield { text: req.text, index: i };
      }
    },
    async echoClientStream(reqs, ctx) {
      const texts: string[] = [];
      for await (const r of reqs) {
        await act("echoClientStream", r.behavior, r.errorCode, r.text, ctx, probe);
        texts.push(r.text);
      }
      return { texts };
    },
    async *echoBidi(reqs, ctx) {
      for await (const r of reqs) {
        await act("echoBidi", r.behavior, r.errorCode, r.text, ctx, probe);
        yield { text: r.text };
      }
    },
  };
}
