import { errorMessage } from "../../lib/error-message.js";

/**
 * Polls `f` every 50 ms until it returns something other than undefined; a throw counts as
 * "not yet" (a daemon still starting). Past `timeoutMs`, fails naming `what` and the last error.
 */
export async function until<T>(what: string, f: () => Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await f();
      if (v !== undefined) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${errorMessage(last)}` : ""}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
