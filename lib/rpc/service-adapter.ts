import type * as grpc from "@grpc/grpc-js";
import type { Readable } from "node:stream";
import { performance } from "node:perf_hooks";
import {
  create,
  fromBinary,
  toBinary,
  type DescMessage,
  type DescMethod,
  type DescService,
  type MessageShape,
} from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  createContextKey,
  createHandlerContext,
  type HandlerContext,
  type ServiceImpl,
} from "@connectrpc/connect";
import { raceAbort } from "../abort-race.js";
import { errorMessage } from "../error-message.js";
import type { CallFinished } from "./rpc-metrics.js";
import type { Logger } from "./logger.js";
import { BudgetedStreamWriter, DEFAULT_STREAM_LIMITS, type StreamLimits } from "./stream-budget.js";
import { codeName, headersToMetadata, metadataToHeaders, toGrpcStatus } from "./status-codes.js";
import type { StreamSlots } from "./stream-slots.js";
import { CALLER_IDENTITY, limitKey } from "./authz/identity.js";
import { CALLER_TRANSPORT, transportSecurityOf, type CallTransportSecurity } from "./tls-peer-identity.js";

/** The reason a call's signal is aborted with when it completed normally (audit tells it from an error). */
export const CALL_COMPLETED = new ConnectError("call completed", Code.Canceled);

/** The decoded request of a unary or server-streaming call, for the audit line's target ids. */
export const CALL_REQUEST = createContextKey<unknown>(undefined, { description: "decoded request" });

/** The caller's transport address ("127.0.0.2:5123"), for limits kept per client until identities exist. */
export const CALLER_PEER = createContextKey<string>("", { description: "caller peer address" });

/** A Connect service implementation to serve; methods left out answer UNIMPLEMENTED. */
export interface ServiceRegistration<S extends DescService = DescService> {
  service: S;
  impl: Partial<ServiceImpl<S>>;
}

/** Typed helper so `impl` is checked against `service`. */
export function serviceRegistration<S extends DescService>(
  service: S,
  impl: Partial<ServiceImpl<S>>,
): ServiceRegistration {
  return { service, impl } as unknown as ServiceRegistration;
}

/**
 * Per-call hook that runs before the handler: the place where authentication and per-method
 * authorisation slot in later without touching any service. Throw a ConnectError to refuse.
 */
export type CallInterceptor = (
  method: DescMethod,
  context: HandlerContext,
  peer: string,
  /** TLS or not, and the client certificate the handshake verified (also CALLER_TRANSPORT in context.values). */
  transport: CallTransportSecurity,
) => void;

export interface AdapterOptions {
  logger: Logger;
  /** Aborted when the server shuts down, so long-lived streams end promptly. */
  shutdownSignal: AbortSignal;
  interceptors?: CallInterceptor[];
  /** Methods whose per-call log line is written at debug level (health checks). */
  quietMethods?: ReadonlySet<string>;
  /** Bytes a server stream may hold for a client that does not read, and when it is cut. */
  streamLimits?: StreamLimits;
  /** Open streaming calls, capped per peer and in all; none: uncapped. */
  streamSlots?: StreamSlots;
  /** Told of every call's end: method path, code name, seconds (rpc-metrics.ts). */
  onCallFinished?: CallFinished;
}

// Any handler's calls share these few operations; grpc-js has one type per method kind.
type AnyServerCall = grpc.ServerUnaryCall<Buffer, Buffer> &
  Partial<grpc.ServerWritableStream<Buffer, Buffer>>;
type HandlerFn = (...args: never[]) => unknown;

// Connect's implementation functions, with request/response types erased: the adapter handles
// every method generically, and the typed ServiceImpl guaranteed the shapes when it was built.
type AnyUnaryImpl = (req: unknown, ctx: HandlerContext) => unknown;
type AnyStreamImpl = (req: unknown, ctx: HandlerContext) => AsyncIterable<unknown>;

