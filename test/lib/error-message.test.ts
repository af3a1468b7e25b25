import { describe, it } from "vitest";
import assert from "node:assert/strict";
import { errorMessage } from "../../lib/error-message.js";

describe("errorMessage", () => {
  it("is an Error's message, subclasses included", () => {
    assert.equal(errorMessage(new Error("disk full")), "disk full");
    assert.equal(errorMessage(new RangeError("out of range")), "out of range");
    assert.equal(errorMessage(Object.assign(new Error("open /x"), { code: "ENOENT" })), "open /x");
  });
  it("is the message of an error-like object that is not an Error (another realm, a library's plain object)", () => {
    assert.equal(errorMessage({ message: "14 UNAVAILABLE: no connection", code: 14 }), "14 UNAVAILABLE: no connection");
  });
  it("names a thrown value that is not an error instead of reading undefined", () => {
    assert.equal(errorMessage("plain string"), "plain string");
    assert.equal(errorMessage(42), "42");
    assert.equal(errorMessage(undefined), "undefined");
    assert.equal(errorMessage(null), "null");
    assert.equal(errorMessage({ message: 7 }), "[object Object]", "a non-string message is not a message");
    assert.equal(errorMessage(Object.create(null)), "[object Object]", "no prototype, no toString: still a string");
  });
});
