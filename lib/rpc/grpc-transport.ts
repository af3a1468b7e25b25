import * as grpc from "@grpc/grpc-js";
import {
  create,
  fromBinary,
  toBinary,
  type DescMessage,
  type DescMethodStreaming,
  type DescMethodUnary,
  type MessageInitShape,
  type MessageShape,
} from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  type StreamResponse,
  type Transport,
  type UnaryResponse,
} from "@connectrpc/connect";
import { errorMessage } from "../error-message.js";
import { fromGrpcStatus, headersToMetadata, metadataToHeaders } from "./status-codes.js";

/**
 * A Connect Transport over one grpc-js channel, so `createClient(Service, transport)` gives typed
 * clients while the connection itself is grpc-js's: one long-lived HTTP/2 channel per host with
 * its own reconnect backoff and an observable connectivity state (see host-channel usage in the
 * aggregator). Errors come back as ConnectError with the gRPC code and message.
 *
 * It keeps what Connect's own gRPC transport keeps: response headers reach `onHeader` and
 * trailers `onTrailer` (a failed call's trailers and headers are its ConnectError's metadata, as
 * in Connect, whose clients call no `onTrailer` then), `-bin` metadata travels both ways as base64 text in Headers, and error details come
 * back from `grpc-status-details-bin` (see fromGrpcStatus).
 */
export interface GrpcJsTransport extends Transport {
  readonly client: grpc.Client;
  /**
   * The lean path for hot fan-outs: one unary call with pre-encoded request bytes and the
   * response left undecoded, no headers or interceptors. Errors are ConnectErrors as elsewhere.
   */
  unaryRaw(method: DescMethodUnary, request: Buffer, timeoutMs: number, signal?: AbortSignal): Promise<Buffer>;
  close(): void;
}

export interface GrpcJsTransportOptions {
  credentials?: grpc.ChannelCredentials;
  channelOptions?: grpc.ChannelOptions;
}

const identity = (b: Buffer) => b;

type HeadersInit = ConstructorParameters<typeof Headers>[0];