/**
 * Turns a Connect ServiceImpl into a grpc-js service definition and handlers.
 *
 * Messages cross grpc-js as raw bytes: we decode requests ourselves so a malformed message is
 * answered with INVALID_ARGUMENT naming the method (grpc-js would answer INTERNAL), and we
 * encode responses ourselves so an encoding failure is reported like any handler error.
 *
 * Everything else a Connect handler can say reaches the wire as Connect's own gRPC handler would
 * put it there: request metadata becomes `context.requestHeader` (`-bin` values as base64 text),
 * `context.responseHeader` and `context.responseTrailer` are sent, on success and on error, and a
 * ConnectError's details travel in `grpc-status-details-bin` (see toGrpcStatus).
 */
export function adaptService(
  registration: ServiceRegistration,
  options: AdapterOptions,
): { definition: grpc.ServiceDefinition; handlers: grpc.UntypedServiceImplementation } {
  const { service, impl } = registration;
  const definition: Record<string, grpc.MethodDefinition<Buffer, Buffer>> = {};
  const handlers: grpc.UntypedServiceImplementation = {};
  const implByName = impl as Record<string, unknown>;
  for (const method of service.methods) {
    const path = `/${service.typeName}/${method.name}`;
    definition[method.name] = {
      path,
      originalName: method.localName,
      requestStream: method.methodKind === "client_streaming" || method.methodKind === "bidi_streaming",
      responseStream: method.methodKind === "server_streaming" || method.methodKind === "bidi_streaming",
      requestSerialize: (b: Buffer) => b,
      requestDeserialize: (b: Buffer) => b,
      responseSerialize: (b: Buffer) => b,
      responseDeserialize: (b: Buffer) => b,
    };
    const fn = implByName[method.localName];
    handlers[method.name] = makeHandler(service, method, path, fn, options) as HandlerFn as never;
  }
  return { definition, handlers };
}

