import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { parseBytes, parseCpuCores, parseQuantity, QuantityError } from "../../../../agent/runtime/kubernetes/kube-quantity.js";
import { prng } from "../../../helpers/random-message.js";

describe("Kubernetes quantity parser", () => {
  it("reads CPU as metrics.k8s.io and pod specs write it", () => {
    assert.equal(parseCpuCores("12345678n"), 0.012345678);
    assert.equal(parseCpuCores("5m"), 0.005);
    assert.equal(parseCpuCores("250m"), 0.25);
    assert.equal(parseCpuCores("1"), 1);
    assert.equal(parseCpuCores("1.5"), 1.5);
    assert.equal(parseCpuCores("1500m"), 1.5);
    assert.equal(parseCpuCores("100u"), 0.0001);
    assert.equal(parseCpuCores("0"), 0);
  });

  it("reads memory in binary and decimal SI, exponents, and rounds bytes up like Quantity.Value()", () => {
    assert.equal(parseBytes("1234Ki"), 1234n * 1024n);
    assert.equal(parseBytes("5Mi"), 5n * 1024n * 1024n);
    assert.equal(parseBytes("1Gi"), 1073741824n);
    assert.equal(parseBytes("2Ti"), 2n * 1024n ** 4n);
    assert.equal(parseBytes("1Ei"), 1024n ** 6n);
    assert.equal(parseBytes("128974848"), 128974848n);
    assert.equal(parseBytes("129e6"), 129000000n);
    assert.equal(parseBytes("129E6"), 129000000n, "upper-case exponent");
    assert.equal(parseBytes("123M"), 123000000n);
    assert.equal(parseBytes("1k"), 1000n);
    assert.equal(parseBytes("1E"), 10n ** 18n, "E alone is exa, not an exponent");
    assert.equal(parseBytes("1.5"), 2n);
    assert.equal(parseBytes("0.5Ki"), 512n);
    assert.equal(parseBytes(".5Ki"), 512n);
    assert.equal(parseBytes("1."), 1n);
    assert.equal(parseBytes("+1Ki"), 1024n);
    assert.equal(parseBytes("1500m"), 2n, "milli-bytes exist in the grammar");
  });

  it("keeps the sign and accepts negative exponents", () => {
    assert.equal(parseQuantity("-5m"), -0.005);
    assert.equal(parseQuantity("5e-3"), 0.005);
    assert.equal(parseQuantity("1e+3"), 1000);
  });

  it("rejects what is not a quantity with QuantityError naming it", () => {
    for (const bad of ["", " 1", "1 ", "Ki", "1Kb", "1KiB", "1e", "1e3.5", "1.2.3", "--1", "1..", "m", "NaN", "Infinity", "1ki", "0x10", "1_000", "1e999", "1\n", "x".repeat(65)]) {
      assert.throws(() => parseQuantity(bad), QuantityError, JSON.stringify(bad));
    }
    assert.throws(() => parseCpuCores("-1"), /negative cpu/);
    assert.throws(() => parseBytes("-1Ki"), /negative byte/);
    assert.throws(() => parseBytes("20Ei"), /beyond 64 bits/);
    assert.throws(() => parseQuantity("1toString"), QuantityError, "object keys are not suffixes");
    assert.throws(() => parseQuantity("1__proto__"), QuantityError);
  });

  it("fuzz: random text and mutated quantities parse to a finite number or throw QuantityError, nothing else", () => {
    const seed = Date.now() % 1e9;
    const rnd = prng(seed);
    const valid = ["12345678n", "5m", "1", "1234Ki", "5Mi", "129e6", "1.5Gi", ".5", "1E", "-3k", "7Ei"];
    const alphabet = "0123456789.+-eEkKmMgGtTpPnuiI xé\u0000😀";
    let parsed = 0;
    for (let i = 0; i < 50_000; i++) {
      let text: string;
      if (rnd() < 0.5) {
        text = Array.from({ length: Math.floor(rnd() * 12) }, () => alphabet[Math.floor(rnd() * alphabet.length)]).join("");
      } else {
        const chars = [...valid[Math.floor(rnd() * valid.length)]!];
        const edits = 1 + Math.floor(rnd() * 3);
        for (let k = 0; k < edits; k++) {
          const at = Math.floor(rnd() * (chars.length + 1));
          const r = rnd();
          if (r < 0.33) chars.splice(at, 1);
          else if (r < 0.66) chars.splice(at, 0, alphabet[Math.floor(rnd() * alphabet.length)]!);
          else chars[at] = alphabet[Math.floor(rnd() * alphabet.length)]!;
        }
        text = chars.join("");
      }
      try {
        const v = parseQuantity(text);
        assert.ok(Number.isFinite(v), `seed ${seed}: ${JSON.stringify(text)} gave ${v}`);
        parsed++;
      } catch (e) {
        assert.ok(e instanceof QuantityError, `seed ${seed}: ${JSON.stringify(text)} threw ${String(e)}`);
      }
      try {
        const b = parseBytes(text);
        assert.ok(b >= 0n, `seed ${seed}: ${JSON.stringify(text)}`);
      } catch (e) {
        assert.ok(e instanceof QuantityError, `seed ${seed}: ${JSON.stringify(text)} threw ${String(e)}`);
      }
    }
    assert.ok(parsed > 1000, `seed ${seed}: the fuzzer also produced valid quantities (${parsed})`);
  });
});
