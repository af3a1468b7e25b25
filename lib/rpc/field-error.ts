import { Code, ConnectError } from "@connectrpc/connect";

/**
 * The one way to reject bad input: INVALID_ARGUMENT whose message starts with the field path,
 * so a caller in any language can tell which value to fix ("instance.id: must match ...").
 */
export function invalidArgument(field: string, rule: string): ConnectError {
  return new ConnectError(`${field}: ${rule}`, Code.InvalidArgument);
}

/** Instance ids, host names: api.md's id rule. */
export const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/** Throws INVALID_ARGUMENT naming `field` unless `value` is a valid id. */
export function requireId(field: string, value: string): string {
  if (value === "") {
    throw invalidArgument(field, "is required");
  }
  if (!ID_PATTERN.test(value)) {
    throw invalidArgument(
      field,
      `${JSON.stringify(truncate(value))} must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`,
    );
  }
  return value;
}

/** Long or binary input is echoed back shortened, never whole. */
export function truncate(value: string, max = 64): string {
  return value.length > max ? `${value.slice(0, max)}...` : value;
}
