import { Code, ConnectError } from "@connectrpc/connect";
import { errorMessage } from "../../../lib/error-message.js";
import { KubeApiError, KubeTransportError } from "./kube-api-client.js";

/**
 * An error of a call to the API server as the ConnectError the ContainerRuntime contract asks
 * for, keeping the Status message (which names the object, the user and the missing permission):
 * 401 → UNAUTHENTICATED, 403 → PERMISSION_DENIED, 404 → NOT_FOUND, 400/422 → FAILED_PRECONDITION
 * (the arguments are checked before a request — e.g. the container name against the pod — so
 * what the server still refuses is the object's state: "container ... is waiting to start"),
 * 429 → RESOURCE_EXHAUSTED, other statuses and
 * network failures → UNAVAILABLE, an abort by the caller → CANCELED.
 */
export function toConnectError(err: unknown, what: string): ConnectError {
  if (err instanceof ConnectError) return err;
  if (err instanceof KubeApiError) {
    const text = `kubernetes: ${what}: ${err.statusMessage || err.reason || `HTTP ${err.httpStatus}`}`;
    switch (err.httpStatus) {
      case 401:
        return new ConnectError(text, Code.Unauthenticated, undefined, undefined, err);
      case 403:
        return new ConnectError(text, Code.PermissionDenied, undefined, undefined, err);
      case 404:
        return new ConnectError(text, Code.NotFound, undefined, undefined, err);
      case 400:
      case 422:
        return new ConnectError(text, Code.FailedPrecondition, undefined, undefined, err);
      case 429:
        return new ConnectError(text, Code.ResourceExhausted, undefined, undefined, err);
      default:
        return new ConnectError(`${text} (HTTP ${err.httpStatus})`, Code.Unavailable, undefined, undefined, err);
    }
  }
  if (err instanceof KubeTransportError) return new ConnectError(`kubernetes: ${what}: ${err.message}`, Code.Unavailable, undefined, undefined, err);
  if (err instanceof Error && err.name === "AbortError") return new ConnectError(`kubernetes: ${what}: cancelled`, Code.Canceled, undefined, undefined, err);
  return new ConnectError(`kubernetes: ${what}: ${errorMessage(err)}`, Code.Unavailable, undefined, undefined, err);
}

/** A short description of why the API server is not usable, for RuntimeInfo.last_error. */
export function describeFailure(err: unknown): string {
  if (err instanceof KubeApiError) return `${err.httpStatus} ${err.reason || "error"}: ${err.statusMessage || "(no message)"}`;
  return errorMessage(err);
}