export function createGrpcJsTransport(target: string, options: GrpcJsTransportOptions = {}): GrpcJsTransport {
  const client = new grpc.Client(target, options.credentials ?? grpc.credentials.createInsecure(), {
    "grpc.max_receive_message_length": 64 * 1024 * 1024,
    ...options.channelOptions,
  });

  const callOptions = (timeoutMs: number | undefined): grpc.CallOptions =>
    timeoutMs !== undefined && timeoutMs > 0 ? { deadline: Date.now() + timeoutMs } : {};
  const requestMetadata = (header: HeadersInit | undefined): grpc.Metadata =>
    header === undefined ? new grpc.Metadata() : headersToMetadata(new Headers(header));

  const emptyMetadata = new grpc.Metadata();
  return {
    client,
    close: () => client.close(),

    unaryRaw(method: DescMethodUnary, request: Buffer, timeoutMs: number, signal?: AbortSignal) {
      const path = methodPath(method);
      return new Promise<Buffer>((resolve, reject) => {
        if (signal?.aborted) {
          reject(ConnectError.from(signal.reason));
          return;
        }
        const onAbort = () => call.cancel();
        const call = client.makeUnaryRequest<Buffer, Buffer>(path, identity, identity, request, emptyMetadata, { deadline: Date.now() + timeoutMs }, (err, value) => {
          signal?.removeEventListener("abort", onAbort);
          if (err) reject(fromGrpcStatus(err));
          else resolve(value ?? Buffer.alloc(0));
        });
        signal?.addEventListener("abort", onAbort, { once: true });
      });
    },

    unary<I extends DescMessage, O extends DescMessage>(
      method: DescMethodUnary<I, O>,
      signal: AbortSignal | undefined,
      timeoutMs: number | undefined,
      header: HeadersInit | undefined,
      input: MessageInitShape<I>,
    ): Promise<UnaryResponse<I, O>> {
      return new Promise((resolve, reject) => {
        if (signal?.aborted) {
          reject(ConnectError.from(signal.reason));
          return;
        }
        const request = Buffer.from(toBinary(method.input, create(method.input, input)));
        const responseHeader = new Headers();
        let response: Buffer | undefined;
        const call = client.makeUnaryRequest<Buffer, Buffer>(
          methodPath(method),
          identity,
          identity,
          request,
          requestMetadata(header),
          callOptions(timeoutMs),
          (err, value) => {
            // A failure's trailers come with it (err.metadata); a success's come with the
            // 'status' event grpc-js emits right after this callback.
            if (err) {
              signal?.removeEventListener("abort", onAbort);
              reject(withHeader(fromGrpcStatus(err), responseHeader));
            } else {
              response = value ?? Buffer.alloc(0);
            }
          },
        );
        call.on("metadata", (md: grpc.Metadata) => metadataToHeaders(md, responseHeader));
        call.on("status", (status: grpc.StatusObject) => {
          if (response === undefined) return;
          signal?.removeEventListener("abort", onAbort);
          try {
            resolve({
              stream: false,
              service: method.parent,
              method,
              header: responseHeader,
              trailer: metadataToHeaders(status.metadata),
              message: decodeResponse(method, response),
            });
          } catch (e) {
            reject(e);
          }
        });
        const onAbort = () => call.cancel();
        signal?.addEventListener("abort", onAbort, { once: true });
      });
    },

    async stream<I extends DescMessage, O extends DescMessage>(
      method: DescMethodStreaming<I, O>,
      signal: AbortSignal | undefined,
      timeoutMs: number | undefined,
      header: HeadersInit | undefined,
      input: AsyncIterable<MessageInitShape<I>>,
    ): Promise<StreamResponse<I, O>> {
      const path = methodPath(method);
      const metadata = requestMetadata(header);
      const opts = callOptions(timeoutMs);
      const encode = (m: MessageInitShape<I>) => Buffer.from(toBinary(method.input, create(method.input, m)));
      let call: grpc.ClientReadableStream<Buffer> | grpc.ClientWritableStream<Buffer> | grpc.ClientDuplexStream<Buffer, Buffer>;
      // A client-streaming call's one response, handed over by grpc-js's callback.
      let single: Buffer | undefined;
      switch (method.methodKind) {
        case "server_streaming": {
          // Connect's client hands a server-streaming request over as a one-element iterable.
          let first: MessageInitShape<I> | undefined;
          for await (const m of input) {
            first = m;
            break;
          }
          call = client.makeServerStreamRequest(path, identity, identity, encode(first ?? ({} as MessageInitShape<I>)), metadata, opts);
          break;
        }
        case "bidi_streaming":
          call = client.makeBidiStreamRequest(path, identity, identity, metadata, opts);
          break;
        case "client_streaming":
          call = client.makeClientStreamRequest(path, identity, identity, metadata, opts, (err, value) => {
            // A failure is read from the 'status' event, with everything else.
            if (!err) single = value ?? Buffer.alloc(0);
          });
          break;
      }
      const onAbort = () => call.cancel();
      if (signal?.aborted) call.cancel();
      signal?.addEventListener("abort", onAbort, { once: true });

      // The 'status' event ends every call, with the trailers. grpc-js also emits a non-OK status
      // as an 'error' event, which would throw with no listener (it can come before anyone reads,
      // e.g. a trailers-only answer while we wait for headers); the status is read from 'status'.
      let finished = false;
      const status = new Promise<grpc.StatusObject>((resolve) =>
        call.on("status", (s: grpc.StatusObject) => {
          finished = true;
          resolve(s);
        }),
      );
      call.on("error", () => undefined);
      const responseHeader = new Headers();
      const headerReceived = new Promise<void>((resolve) =>
        call.on("metadata", (md: grpc.Metadata) => {
          metadataToHeaders(md, responseHeader);
          resolve();
        }),
      );

      // Requests are written as the caller produces them, with the channel's back-pressure. When
      // the caller's iterable throws, that error ends the call and is what the caller sees, not
      // the CANCELLED the cancellation produces.
      let feedError: ConnectError | undefined;
      if (method.methodKind !== "server_streaming") {
        const writable = call as grpc.ClientWritableStream<Buffer>;
        void (async () => {
          try {
            for await (const m of input) {
              // The server has answered: stop pulling requests nobody will read.
              if (finished) return;
              if (!writable.write(encode(m))) {
                await new Promise<void>((resolve) => {
                  const done = () => {
                    writable.off("drain", done);
                    resolve();
                  };
                  writable.on("drain", done);
                  void status.then(done);
                });
              }
            }
            if (!finished) writable.end();
          } catch (e) {
            if (finished) return;
            feedError = ConnectError.from(e);
            call.cancel();
          }
        })();
      }

      // Connect's transports resolve once the response headers are in, so onHeader sees them.
      await Promise.race([headerReceived, status]);

      const trailer = new Headers();
      const settle = (s: grpc.StatusObject): void => {
        if (feedError) throw feedError;
        if (s.code !== grpc.status.OK) throw withHeader(fromGrpcStatus(s), responseHeader);
        metadataToHeaders(s.metadata, trailer);
      };
      async function* messages(): AsyncGenerator<MessageShape<O>> {
        try {
          if (method.methodKind === "client_streaming") {
            settle(await status);
            yield decodeResponse(method, single ?? Buffer.alloc(0));
            return;
          }
          try {
            for await (const chunk of call as AsyncIterable<Buffer>) {
              yield decodeResponse(method, chunk);
            }
          } catch (e) {
            // A malformed message is ours to report; grpc-js's error for a non-OK status says
            // what the 'status' event says, which also carries the trailers.
            if (e instanceof ConnectError) throw e;
          }
          settle(await status);
        } finally {
          signal?.removeEventListener("abort", onAbort);
          call.cancel();
        }
      }
      return {
        stream: true,
        service: method.parent,
        method,
        header: responseHeader,
        trailer,
        message: messages(),
      };
    },
  };
}

/** Connect's gRPC transport gives a failed call's error the response headers too, after the trailers. */
function withHeader(error: ConnectError, header: Headers): ConnectError {
  header.forEach((value, key) => error.metadata.append(key, value));
  return error;
}

function methodPath(method: DescMethodUnary | DescMethodStreaming): string {
  return `/${method.parent.typeName}/${method.name}`;
}

/**
 * A response that does not decode is INTERNAL (the server broke the contract, nothing the caller
 * can fix), with the same message whatever the method's kind, naming the type and the method.
 */
function decodeResponse<O extends DescMessage>(
  method: DescMethodUnary<DescMessage, O> | DescMethodStreaming<DescMessage, O>,
  bytes: Uint8Array,
): MessageShape<O> {
  try {
    return fromBinary(method.output, bytes);
  } catch (e) {
    throw new ConnectError(
      `malformed ${method.output.typeName} from ${methodPath(method)}: ${errorMessage(e)}`,
      Code.Internal,
    );
  }
}
