/**
 * grpc-js unary calls on raw bytes, for load clients and references: no message classes on the
 * hot path, so the client costs the same whichever server it drives.
 */
import * as grpc from "@grpc/grpc-js";
import { Malfunction } from "../common/report.js";

const identity = (b: Buffer) => b;

/** One channel of its own (no subchannel sharing with other clients to the same target). */
export function rawClient(target: string): grpc.Client {
  return new grpc.Client(target, grpc.credentials.createInsecure(), {
    "grpc.use_local_subchannel_pool": 1,
    "grpc.max_receive_message_length": 64 * 1024 * 1024,
  });
}

export function waitReady(client: grpc.Client, timeoutMs = 10_000): Promise<void> {
  return new Promise((resolve, reject) =>
    client.waitForReady(Date.now() + timeoutMs, (err) => (err ? reject(new Malfunction(`channel not ready: ${err.message}`)) : resolve())),
  );
}

/** Resolves with the response bytes; any non-OK status is a Malfunction. */
export function rawUnary(client: grpc.Client, path: string, request: Buffer, timeoutMs?: number): Promise<Buffer> {
  const options: grpc.CallOptions = timeoutMs !== undefined ? { deadline: Date.now() + timeoutMs } : {};
  return new Promise((resolve, reject) => {
    client.makeUnaryRequest<Buffer, Buffer>(path, identity, identity, request, new grpc.Metadata(), options, (err, value) =>
      err ? reject(new Malfunction(`${path}: ${grpc.status[err.code] ?? err.code}: ${err.details}`)) : resolve(value ?? Buffer.alloc(0)),
    );
  });
}
