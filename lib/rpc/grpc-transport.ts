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

/**
 * A Connect Transport over one grpc-js channel, so `createClient(Service, transport)` gives typed
 * clients while the connection itself is grpc-js's: one long-lived HTTP/2 channel per host with
 * its own reconnect backoff and an observable connectivity state (see host-channel usage in the
 * aggregator). Errors come back as ConnectError with the gRPC code and message.
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

  const emptyMetadata = new grpc.Metadata();
  return {
    client,
    close: () => client.close(),

    unaryRaw(method: DescMethodUnary, request: Buffer, timeoutMs: number, signal?: AbortSignal) {
      const path = `/${method.parent.typeName}/${method.name}`;
      return new Promise<Buffer>((resolve, reject) => {
        if (signal?.aborted) {
          reject(ConnectError.from(signal.reason));
          return;
        }
        const onAbort = () => call.cancel();
        const call = client.makeUnaryRequest<Buffer, Buffer>(path, identity, identity, request, emptyMetadata, { deadline: Date.now() + timeoutMs }, (err, value) => {
          signal?.removeEventListener("abort", onAbort);
          if (err) reject(fromServiceError(err));
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
      const path = `/${method.parent.typeName}/${method.name}`;
      const request = create(method.input, input);
      return new Promise((resolve, reject) => {
        if (signal?.aborted) {
          reject(ConnectError.from(signal.reason));
          return;
        }
        const responseHeader = new Headers();
        const call = client.makeUnaryRequest<Buffer, Buffer>(
          path,
          identity,
          identity,
          Buffer.from(toBinary(method.input, request)),
          headersToMetadata(header),
          callOptions(timeoutMs),
          (err, value) => {
            signal?.removeEventListener("abort", onAbort);
            if (err) {
              reject(fromServiceError(err));
              return;
            }
            try {
              resolve({
                stream: false,
                service: method.parent,
                method,
                header: responseHeader,
                trailer: new Headers(),
                message: fromBinary(method.output, value ?? Buffer.alloc(0)),
              });
            } catch (e) {
              reject(new ConnectError(`malformed ${method.output.typeName}: ${(e as Error).message}`, Code.Internal));
            }
          },
        );
        call.on("metadata", (md: grpc.Metadata) => copyMetadata(md, responseHeader));
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
      const path = `/${method.parent.typeName}/${method.name}`;
      const metadata = headersToMetadata(header);
      const opts = callOptions(timeoutMs);
      const encode = (m: MessageInitShape<I>) => Buffer.from(toBinary(method.input, create(method.input, m)));
      let call: grpc.ClientReadableStream<Buffer> | grpc.ClientDuplexStream<Buffer, Buffer>;
      let unaryResult: Promise<Buffer> | undefined;
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
        case "bidi_streaming": {
          const duplex = client.makeBidiStreamRequest(path, identity, identity, metadata, opts);
          void feed(duplex, input, encode);
          call = duplex;
          break;
        }
        case "client_streaming": {
          let writable!: grpc.ClientWritableStream<Buffer>;
          unaryResult = new Promise<Buffer>((resolve, reject) => {
            writable = client.makeClientStreamRequest(path, identity, identity, metadata, opts, (err, value) =>
              err ? reject(fromServiceError(err)) : resolve(value ?? Buffer.alloc(0)),
            );
          });
          void feed(writable, input, encode);
          call = writable as unknown as grpc.ClientReadableStream<Buffer>;
          break;
        }
      }
      const onAbort = () => call.cancel();
      if (signal?.aborted) call.cancel();
      signal?.addEventListener("abort", onAbort, { once: true });
      const trailer = new Headers();
      const responseHeader = new Headers();
      call.on("metadata", (md: grpc.Metadata) => copyMetadata(md, responseHeader));

      async function* messages(): AsyncGenerator<MessageShape<O>> {
        try {
          if (unaryResult) {
            yield fromBinary(method.output, await unaryResult);
            return;
          }
          // A non-OK status arrives as an 'error' event, which makes the iteration throw.
          const readable = call as NodeJS.ReadableStream;
          try {
            for await (const chunk of readable as AsyncIterable<Buffer>) {
              yield fromBinary(method.output, chunk);
            }
          } catch (e) {
            throw e instanceof ConnectError ? e : fromServiceError(e as grpc.ServiceError);
          }
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

async function feed<T>(
  writable: grpc.ClientWritableStream<Buffer> | grpc.ClientDuplexStream<Buffer, Buffer>,
  input: AsyncIterable<T>,
  encode: (m: T) => Buffer,
): Promise<void> {
  try {
    for await (const m of input) {
      if (!writable.write(encode(m))) {
        await new Promise((r) => writable.once("drain", r));
      }
    }
    writable.end();
  } catch {
    writable.cancel();
  }
}

/** grpc-js error → ConnectError with the same code, the server's message, and its trailers. */
export function fromServiceError(err: Partial<grpc.ServiceError>): ConnectError {
  const metadata = new Headers();
  if (err.metadata) copyMetadata(err.metadata, metadata);
  const code = typeof err.code === "number" && err.code > 0 && err.code <= 16 ? err.code : Code.Unknown;
  return new ConnectError(err.details ?? err.message ?? "unknown error", code as number as Code, metadata);
}

function headersToMetadata(header: HeadersInit | undefined): grpc.Metadata {
  const metadata = new grpc.Metadata();
  if (header) new Headers(header).forEach((value, key) => metadata.add(key, value));
  return metadata;
}

function copyMetadata(md: grpc.Metadata, into: Headers): void {
  for (const [key, value] of Object.entries(md.getMap())) {
    if (!key.endsWith("-bin")) into.append(key, String(value));
  }
}