function makeHandler(
  service: DescService,
  method: DescMethod,
  path: string,
  fn: unknown,
  options: AdapterOptions,
): unknown {
  const quiet = options.quietMethods?.has(path) ?? false;
  const begin = (call: AnyServerCall) => {
    const started = performance.now();
    const requestAbort = new AbortController();
    const deadline = call.getDeadline();
    const deadlineMs = deadline instanceof Date ? deadline.getTime() : deadline;
    // grpc-js emits 'cancelled' both for a client's cancellation and for its own deadline
    // timer, which usually fires before Connect's: tell the two apart by the clock. The client's
    // own deadline timer fires first and its RST_STREAM can arrive before ours ends (our deadline
    // counts from when the request reached us, later under load), so a cancel within a slack of
    // the deadline (10% of the timeout, at least 20 ms, at most 1 s) is the deadline.
    const slackMs = Number.isFinite(deadlineMs) ? Math.min(1000, Math.max(20, (deadlineMs - Date.now()) / 10)) : 0;
    let done = false;
    call.on("cancelled", () => {
      // grpc-js also reports 'cancelled' when the stream closes after a completed call.
      if (done) return;
      const reason =
        Number.isFinite(deadlineMs) && Date.now() >= deadlineMs - slackMs
          ? new ConnectError("the call's deadline expired", Code.DeadlineExceeded)
          : new ConnectError("call cancelled by the client", Code.Canceled);
      requestAbort.abort(reason);
    });
    const timeoutMs = Number.isFinite(deadlineMs) ? Math.max(0, deadlineMs - Date.now()) : undefined;
    const context = createHandlerContext({
      service,
      method,
      protocolName: "grpc",
      requestMethod: "POST",
      url: path,
      timeoutMs,
      shutdownSignal: options.shutdownSignal,
      requestSignal: requestAbort.signal,
      requestHeader: metadataToHeaders(call.metadata),
    });
    const peer = call.getPeer();
    context.values.set(CALLER_PEER, peer);
    const transport = transportSecurityOf(call);
    context.values.set(CALLER_TRANSPORT, transport);
    // The handler's response headers go out once, before the first message or with the status
    // (grpc-js would otherwise send its defaults and drop them).
    let headerSent = false;
    const sendHeader = () => {
      if (headerSent) return;
      headerSent = true;
      if (context.responseHeader.keys().next().done) return;
      call.sendMetadata(headersToMetadata(context.responseHeader));
    };
    /** The error as the call's status; response headers that cannot be encoded are logged. */
    const statusOf = (error: ConnectError): grpc.StatusObject => {
      try {
        sendHeader();
      } catch (e) {
        options.logger.warn({ method: path, error: ConnectError.from(e).rawMessage }, "response header not sent");
      }
      return toGrpcStatus(error, context.responseTrailer);
    };
    const finish = (error: ConnectError | undefined) => {
      done = true;
      // Ends the call's signal (Connect's contract: it fires on completion too, so handlers can
      // release what they hold). A shared reason: abort() without one builds a DOMException
      // with a stack trace, a measurable share of a small call's CPU.
      context.abort(error ?? CALL_COMPLETED);
      const fields = {
        method: path,
        code: codeName(error?.code ?? 0),
        duration_ms: Math.round((performance.now() - started) * 1000) / 1000,
        peer,
        ...(error ? { error: error.rawMessage } : {}),
      };
      // A call that succeeded is a debug line (a polling client such as `fleetlet up` made
      // hundreds of KB of info lines in minutes); a refused or failed one is info, a server
      // fault warn. Audited calls have their own info line (authorize.ts).
      options.onCallFinished?.(path, fields.code, fields.duration_ms / 1000);
      if (quiet || !error) options.logger.debug(fields, "rpc");
      else if (isServerFault(error.code)) options.logger.warn(fields, "rpc");
      else options.logger.info(fields, "rpc");
    };
    const intercept = () => {
      if (typeof fn !== "function") {
        throw new ConnectError(`${path} is not implemented`, Code.Unimplemented);
      }
      for (const interceptor of options.interceptors ?? []) interceptor(method, context, peer, transport);
    };
    return { context, finish, intercept, sendHeader, statusOf, peer };
  };

  // The request side differs by kind (one decoded message, or a decoded stream); the response
  // side is one message through the unary callback, or a stream pumped with back-pressure.
  const contextOf = new WeakMap<AnyServerCall, HandlerContext>();
  const requestOf = (call: AnyServerCall): unknown => {
    if (method.methodKind !== "unary" && method.methodKind !== "server_streaming") {
      return decodeStream(call as unknown as Readable, method.input, path, contextOf.get(call)!.signal);
    }
    const request = decode(method.input, call.request, path);
    contextOf.get(call)!.values.set(CALL_REQUEST, request);
    return request;
  };

  if (method.methodKind === "unary" || method.methodKind === "client_streaming") {
    return (call: AnyServerCall, callback: grpc.sendUnaryData<Buffer>) => {
      const { context, finish, intercept, sendHeader, statusOf } = begin(call);
      contextOf.set(call, context);
      void (async () => {
        try {
          intercept();
          const response = await raceAbort((fn as AnyUnaryImpl)(requestOf(call), context), context.signal);
          const bytes = encode(method.output, response);
          const trailer = headersToMetadata(context.responseTrailer);
          sendHeader();
          callback(null, bytes, trailer);
          finish(undefined);
        } catch (e) {
          const error = toConnectError(e, context);
          callback(statusOf(error));
          finish(error);
        }
      })();
    };
  }
  return (call: grpc.ServerWritableStream<Buffer, Buffer> | grpc.ServerDuplexStream<Buffer, Buffer>) => {
    const any = call as unknown as AnyServerCall;
    const { context, finish, intercept, sendHeader, statusOf, peer } = begin(any);
    contextOf.set(any, context);
    void (async () => {
      let releaseSlot: (() => void) | undefined;
      try {
        intercept();
        // A streaming call holds buffers and a subscription for as long as it lasts: capped.
        releaseSlot = options.streamSlots?.acquire(limitKey(context.values.get(CALLER_IDENTITY), peer));
        const writer = new BudgetedStreamWriter(call, options.streamLimits ?? DEFAULT_STREAM_LIMITS, context.signal);
        await pump((fn as AnyStreamImpl)(requestOf(any), context), writer, method, context, sendHeader);
        const trailer = headersToMetadata(context.responseTrailer);
        sendHeader();
        if (!call.cancelled) call.end(trailer);
        finish(undefined);
      } catch (e) {
        const error = toConnectError(e, context);
        // grpc-js turns an 'error' event on a server stream into the call's status.
        if (!call.cancelled) call.emit("error", statusOf(error));
        finish(error);
      } finally {
        releaseSlot?.();
      }
    })();
  };
}

