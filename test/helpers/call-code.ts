import { type Code, ConnectError } from "@connectrpc/connect";

/** The status code a call ends with: "OK", or the ConnectError code it was refused with. */
export async function codeOf(call: Promise<unknown> | (() => Promise<unknown>)): Promise<Code | "OK"> {
  try {
    await (typeof call === "function" ? call() : call);
    return "OK";
  } catch (e) {
    return ConnectError.from(e).code;
  }
}
