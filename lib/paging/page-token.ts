import { invalidArgument } from "../rpc/field-error.js";

/**
 * What a next_page_token says: which list (scope), the state its first page was taken from
 * (version), the key of the last item given, and the request's filters (a fingerprint), so a
 * later page continues the same list or is refused. Opaque to clients (base64url of JSON):
 * it selects a kept state and a position in it, nothing a crafted token could abuse.
 */
export interface PageToken {
  scope: string;
  version: string;
  after: string;
  filter: string;
}

/** Longer than any token we make (ids and host names are at most 128 characters). */
const MAX_TOKEN_CHARS = 2048;

export function encodePageToken(t: PageToken): string {
  return Buffer.from(JSON.stringify({ s: t.scope, v: t.version, a: t.after, f: t.filter })).toString("base64url");
}

/** INVALID_ARGUMENT naming page_token for anything that is not one of our tokens for `scope`. */
export function decodePageToken(token: string, scope: string): PageToken {
  const bad = (why: string) => invalidArgument("page_token", `${why}: pass the next_page_token of the previous page unchanged, or none for the first page`);
  if (token.length > MAX_TOKEN_CHARS || !/^[A-Za-z0-9_-]+$/.test(token)) throw bad("is not a page token");
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.from(token, "base64url").toString("utf8"));
  } catch {
    throw bad("is not a page token");
  }
  const o = parsed as Record<string, unknown> | null;
  if (typeof o !== "object" || o === null || typeof o.s !== "string" || typeof o.v !== "string" || typeof o.a !== "string" || typeof o.f !== "string") {
    throw bad("is not a page token");
  }
  if (o.s !== scope) throw bad(`is a token of another list (${JSON.stringify(o.s.slice(0, 80))})`);
  return { scope: o.s, version: o.v, after: o.a, filter: o.f };
}
