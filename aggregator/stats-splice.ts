/**
 * Builds FleetService.ListInstanceStatsResponse bytes from the agents' answers without decoding
 * and re-encoding every stat. HostInstanceStats has the agent InstanceStats' fields under the
 * same numbers plus `host` at field 100 (reserved in InstanceStats for this), so each agent stat,
 * as bytes, becomes a host stat by appending the host field. Protobuf concatenation merges
 * messages (repeated fields append), so the whole answer is the host stats, in order, followed
 * by the encoded host_results (https://protobuf.dev/programming-guides/encoding/#last-one-wins).
 */

const WIRE_VARINT = 0;
const WIRE_I64 = 1;
const WIRE_LEN = 2;
const WIRE_I32 = 5;

export class WireFormatError extends Error {
  override name = "WireFormatError";
}

/**
 * The encoded stats (field 1 entries) of an agent's ListInstanceStatsResponse, each as bytes.
 * Each entry's wire structure is checked too (its fields, and the Timestamp inside
 * sampled_at), so one malformed or skewed agent answer fails that host alone instead of making
 * the whole fleet answer undecodable for the client.
 */
export function agentStatEntries(bytes: Uint8Array): Uint8Array[] {
  const out: Uint8Array[] = [];
  walk(bytes, (field, entry) => {
    if (field !== 1) return;
    walk(entry, (inner, value) => {
      if (inner === 3) walk(value, () => undefined);
    });
    out.push(entry);
  });
  return out;
}

/** Walks the fields of one message, calling `onLen` for each length-delimited one. */
function walk(bytes: Uint8Array, onLen: (field: number, value: Uint8Array) => void): void {
  let pos = 0;
  while (pos < bytes.length) {
    const [tag, afterTag] = readVarint(bytes, pos);
    pos = afterTag;
    const field = Number(tag >> 3n);
    const wire = Number(tag & 7n);
    if (field === 0) throw new WireFormatError("field number 0");
    switch (wire) {
      case WIRE_VARINT:
        pos = readVarint(bytes, pos)[1];
        break;
      case WIRE_I64:
        pos += 8;
        break;
      case WIRE_I32:
        pos += 4;
        break;
      case WIRE_LEN: {
        const [len, start] = readVarint(bytes, pos);
        const end = start + Number(len);
        if (end > bytes.length) throw new WireFormatError(`field ${field}: length ${len} runs past the end`);
        onLen(field, bytes.subarray(start, end));
        pos = end;
        break;
      }
      default:
        throw new WireFormatError(`field ${field}: unsupported wire type ${wire}`);
    }
    if (pos > bytes.length) throw new WireFormatError("truncated message");
  }
}

/** Field 1 (stats) entries of the fleet answer: each agent stat with `host` (field 100) appended. */
export function hostStatEntries(host: string, stats: Uint8Array[]): Buffer {
  const hostBytes = Buffer.from(host, "utf8");
  // tag of field 100, wire type 2 = (100 << 3) | 2 = 802 = varint a2 06
  const hostField = Buffer.concat([Buffer.from([0xa2, 0x06]), varint(hostBytes.length), hostBytes]);
  const parts: Uint8Array[] = [];
  for (const s of stats) {
    parts.push(Buffer.from([0x0a]), varint(s.length + hostField.length), s, hostField);
  }
  return Buffer.concat(parts);
}

function readVarint(bytes: Uint8Array, pos: number): [bigint, number] {
  let result = 0n;
  let shift = 0n;
  for (let i = 0; i < 10; i++) {
    if (pos >= bytes.length) throw new WireFormatError("truncated varint");
    const b = bytes[pos++]!;
    result |= BigInt(b & 0x7f) << shift;
    if ((b & 0x80) === 0) return [result, pos];
    shift += 7n;
  }
  throw new WireFormatError("varint longer than 10 bytes");
}

function varint(n: number): Buffer {
  const out: number[] = [];
  while (n > 0x7f) {
    out.push((n & 0x7f) | 0x80);
    n = Math.floor(n / 128);
  }
  out.push(n);
  return Buffer.from(out);
}
