import { invalidArgument } from "../../lib/rpc/field-error.js";

/** IFNAMSIZ is 16 including the NUL: names are 1-15 bytes (include/uapi/linux/if.h). */
export const MAX_INTERFACE_NAME = 15;

/**
 * Checks an interface name before it is ever joined into a /sys path: 1-15 characters, no '/',
 * no NUL, no whitespace, not '.' or '..' (the kernel's dev_valid_name rules, net/core/dev.c).
 */
export function validateInterfaceName(field: string, name: string): void {
  if (name.length === 0 || name.length > MAX_INTERFACE_NAME) {
    throw invalidArgument(field, `interface name must be 1-${MAX_INTERFACE_NAME} characters, got ${name.length}`);
  }
  if (name === "." || name === "..") throw invalidArgument(field, `interface name must not be ${JSON.stringify(name)}`);
  if (/[/\0\s:]/.test(name)) {
    throw invalidArgument(field, `interface name ${JSON.stringify(name)} must not contain '/', ':', NUL or whitespace`);
  }
}

/**
 * The host-side interface of an instance with networking and no explicit name:
 * `<prefix><first 8 characters of the id, lower-cased>` (metrics.md), e.g.
 * abcd1234efgh5678 → fl-abcd1234.
 */
export function deriveTapName(prefix: string, id: string): string {
  return `${prefix}${id.slice(0, 8).toLowerCase()}`;
}

/** A prefix is usable when prefix + 8 characters still fits an interface name. */
export function validateTapPrefix(prefix: string): void {
  if (prefix.length === 0 || prefix.length > MAX_INTERFACE_NAME - 8 || /[/\0\s:]/.test(prefix)) {
    throw new Error(`tap prefix ${JSON.stringify(prefix)} must be 1-${MAX_INTERFACE_NAME - 8} characters without '/', ':', NUL or whitespace`);
  }
}
