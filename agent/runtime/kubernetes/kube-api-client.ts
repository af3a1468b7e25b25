import { linkedSignal } from "../../../lib/linked-signal.js";
import http from "node:http";
import https from "node:https";
import type { KubeConfig } from "@kubernetes/client-node";
import { toStatus } from "./kube-objects.js";
import { errorMessage } from "../../../lib/error-message.js";

/** The API server answered with an error status; `reason`/`message` come from its Status body. */
export class KubeApiError extends Error {
  constructor(
    readonly httpStatus: number,
    readonly reason: string,
    readonly statusMessage: string,
    readonly path: string,
  ) {
    super(`${httpStatus} ${reason || http.STATUS_CODES[httpStatus] || "error"}: ${statusMessage || "(no message)"} (GET ${path})`);
    this.name = "KubeApiError";
  }
}

/** The API server could not be reached or the exchange broke off (no HTTP status to speak of). */
export class KubeTransportError extends Error {
  constructor(
    message: string,
    readonly code?: string,
  ) {
    super(message);
    this.name = "KubeTransportError";
  }
}

export type Query = Record<string, string | number | boolean | undefined>;

export interface KubeRequest {
  path: string;
  query?: Query;
  signal?: AbortSignal;
  /** Until the response headers (open) or the whole body (getJson/getText). */
  timeoutMs?: number;
}

// Error bodies are small Status objects; a proxy's HTML error page is cut here.
const MAX_ERROR_BODY = 64 * 1024;
// A pod list of a big cluster is tens of MB; beyond this something is wrong.
const MAX_JSON_BODY = 256 * 1024 * 1024;

/**
 * GET requests to the API server with the client library's KubeConfig doing what it does well:
 * kubeconfig/in-cluster loading, TLS (CA, client certs, skip-verify, SNI), proxies and every
 * auth plugin (token files, exec, OIDC), applied per request so rotated tokens are picked up.
 *
 * The requests themselves are ours because the library's request paths lose what this runtime
 * needs (1.4.0): its generated clients throw a 401 without the Status body, `Log` keeps a Status
 * body only for HTTP 500, `Watch` drops malformed lines silently and reports a failed watch as
 * a bare status code, and none of them takes an AbortSignal with a timeout. Here every non-2xx
 * becomes a KubeApiError carrying the Status reason and message, every network failure a
 * KubeTransportError, and every request can be cancelled.
 */
export class KubeApiClient {
  private loaded: KubeConfig | undefined;

  /**
   * `config`: a loaded KubeConfig, or a loader tried again at each request until it succeeds
   * (a kubeconfig or service-account token that appears after the agent started is picked up).
   */
  constructor(
    private readonly config: KubeConfig | (() => KubeConfig),
    private readonly defaultTimeoutMs = 15_000,
  ) {}

  /** The API server URL of the current context ("" while there is none). */
  get server(): string {
    try {
      return this.kubeConfig().getCurrentCluster()?.server ?? "";
    } catch {
      return "";
    }
  }

  private kubeConfig(): KubeConfig {
    if (this.loaded) return this.loaded;
    if (typeof this.config !== "function") return (this.loaded = this.config);
    try {
      this.loaded = this.config();
    } catch (e) {
      throw new KubeTransportError(`kubeconfig: ${errorMessage(e)}`);
    }
    return this.loaded;
  }

  async getJson(req: KubeRequest): Promise<unknown> {
    const text = await this.getText(req, MAX_JSON_BODY);
    try {
      return JSON.parse(text) as unknown;
    } catch (e) {
      throw new KubeTransportError(`malformed JSON from GET ${req.path}: ${errorMessage(e)}`);
    }
  }

  async getText(req: KubeRequest, maxBytes = MAX_JSON_BODY): Promise<string> {
    const timeoutMs = req.timeoutMs ?? this.defaultTimeoutMs;
    const link = linkedSignal([req.signal], timeoutMs);
    const signal = link.signal;
    try {
      const res = await this.open({ ...req, signal, timeoutMs });
      try {
        return await readBody(res, maxBytes, req.path);
      } catch (e) {
        throw signal.aborted ? abortReason(signal, req.path, timeoutMs) : e;
      }
    } finally {
      link.dispose();
    }
  }

