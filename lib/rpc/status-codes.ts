import { Code } from "@connectrpc/connect";

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
