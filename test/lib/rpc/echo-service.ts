import { create, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { type Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import {
  Behavior,
  EchoBidiRequestSchema,
  EchoBidiResponseSchema,
  EchoClientStreamRequestSchema,
  EchoClientStreamResponseSchema,
  EchoRequestSchema,
  EchoResponseSchema,
  EchoServerStreamRequestSchema,
  EchoServerStreamResponseSchema,
  type EchoService,
} from "../../../gen/fleetlet/testing/v1/echo_pb.js";
import { wireResponse } from "../../../lib/rpc/service-adapter.js";

/** What the handlers observed, so tests can assert on the server side too. */
export interface EchoProbe {
  /** Why the handler's signal aborted, per method, once it did. */
  abortReasons: Map<string, unknown>;
  /** Responses produced by the server stream so far (for back-pressure checks). */
  produced: number;
  /** Handler invocations per method (a call refused by an interceptor never gets one). */
  started: Map<string, number>;
}

export function createEchoProbe(): EchoProbe {
  return { abortReasons: new Map(), produced: 0, started: new Map() };
}

/** The request header a handler echoes back as a trailer of the same name (binary). */
export const ECHO_BIN = "x-echo-bin";
/** The response header every handler sets: the method's local name. */
export const ECHO_HEADER = "x-echo-method";
/** The trailer every handler sets, on success and on error: the method's local name. */
export const ECHO_TRAILER = "x-echo-trailer";

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

/** Headers and trailers go out before the behaviour, so the error rows see them too. */
function enter(method: string, ctx: HandlerContext, probe: EchoProbe): void {
  probe.started.set(method, (probe.started.get(method) ?? 0) + 1);
  ctx.responseHeader.set(ECHO_HEADER, method);
  ctx.responseTrailer.set(ECHO_TRAILER, method);
  const bin = ctx.requestHeader.get(ECHO_BIN);
  if (bin !== null) ctx.responseTrailer.set(ECHO_BIN, bin);
}

/**
 * FAIL carries the request that asked for it as the error's one detail, so every failure row
 * can check that details cross the wire (a different message type per method kind).
 */
function act<T extends DescMessage>(
  method: string,
  schema: T,
  req: MessageShape<T> & { behavior: Behavior; errorCode: number; text: string },
  ctx: HandlerContext,
  probe: EchoProbe,
): Promise<void> | void {
  if (req.behavior === Behavior.FAIL) {
    throw new ConnectError(req.text, req.errorCode as Code, undefined, [{ desc: schema, value: req }]);
  }
  if (req.behavior === Behavior.THROW) throw new Error(`plain failure: ${req.text}`);
  if (req.behavior === Behavior.HANG) return waitAbort(method, ctx, probe);
}

export function createEchoService(probe: EchoProbe): ServiceImpl<typeof EchoService> {
  return {
    async echo(req, ctx) {
      enter("echo", ctx, probe);
      await act("echo", EchoRequestSchema, req, ctx, probe);
      return { text: req.text };
    },
    async *echoServerStream(req, ctx) {
      enter("echoServerStream", ctx, probe);
      for (let i = 0; i < req.count; i++) {
        if (i === req.after) await act("echoServerStream", EchoServerStreamRequestSchema, req, ctx, probe);
        probe.produced++;
        yield { text: req.text, index: i };
      }
    },
    async echoClientStream(reqs, ctx) {
      enter("echoClientStream", ctx, probe);
      const texts: string[] = [];
      for await (const r of reqs) {
        await act("echoClientStream", EchoClientStreamRequestSchema, r, ctx, probe);
        texts.push(r.text);
      }
      return { texts };
    },
    async *echoBidi(reqs, ctx) {
      enter("echoBidi", ctx, probe);
      for await (const r of reqs) {
        await act("echoBidi", EchoBidiRequestSchema, r, ctx, probe);
        yield { text: r.text };
      }
    },
  };
}

/**
 * Bytes that are no EchoService response: field 1 (text) announces 5 bytes and brings 1, so
 * every response type fails with protobuf-es's "premature EOF".
 */
export const MALFORMED_RESPONSE = Uint8Array.of(0x0a, 0x05, 0x61);

/** An EchoService whose every answer is MALFORMED_RESPONSE on the wire (a broken server). */
export function createMalformedEchoService(): ServiceImpl<typeof EchoService> {
  return {
    echo: () => wireResponse(EchoResponseSchema, MALFORMED_RESPONSE),
    async *echoServerStream() {
      yield create(EchoServerStreamResponseSchema, { text: "fine", index: 0 });
      yield wireResponse(EchoServerStreamResponseSchema, MALFORMED_RESPONSE);
    },
    async echoClientStream(reqs) {
      for await (const _ of reqs);
      return wireResponse(EchoClientStreamResponseSchema, MALFORMED_RESPONSE);
    },
    async *echoBidi(reqs) {
      for await (const _ of reqs) yield wireResponse(EchoBidiResponseSchema, MALFORMED_RESPONSE);
    },
  };
}