  /**
   * Opens a streaming GET (watch, followed logs): resolves with the 2xx response once its
   * headers are in; the caller reads the body and destroys it when done. Aborting `signal`
   * destroys the request at any point.
   */
  async open(req: KubeRequest): Promise<http.IncomingMessage> {
    const config = this.kubeConfig();
    const cluster = config.getCurrentCluster();
    if (!cluster) throw new KubeTransportError("the kubeconfig has no current cluster");
    const url = new URL(cluster.server.replace(/\/+$/, "") + req.path);
    for (const [k, v] of Object.entries(req.query ?? {})) if (v !== undefined) url.searchParams.set(k, String(v));
    const options: https.RequestOptions = { method: "GET", headers: { Accept: "application/json", "User-Agent": "fleetlet-agent" } };
    try {
      await config.applyToHTTPSOptions(options);
    } catch (e) {
      // Exec plugins that fail, unreadable cert files, http:// without skip-verify.
      throw new KubeTransportError(`kubeconfig: ${errorMessage(e)}`);
    }
    const timeoutMs = req.timeoutMs ?? this.defaultTimeoutMs;
    const mod = url.protocol === "https:" ? https : http;
    const pathForErrors = url.pathname;
    return new Promise<http.IncomingMessage>((resolve, reject) => {
      let settled = false;
      const fail = (err: Error) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        req.signal?.removeEventListener("abort", onAbort);
        request.destroy();
        reject(err);
      };
      const onAbort = () => fail(req.signal ? abortReason(req.signal, pathForErrors, timeoutMs) : new KubeTransportError("aborted"));
      const timer = setTimeout(() => fail(new KubeTransportError(`no answer from the API server within ${timeoutMs} ms (GET ${pathForErrors})`, "ETIMEDOUT")), timeoutMs);
      const request = mod.request(url, options, (res) => {
        clearTimeout(timer);
        const status = res.statusCode ?? 0;
        if (status >= 200 && status < 300) {
          settled = true;
          // From here the caller owns the response; an abort still tears it down.
          if (req.signal) {
            req.signal.removeEventListener("abort", onAbort);
            const destroy = () => res.destroy(abortReason(req.signal!, pathForErrors, timeoutMs));
            if (req.signal.aborted) destroy();
            else req.signal.addEventListener("abort", destroy, { once: true });
            res.once("close", () => req.signal?.removeEventListener("abort", destroy));
          }
          resolve(res);
          return;
        }
        readBody(res, MAX_ERROR_BODY, pathForErrors, true).then(
          (body) => fail(errorFromBody(status, body, pathForErrors)),
          () => fail(new KubeApiError(status, "", "", pathForErrors)),
        );
      });
      request.on("error", (e: NodeJS.ErrnoException) => {
        fail(e instanceof KubeTransportError ? e : new KubeTransportError(`cannot reach the API server at ${cluster.server}: ${e.message}`, e.code));
      });
      if (req.signal?.aborted) onAbort();
      else req.signal?.addEventListener("abort", onAbort, { once: true });
      request.end();
    });
  }
}

function abortReason(signal: AbortSignal, path: string, timeoutMs: number): Error {
  const reason: unknown = signal.reason;
  if (reason instanceof DOMException && reason.name === "TimeoutError") {
    return new KubeTransportError(`no answer from the API server within ${timeoutMs} ms (GET ${path})`, "ETIMEDOUT");
  }
  if (reason instanceof Error) return reason;
  const e = new Error("aborted");
  e.name = "AbortError";
  return e;
}

function errorFromBody(status: number, body: string, path: string): KubeApiError {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch {
    parsed = undefined;
  }
  const s = toStatus(parsed);
  if (s) return new KubeApiError(status, s.reason, s.message, path);
  // Not a Status (a proxy, or "404 page not found" from a path the server does not route).
  return new KubeApiError(status, "", body.trim().slice(0, 200), path);
}

async function readBody(res: http.IncomingMessage, maxBytes: number, path: string, truncate = false): Promise<string> {
  const chunks: Buffer[] = [];
  let n = 0;
  try {
    for await (const chunk of res as AsyncIterable<Buffer>) {
      n += chunk.length;
      if (n > maxBytes) {
        if (truncate) {
          chunks.push(chunk.subarray(0, chunk.length - (n - maxBytes)));
          res.destroy();
          break;
        }
        res.destroy();
        throw new KubeTransportError(`response to GET ${path} is larger than ${maxBytes} bytes`);
      }
      chunks.push(chunk);
    }
  } catch (e) {
    if (e instanceof KubeTransportError || (e as Error).name === "AbortError") throw e;
    throw new KubeTransportError(`connection to the API server lost while reading GET ${path}: ${errorMessage(e)}`, (e as NodeJS.ErrnoException).code);
  }
  return Buffer.concat(chunks).toString("utf8");
}