function decode<T extends DescMessage>(schema: T, bytes: Buffer, path: string): MessageShape<T> {
  try {
    // Unknown fields are dropped: kept, they would be stored with the message and served back
    // to every reader forever, up to the max message size per call (security.md "Limits").
    return fromBinary(schema, bytes, { readUnknownFields: false });
  } catch (e) {
    throw new ConnectError(
      `malformed ${schema.typeName} for ${path}: ${errorMessage(e)}`,
      Code.InvalidArgument,
    );
  }
}

/**
 * Encoded bytes of response messages a handler returned, by identity. A handler that answers
 * many calls with the same message object (e.g. ListInstanceStats from a shared sweep) pays for
 * encoding once. Response messages are treated as immutable once returned; plain init objects
 * (no $typeName) are never cached.
 */
const encodedResponses = new WeakMap<object, Buffer>();

/**
 * A response whose wire form the handler built itself (e.g. the aggregator splicing agents'
 * answers together without decoding them). The returned object stands for `bytes` on the wire
 * only: its fields are empty, so it is meant for returning from a handler, nothing else.
 */
export function wireResponse<T extends DescMessage>(schema: T, bytes: Uint8Array): MessageShape<T> {
  const placeholder = create(schema);
  encodedResponses.set(placeholder, Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength));
  return placeholder;
}

function encode(schema: DescMessage, value: unknown): Buffer {
  const reusable = typeof value === "object" && value !== null && (value as { $typeName?: string }).$typeName === schema.typeName;
  if (reusable) {
    const cached = encodedResponses.get(value);
    if (cached) return cached;
  }
  const bytes = Buffer.from(toBinary(schema, create(schema, value as never)));
  if (reusable) encodedResponses.set(value as object, bytes);
  return bytes;
}

/** Requests of a streaming call, decoded lazily, with the socket's own back-pressure. */
async function* decodeStream<T extends DescMessage>(
  call: Readable,
  schema: T,
  path: string,
  signal: AbortSignal,
): AsyncGenerator<MessageShape<T>> {
  const onAbort = () => call.destroy?.();
  signal.addEventListener("abort", onAbort, { once: true });
  try {
    // destroyOnReturn: false — by default, finishing a for-await over a Duplex destroys the
    // whole stream, write side included, and grpc-js would then never send the status.
    for await (const chunk of call.iterator({ destroyOnReturn: false }) as AsyncIterable<Buffer>) {
      yield decode(schema, chunk, path);
    }
    if (signal.aborted) throw ConnectError.from(signal.reason);
  } finally {
    signal.removeEventListener("abort", onAbort);
  }
}

/**
 * Writes a handler's responses to the call, pulling the next message only when the stream's
 * byte budget allows (BudgetedStreamWriter): a slow reader slows the producer down instead of
 * growing memory, and one that reads nothing at all is cut.
 */
async function pump(
  responses: AsyncIterable<unknown>,
  writer: BudgetedStreamWriter,
  method: DescMethod,
  context: HandlerContext,
  sendHeader: () => void,
): Promise<void> {
  const iterator = responses[Symbol.asyncIterator]();
  try {
    for (;;) {
      const next = await raceAbort(iterator.next(), context.signal);
      if (next.done) return;
      const bytes = encode(method.output, next.value);
      sendHeader();
      await writer.write(bytes);
    }
  } finally {
    // Lets the handler's generator run its finally blocks (unsubscribe, timers).
    void iterator.return?.();
  }
}

function toConnectError(e: unknown, context: HandlerContext): ConnectError {
  if (e instanceof ConnectError) return e;
  // A handler that failed because its signal fired reports why the signal fired.
  if (context.signal.aborted && context.signal.reason instanceof ConnectError) {
    return context.signal.reason;
  }
  return ConnectError.from(e);
}

function isServerFault(code: Code): boolean {
  return code === Code.Unknown || code === Code.Internal || code === Code.DataLoss;
}
