import { create, toBinary, ScalarType, type DescField, type DescMessage, type MessageShape } from "@bufbuild/protobuf";

/** A small seeded PRNG (mulberry32), so a failing fuzz case can be replayed from its seed. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const NASTY_STRINGS = ["", "a", "../x", "a/b", ".", "..", "x".repeat(16), "x".repeat(300), "\u0000", "tap 0", "é", "😀", "-1", "10.0.0.1", "::1", "1.2.3.999", "a\nb", "A".repeat(128), "vm-1"];

/** A message of `schema` with random, often hostile, values in random fields. */
export function randomMessage<T extends DescMessage>(schema: T, rnd: () => number, depth = 0): MessageShape<T> {
  const msg = create(schema) as Record<string, unknown>;
  for (const field of schema.fields) {
    if (rnd() < 0.4) continue;
    const value = randomFieldValue(field, rnd, depth);
    if (value === undefined) continue;
    if (field.oneof) {
      (msg as Record<string, unknown>)[field.oneof.localName] = { case: field.localName, value };
    } else {
      msg[field.localName] = value;
    }
  }
  return msg as MessageShape<T>;
}

function randomFieldValue(field: DescField, rnd: () => number, depth: number): unknown {
  switch (field.fieldKind) {
    case "scalar":
      return randomScalar(field.scalar, rnd);
    case "enum":
      return rnd() < 0.8 ? (field.enum.values[Math.floor(rnd() * field.enum.values.length)]?.number ?? 0) : Math.floor(rnd() * 2000) - 1000;
    case "message":
      return depth > 3 ? undefined : randomMessage(field.message, rnd, depth + 1);
    case "list": {
      const n = Math.floor(rnd() * 4);
      const out: unknown[] = [];
      for (let i = 0; i < n; i++) {
        if (field.listKind === "scalar") out.push(randomScalar(field.scalar, rnd));
        else if (field.listKind === "enum") out.push(Math.floor(rnd() * 10));
        else if (depth <= 3) out.push(randomMessage(field.message, rnd, depth + 1));
      }
      return out;
    }
    case "map": {
      const out: Record<string, unknown> = {};
      const n = Math.floor(rnd() * 4);
      for (let i = 0; i < n; i++) {
        const key = String(randomScalar(ScalarType.STRING, rnd));
        if (field.mapKind === "scalar") out[key] = randomScalar(field.scalar, rnd);
        else if (field.mapKind === "enum") out[key] = 0;
        else if (depth <= 3) out[key] = randomMessage(field.message, rnd, depth + 1);
      }
      return out;
    }
  }
}

function randomScalar(type: ScalarType, rnd: () => number): unknown {
  const pick = <V>(xs: V[]) => xs[Math.floor(rnd() * xs.length)]!;
  switch (type) {
    case ScalarType.STRING:
      return rnd() < 0.7 ? pick(NASTY_STRINGS) : Array.from({ length: Math.floor(rnd() * 40) }, () => String.fromCharCode(Math.floor(rnd() * 0x2000))).join("");
    case ScalarType.BYTES:
      return Uint8Array.from({ length: Math.floor(rnd() * 20) }, () => Math.floor(rnd() * 256));
    case ScalarType.BOOL:
      return rnd() < 0.5;
    case ScalarType.DOUBLE:
    case ScalarType.FLOAT:
      return pick([0, -1, 1e308, Number.NaN, Infinity, rnd()]);
    case ScalarType.INT64:
    case ScalarType.SINT64:
    case ScalarType.SFIXED64:
      return pick([0n, -1n, 9223372036854775807n, -9223372036854775808n, BigInt(Math.floor(rnd() * 1e6))]);
    case ScalarType.UINT64:
    case ScalarType.FIXED64:
      return pick([0n, 1n, 18446744073709551615n, BigInt(Math.floor(rnd() * 1e6))]);
    case ScalarType.UINT32:
    case ScalarType.FIXED32:
      return pick([0, 1, 99, 100, 4294967295, Math.floor(rnd() * 1e6)]);
    default:
      return pick([0, -1, 1, 2147483647, -2147483648, 4194305, Math.floor(rnd() * 1e5)]);
  }
}

/** Random bytes, or a valid encoding with a random cut or flipped byte. */
export function randomBytes<T extends DescMessage>(schema: T, rnd: () => number): Buffer {
  const r = rnd();
  if (r < 0.4) return Buffer.from(Array.from({ length: Math.floor(rnd() * 64) }, () => Math.floor(rnd() * 256)));
  const valid = Buffer.from(toBinary(schema, randomMessage(schema, rnd)));
  if (valid.length === 0) return Buffer.from([Math.floor(rnd() * 256)]);
  if (r < 0.7) return valid.subarray(0, Math.floor(rnd() * valid.length));
  const at = Math.floor(rnd() * valid.length);
  valid[at] = valid[at]! ^ (1 << Math.floor(rnd() * 8));
  return valid;
}
