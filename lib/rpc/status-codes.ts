import * as grpc from "@grpc/grpc-js";
import { Code, ConnectError, decodeBinaryHeader, encodeBinaryHeader } from "@connectrpc/connect";
import {
  findTrailerError,
  headerGrpcMessage,
  headerGrpcStatus,
  headerStatusDetailsBin,
  setTrailerStatus,
} from "@connectrpc/connect/protocol-grpc";
import { truncate } from "./field-error.js";

// The gRPC status on the wire and its ConnectError: code names, and the one translation between
// grpc-js's status objects and metadata and Connect's errors and Headers, used by the server
// adapter and the client transport alike.

/**
 * gRPC status code names as they appear on the wire and in HostResult.code
 * (https://grpc.github.io/grpc/core/md_doc_statuscodes.html). Connect's Code enum uses the same
 * numbers as gRPC, so a ConnectError's code is sent as the gRPC status unchanged.
 */
const names: Record<number, string> = {
  0: "OK",
  [Code.Canceled]: "CANCELLED",
  [Code.Unknown]: "UNKNOWN",
  [Code.InvalidArgument]: "INVALID_ARGUMENT",
  [Code.DeadlineExceeded]: "DEADLINE_EXCEEDED",
  [Code.NotFound]: "NOT_FOUND",
  [Code.AlreadyExists]: "ALREADY_EXISTS",
  [Code.PermissionDenied]: "PERMISSION_DENIED",
  [Code.ResourceExhausted]: "RESOURCE_EXHAUSTED",
  [Code.FailedPrecondition]: "FAILED_PRECONDITION",
  [Code.Aborted]: "ABORTED",
  [Code.OutOfRange]: "OUT_OF_RANGE",
  [Code.Unimplemented]: "UNIMPLEMENTED",
  [Code.Internal]: "INTERNAL",
  [Code.Unavailable]: "UNAVAILABLE",
  [Code.DataLoss]: "DATA_LOSS",
  [Code.Unauthenticated]: "UNAUTHENTICATED",
};

/** The gRPC name of a status code ("OK", "UNAVAILABLE", ...). */
export function codeName(code: number): string {
  return names[code] ?? `CODE_${code}`;
}

/**
 * A failed call or stream to a host that says nothing about the host's answers, only about the
 * connection: down, slow, cancelled, or a stream reset by HTTP/2 (grpc-js reports a reset as
 * INTERNAL "Received RST_STREAM ..."). Followers retry these quietly; the host's status shows them.
 */
export function isConnectionTrouble(code: number, message: string): boolean {
  return code === Code.Unavailable || code === Code.DeadlineExceeded || code === Code.Canceled || (code === Code.Internal && /RST_STREAM/.test(message));
}

/**
 * grpc-js metadata → Fetch Headers, holding what the wire holds, as Connect's own transports do:
 * a `-bin` value is base64 text (gRPC's PROTOCOL-HTTP2.md: binary headers are base64; grpc-js
 * decodes them to Buffers), read back with Connect's decodeBinaryHeader. Every value of a key is
 * kept (Metadata.getMap() would keep only the first).
 */
export function metadataToHeaders(metadata: grpc.Metadata, into = new Headers()): Headers {
  for (const [key, values] of Object.entries(metadata.toJSON())) {
    for (const value of values) {
      into.append(key, typeof value === "string" ? value : encodeBinaryHeader(value));
    }
  }
  return into;
}

/**
 * Fetch Headers → grpc-js metadata, which wants Buffers for `-bin` keys (it base64-encodes them
 * on the wire). Headers joins repeated values with ", " and base64 has no comma, so a joined
 * `-bin` value splits back into its values. A `-bin` value that is not base64 is an error naming
 * the key (INTERNAL: the program set it), never sent mangled.
 */
export function headersToMetadata(headers: Headers | undefined, into = new grpc.Metadata()): grpc.Metadata {
  headers?.forEach((value, key) => {
    if (!key.endsWith("-bin")) {
      into.add(key, value);
      return;
    }
    for (const part of value.split(",")) {
      try {
        into.add(key, Buffer.from(decodeBinaryHeader(part.trim())));
      } catch (e) {
        throw new ConnectError(`binary header ${key} is not base64: ${JSON.stringify(truncate(part))}`, Code.Internal, undefined, undefined, e);
      }
    }
  });
  return into;
}

/**
 * A handler's ConnectError as the gRPC status grpc-js sends: code, message, and trailers made by
 * Connect's own setTrailerStatus, so error details travel as `grpc-status-details-bin` (a
 * google.rpc.Status carrying code, message and the details as Any; PROTOCOL-HTTP2.md and
 * https://grpc.io/docs/guides/error/#richer-error-model), which grpc-js, Connect and `buf curl`
 * all read. grpc-js writes grpc-status and grpc-message itself, after the metadata, so ours are
 * dropped; a details header that came in the error's metadata (an upstream's, copied along) is
 * dropped unless the error has details of its own, so it can never contradict the code sent.
 * Trailers that cannot be encoded turn the status into the INTERNAL error that says why.
 */
export function toGrpcStatus(error: ConnectError, trailer: Headers): grpc.StatusObject {
  try {
    const headers = setTrailerStatus(new Headers(trailer), error);
    headers.delete(headerGrpcStatus);
    headers.delete(headerGrpcMessage);
    if (error.details.length === 0) headers.delete(headerStatusDetailsBin);
    return { code: error.code as number as grpc.status, details: error.rawMessage, metadata: headersToMetadata(headers) };
  } catch (e) {
    const failure = ConnectError.from(e, Code.Internal);
    return { code: failure.code as number as grpc.status, details: failure.rawMessage, metadata: new grpc.Metadata() };
  }
}

/**
 * A failed call's grpc-js status → ConnectError, read the way Connect's gRPC transport reads
 * trailers (findTrailerError): a `grpc-status-details-bin` google.rpc.Status wins over
 * grpc-status/grpc-message and yields the error's details; the trailers become its metadata.
 * grpc-js has already taken grpc-status and grpc-message out of the metadata and URI-decoded the
 * message, so both are put back as they were on the wire first.
 */
export function fromGrpcStatus(status: Partial<grpc.StatusObject>): ConnectError {
  const headers = status.metadata ? metadataToHeaders(status.metadata) : new Headers();
  const message = status.details ?? "unknown error";
  if (typeof status.code !== "number" || status.code === 0) return new ConnectError(message, Code.Unknown, headers);
  headers.set(headerGrpcStatus, String(status.code));
  headers.set(headerGrpcMessage, encodeURIComponent(message));
  try {
    // undefined only for a details header whose Status says OK: then grpc-status decides.
    return findTrailerError(headers) ?? new ConnectError(message, status.code as number as Code, headers);
  } catch (e) {
    // An undecodable grpc-status-details-bin: DATA_LOSS from Connect's decodeBinaryHeader.
    return ConnectError.from(e, Code.DataLoss);
  }
}
