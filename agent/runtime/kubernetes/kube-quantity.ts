/** A resource quantity that does not follow Kubernetes' grammar. */
export class QuantityError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "QuantityError";
  }
}

// Kubernetes' quantity grammar (k8s.io/apimachinery resource.Quantity):
//   <signedNumber><suffix>, number = digits | digits.digits | digits. | .digits,
//   suffix = binary SI (Ki..Ei), decimal SI (n u m "" k M G T P E) or e/E<signed integer>.
// "E" alone is exa, "e3"/"E3" an exponent: the suffix table is tried before the exponent form.
const NUMBER = /^([+-]?)(\d+\.?\d*|\.\d+)(.*)$/s;
const EXPONENT = /^[eE]([+-]?\d+)$/;
// Decimal suffixes as powers of ten (a negative power divides, which keeps "100u" exactly 1e-4
// where multiplying by 1e-6 would not), binary ones as multipliers.
const DECIMAL_SUFFIX: Record<string, number> = { "": 0, n: -9, u: -6, m: -3, k: 3, M: 6, G: 9, T: 12, P: 15, E: 18 };
const BINARY_SUFFIX: Record<string, number> = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, Pi: 2 ** 50, Ei: 2 ** 60 };

// Real quantities are short ("12345678n", "1536Mi"); anything longer is not one of them.
const MAX_LENGTH = 64;

/**
 * The value of a quantity as a number: "5m" → 0.005 (cores), "1Ki" → 1024 (bytes), "1e3" → 1000.
 * metrics.k8s.io and pod specs are the inputs; a double keeps ~15 significant digits, far more
 * than either carries. Throws QuantityError, never anything else.
 */
export function parseQuantity(text: string): number {
  if (typeof text !== "string") throw new QuantityError(`quantity must be a string, got ${typeof text}`);
  if (text.length === 0) throw new QuantityError("empty quantity");
  if (text.length > MAX_LENGTH) throw new QuantityError(`quantity longer than ${MAX_LENGTH} characters`);
  const m = NUMBER.exec(text);
  if (!m) throw new QuantityError(`not a quantity: ${JSON.stringify(text)}`);
  const [, sign, digits, suffix] = m as unknown as [string, string, string, string];
  const number = Number(digits);
  let value: number;
  if (Object.hasOwn(BINARY_SUFFIX, suffix)) {
    value = number * BINARY_SUFFIX[suffix]!;
  } else {
    let exponent = Object.hasOwn(DECIMAL_SUFFIX, suffix) ? DECIMAL_SUFFIX[suffix] : undefined;
    if (exponent === undefined) {
      const e = EXPONENT.exec(suffix);
      if (!e) throw new QuantityError(`unknown quantity suffix ${JSON.stringify(suffix)} in ${JSON.stringify(text)}`);
      exponent = Number(e[1]);
      // Go's parser limits exponents the same way (an int32 scale); beyond this a double is 0 or ∞.
      if (Math.abs(exponent) > 300) throw new QuantityError(`quantity exponent out of range in ${JSON.stringify(text)}`);
    }
    value = exponent < 0 ? number / 10 ** -exponent : number * 10 ** exponent;
  }
  if (!Number.isFinite(value)) throw new QuantityError(`quantity out of range: ${JSON.stringify(text)}`);
  return sign === "-" ? -value : value;
}

/** Cores ("250m" → 0.25); negative is an error (usage and limits never are). */
export function parseCpuCores(text: string): number {
  const v = parseQuantity(text);
  if (v < 0) throw new QuantityError(`negative cpu quantity ${JSON.stringify(text)}`);
  return v;
}

/**
 * Bytes as an integer ("1234Ki" → 1263616n). Rounded up like Quantity.Value(): "1.5" bytes is 2.
 * Negative is an error.
 */
export function parseBytes(text: string): bigint {
  const v = parseQuantity(text);
  if (v < 0) throw new QuantityError(`negative byte quantity ${JSON.stringify(text)}`);
  if (v >= 2 ** 64) throw new QuantityError(`byte quantity beyond 64 bits: ${JSON.stringify(text)}`);
  // Integers below 2^53 are exact; above, the double is already an integer and BigInt keeps it.
  return BigInt(Math.ceil(v));
}
