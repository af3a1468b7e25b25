import { isIPv4, isIPv6 } from "node:net";
import { create } from "@bufbuild/protobuf";
import { StandbyPolicySchema, type StandbyPolicy } from "../../gen/fleetlet/agent/v1/standby_pb.js";
import { invalidArgument, truncate } from "../../lib/rpc/field-error.js";
import { formatGoDuration, parseGoDuration } from "../../lib/go-duration.js";
import { errorMessage } from "../../lib/error-message.js";
import { DEFAULT_MIN_IDLE_MS } from "./standby-timings.js";

export interface PolicyLimits {
  /** --standby-min-idle; default 5 s. */
  minIdleMs: number;
}

export const DEFAULT_POLICY_LIMITS: PolicyLimits = { minIdleMs: DEFAULT_MIN_IDLE_MS };
const MAX_IDLE_NS = 30 * 24 * 3600e9;
const MAX_LIST = 64;
const DRIVERS = new Set(["", "signal", "cgroup", "docker", "exec"]);

/**
 * Normalises a standby policy as standby.md says: canonical idle timeout, masked + deduplicated
 * + sorted CIDRs, deduplicated + sorted ports. A disabled policy keeps its other fields (so
 * enabling it again restores them) but they must still be valid. Every rejection is
 * INVALID_ARGUMENT naming the field (`<prefix>.idle_timeout`, ...) and quoting the value.
 */
export function normalizeStandbyPolicy(input: StandbyPolicy, prefix: string, limits: PolicyLimits = DEFAULT_POLICY_LIMITS): StandbyPolicy {
  const out = create(StandbyPolicySchema, { enabled: input.enabled, wakeOnTraffic: input.wakeOnTraffic });
  const timeout = input.idleTimeout.trim();
  if (timeout === "") {
    if (input.enabled) throw invalidArgument(`${prefix}.idle_timeout`, "is required when the policy is enabled");
  } else {
    let ns: number;
    try {
      ns = parseGoDuration(timeout);
    } catch (e) {
      throw invalidArgument(`${prefix}.idle_timeout`, `${JSON.stringify(truncate(timeout))}: ${errorMessage(e)} (e.g. 300s, 1h30m, 1.5h)`);
    }
    if (ns <= 0) throw invalidArgument(`${prefix}.idle_timeout`, `${JSON.stringify(timeout)} must be greater than 0`);
    if (ns < limits.minIdleMs * 1e6) {
      throw invalidArgument(`${prefix}.idle_timeout`, `${JSON.stringify(timeout)} is below the minimum ${formatGoDuration(limits.minIdleMs * 1e6)}`);
    }
    if (ns > MAX_IDLE_NS) throw invalidArgument(`${prefix}.idle_timeout`, `${JSON.stringify(timeout)} is above the maximum 720h0m0s (30 days)`);
    out.idleTimeout = formatGoDuration(ns);
  }

  const cidrs = new Map<string, ParsedCidr>();
  const rawCidrs = input.ignoreSourceCidrs.map((c) => c.trim()).filter((c) => c !== "");
  if (rawCidrs.length > MAX_LIST) throw invalidArgument(`${prefix}.ignore_source_cidrs`, `at most ${MAX_LIST} entries, got ${rawCidrs.length}`);
  input.ignoreSourceCidrs.forEach((raw, i) => {
    const c = raw.trim();
    if (c === "") return;
    const parsed = parseCidr(c);
    if (!parsed) {
      throw invalidArgument(`${prefix}.ignore_source_cidrs[${i}]`, `${JSON.stringify(truncate(raw))} is not a CIDR (address/length, e.g. 10.0.0.0/8 or fd00::/8)`);
    }
    cidrs.set(parsed.text, parsed);
  });
  out.ignoreSourceCidrs = [...cidrs.values()].sort(compareCidrs).map((c) => c.text);

  if (input.ignoreDestinationPorts.length > MAX_LIST) {
    throw invalidArgument(`${prefix}.ignore_destination_ports`, `at most ${MAX_LIST} entries, got ${input.ignoreDestinationPorts.length}`);
  }
  input.ignoreDestinationPorts.forEach((port, i) => {
    if (port < 1 || port > 65535) throw invalidArgument(`${prefix}.ignore_destination_ports[${i}]`, `must be 1-65535, got ${port}`);
  });
  out.ignoreDestinationPorts = [...new Set(input.ignoreDestinationPorts)].sort((a, b) => a - b);

  const driver = input.driver.trim();
  if (!DRIVERS.has(driver)) {
    throw invalidArgument(`${prefix}.driver`, `${JSON.stringify(truncate(input.driver))} is not one of signal, cgroup, docker, exec (or empty: by instance kind)`);
  }
  out.driver = driver;
  return out;
}

