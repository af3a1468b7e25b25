/**
 * The P2 reference: a bare grpc-js server with one unary method that returns the request bytes
 * (no protobuf classes, no adapter, no logging): the framework ceiling on this machine.
 * Prints {"msg":"echo serving","address":...} once bound; stops on SIGTERM or when stdin closes.
 */
import * as grpc from "@grpc/grpc-js";
import { EchoService } from "../../gen/fleetlet/testing/v1/echo_pb.js";

const ECHO_PATH = `/${EchoService.typeName}/${EchoService.method.echo.name}`;

const identity = (b: Buffer) => b;
const server = new grpc.Server();
server.addService(
  {
    Echo: {
      path: ECHO_PATH,
      requestStream: false,
      responseStream: false,
      requestSerialize: identity,
      requestDeserialize: identity,
      responseSerialize: identity,
      responseDeserialize: identity,
    },
  },
  {
    Echo: (call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) => callback(null, call.request),
  },
);
server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, port) => {
  if (err) {
    process.stderr.write(`echo server: ${err.message}\n`);
    process.exit(1);
  }
  process.stdout.write(`${JSON.stringify({ msg: "echo serving", address: `127.0.0.1:${port}` })}\n`);
});
const stop = () => {
  server.forceShutdown();
  process.exit(0);
};
process.on("SIGTERM", stop);
process.stdin.on("end", stop);
process.stdin.resume();
