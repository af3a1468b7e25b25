import { describe, it } from "vitest";
import assert from "node:assert/strict";
import * as grpc from "@grpc/grpc-js";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, encodeBinaryHeader } from "@connectrpc/connect";
import { EchoRequestSchema } from "../../../gen/fleetlet/testing/v1/echo_pb.js";
import {
  codeName,
  fromGrpcStatus,
  headersToMetadata,
  isConnectionTrouble,
  metadataToHeaders,
  toGrpcStatus,
} from "../../../lib/rpc/status-codes.js";

// The one translation between grpc-js (Metadata with Buffers, status objects) and Connect
// (Headers with base64 text, ConnectError), on values built here; the adapter's test matrix
// covers the same paths over a real connection.

describe("code names", () => {
  it("names codes as the wire does, and unknown ones by number", () => {
    assert.deepEqual([codeName(0), codeName(Code.Unavailable), codeName(17)], ["OK", "UNAVAILABLE", "CODE_17"]);
  });
  it("counts a reset stream as connection trouble, other INTERNAL errors not", () => {
    assert.equal(isConnectionTrouble(Code.Internal, "Received RST_STREAM with code 2"), true);
    assert.equal(isConnectionTrouble(Code.Internal, "malformed x"), false);
  });
});

describe("metadata and headers", () => {
  it("keeps every value of a key and writes -bin values as unpadded base64", () => {
    const md = new grpc.Metadata();
    md.add("x-multi", "a");
    md.add("x-multi", "b");
    md.add("x-trace-bin", Buffer.from([0xfb, 0xff]));
    const headers = metadataToHeaders(md);
    assert.equal(headers.get("x-multi"), "a, b");
    // PROTOCOL-HTTP2.md: implementations should emit unpadded base64 ("+/8=" padded).
    assert.equal(headers.get("x-trace-bin"), "+/8");
  });
  it("turns joined -bin values back into one Buffer each, padded or not", () => {
    const headers = new Headers();
    headers.append("x-trace-bin", "+/8");
    headers.append("x-trace-bin", "AAE=");
    headers.set("x-plain", "v");
    const md = headersToMetadata(headers);
    assert.deepEqual(md.get("x-trace-bin"), [Buffer.from([0xfb, 0xff]), Buffer.from([0x00, 0x01])]);
    assert.deepEqual(md.get("x-plain"), ["v"]);
  });
  it("refuses a -bin value that is not base64, naming the key", () => {
    assert.throws(
      () => headersToMetadata(new Headers({ "x-trace-bin": "not base64!" })),
      (e: unknown) => e instanceof ConnectError && e.code === Code.Internal && e.rawMessage === 'binary header x-trace-bin is not base64: "not base64!"',
    );
  });
});

describe("a ConnectError as a gRPC status and back", () => {
  const detail = create(EchoRequestSchema, { text: "why" });

  it("carries code, message, trailers and details through grpc-status-details-bin", () => {
    const error = new ConnectError("no such thing", Code.NotFound, { "x-from-error": "e" }, [{ desc: EchoRequestSchema, value: detail }]);
    const status = toGrpcStatus(error, new Headers({ "x-trailer": "t" }));
    assert.equal(status.code, grpc.status.NOT_FOUND);
    assert.equal(status.details, "no such thing");
    assert.deepEqual(status.metadata.get("x-trailer"), ["t"]);
    assert.deepEqual(status.metadata.get("x-from-error"), ["e"]);
    // grpc-js writes these two itself; a copy in the metadata would be sent after them.
    assert.deepEqual([status.metadata.get("grpc-status"), status.metadata.get("grpc-message")], [[], []]);
    assert.equal(status.metadata.get("grpc-status-details-bin").length, 1);

    const back = fromGrpcStatus(status);
    assert.equal(back.code, Code.NotFound);
    assert.equal(back.rawMessage, "no such thing");
    assert.deepEqual(back.findDetails(EchoRequestSchema), [detail]);
    assert.equal(back.metadata.get("x-trailer"), "t");
  });
  it("drops a details header copied along in the metadata of an error without details", () => {
    const upstream = toGrpcStatus(new ConnectError("upstream", Code.NotFound, undefined, [{ desc: EchoRequestSchema, value: detail }]), new Headers());
    const copied = metadataToHeaders(upstream.metadata);
    const status = toGrpcStatus(new ConnectError("ours", Code.Unavailable, copied), new Headers());
    assert.deepEqual(status.metadata.get("grpc-status-details-bin"), []);
    const back = fromGrpcStatus(status);
    assert.deepEqual([back.code, back.rawMessage, back.details], [Code.Unavailable, "ours", []]);
  });
  it("sends an unencodable trailer as INTERNAL naming it, without trailers", () => {
    const status = toGrpcStatus(new ConnectError("x", Code.NotFound), new Headers({ "x-bad-bin": "%%%" }));
    assert.deepEqual([status.code, status.details], [grpc.status.INTERNAL, 'binary header x-bad-bin is not base64: "%%%"']);
    assert.deepEqual(status.metadata.toJSON(), {});
  });
  it("reads a message with characters grpc-js URI-decoded back unchanged", () => {
    const error = fromGrpcStatus({ code: grpc.status.INVALID_ARGUMENT, details: "a%b ü: 100%", metadata: new grpc.Metadata() });
    assert.deepEqual([error.code, error.rawMessage], [Code.InvalidArgument, "a%b ü: 100%"]);
  });
  it("answers an undecodable grpc-status-details-bin with DATA_LOSS", () => {
    const md = new grpc.Metadata();
    // message (field 2) announces 5 bytes and brings 1
    md.set("grpc-status-details-bin", Buffer.from([0x12, 0x05, 0x61]));
    const error = fromGrpcStatus({ code: grpc.status.NOT_FOUND, details: "x", metadata: md });
    assert.deepEqual([error.code, error.rawMessage], [Code.DataLoss, "premature EOF"]);
  });
  it("answers a status code gRPC does not define with INTERNAL, as Connect does", () => {
    const error = fromGrpcStatus({ code: 17 as grpc.status, details: "x", metadata: new grpc.Metadata() });
    assert.deepEqual([error.code, error.rawMessage], [Code.Internal, "invalid grpc-status: 17"]);
  });
  it("keeps the local errors of grpc-js (no metadata) as they are", () => {
    const error = fromGrpcStatus({ code: grpc.status.UNAVAILABLE, details: "No connection established" });
    assert.deepEqual([error.code, error.rawMessage], [Code.Unavailable, "No connection established"]);
  });
  it("encodes -bin trailers of a handler as base64 text end to end", () => {
    const status = toGrpcStatus(new ConnectError("x", Code.Aborted), new Headers({ "x-id-bin": encodeBinaryHeader(Uint8Array.of(1, 2, 3)) }));
    assert.deepEqual(status.metadata.get("x-id-bin"), [Buffer.from([1, 2, 3])]);
    assert.equal(fromGrpcStatus(status).metadata.get("x-id-bin"), "AQID");
  });
});