/** A network: address bytes masked to the prefix, and its canonical text. */
export interface ParsedCidr {
  family: 4 | 6;
  bytes: Uint8Array;
  prefix: number;
  text: string;
}

/**
 * Strict CIDR parsing: `/len` required, no leading zeros in IPv4 octets or in the length, no
 * IPv6 zones; the address is masked to its network (192.168.1.1/24 → 192.168.1.0/24).
 */
export function parseCidr(text: string): ParsedCidr | undefined {
  const slash = text.indexOf("/");
  if (slash < 0) return undefined;
  const addr = text.slice(0, slash);
  const len = text.slice(slash + 1);
  if (!/^(0|[1-9]\d{0,2})$/.test(len) || addr.includes("%")) return undefined;
  const prefix = Number(len);
  let bytes: Uint8Array;
  let family: 4 | 6;
  if (isIPv4(addr)) {
    if (addr.split(".").some((o) => o.length > 1 && o.startsWith("0"))) return undefined;
    family = 4;
    bytes = Uint8Array.from(addr.split(".").map(Number));
  } else if (isIPv6(addr)) {
    family = 6;
    bytes = ipv6Bytes(addr);
  } else {
    return undefined;
  }
  if (prefix > bytes.length * 8) return undefined;
  for (let bit = prefix; bit < bytes.length * 8; bit++) bytes[bit >> 3]! &= ~(0x80 >> (bit & 7));
  return { family, bytes, prefix, text: `${formatAddress(family, bytes)}/${prefix}` };
}

/** True when `addr` (an IPv4 or IPv6 address) lies inside `cidr`. */
export function cidrContains(cidr: ParsedCidr, addr: string): boolean {
  const bytes = isIPv4(addr) ? Uint8Array.from(addr.split(".").map(Number)) : isIPv6(addr) ? ipv6Bytes(addr) : undefined;
  if (!bytes || bytes.length !== cidr.bytes.length) return false;
  for (let bit = 0; bit < cidr.prefix; bit++) {
    const mask = 0x80 >> (bit & 7);
    if ((bytes[bit >> 3]! & mask) !== (cidr.bytes[bit >> 3]! & mask)) return false;
  }
  return true;
}

function compareCidrs(a: ParsedCidr, b: ParsedCidr): number {
  if (a.family !== b.family) return a.family - b.family;
  for (let i = 0; i < a.bytes.length; i++) if (a.bytes[i] !== b.bytes[i]) return a.bytes[i]! - b.bytes[i]!;
  return a.prefix - b.prefix;
}

function ipv6Bytes(addr: string): Uint8Array {
  let text = addr;
  // An embedded IPv4 tail (::ffff:1.2.3.4) becomes two hex groups.
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (v4) {
    const o = v4[1]!.split(".").map(Number);
    text = text.slice(0, -v4[1]!.length) + `${((o[0]! << 8) | o[1]!).toString(16)}:${((o[2]! << 8) | o[3]!).toString(16)}`;
  }
  const [head = "", tail] = text.split("::");
  const h = head === "" ? [] : head.split(":");
  const t = tail === undefined || tail === "" ? [] : tail.split(":");
  const groups = tail === undefined ? h : [...h, ...Array(8 - h.length - t.length).fill("0"), ...t];
  const bytes = new Uint8Array(16);
  groups.forEach((g, i) => {
    const v = parseInt(g, 16);
    bytes[i * 2] = v >> 8;
    bytes[i * 2 + 1] = v & 0xff;
  });
  return bytes;
}

function formatAddress(family: 4 | 6, bytes: Uint8Array): string {
  if (family === 4) return [...bytes].join(".");
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push((bytes[i]! << 8) | bytes[i + 1]!);
  // RFC 5952: compress the longest run of two or more zero groups, lower-case hex.
  let bestStart = -1;
  let bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen && j - i >= 2) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestStart < 0) return hex.join(":");
  return `${hex.slice(0, bestStart).join(":")}::${hex.slice(bestStart + bestLen).join(":")}`;
}
