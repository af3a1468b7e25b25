import type { DockerOptions } from "dockerode";
import { invalidArgument } from "../../../lib/rpc/field-error.js";
import type { DockerVersion } from "./docker-api-types.js";

/**
 * Where the engine is and which Engine API version to speak to it.
 *
 * Hosts: "unix:///path" (the usual case) or "tcp://host:port" / "http://host:port" (plain
 * HTTP; TLS is not configured here). Default: DOCKER_HOST, else unix:///var/run/docker.sock.
 *
 * Version: dockerode sends unversioned paths unless told a version, which means "the engine's
 * newest" — whatever that is. We ask the engine (/version) on every connect and pin the lower
 * of its ApiVersion and the newest this client was written against, as the docker CLI does.
 */

export const DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock";
/** dockerode 4.0.12 documents its endpoints against Engine API v1.48. */
export const MAX_API_VERSION = "1.48";
/** Healthcheck fields and the events/stats shapes we read are all in 1.24 (Docker 1.12). */
export const MIN_API_VERSION = "1.24";

export interface DockerEndpoint {
  /** As given (normalised), for RuntimeInfo.endpoint and messages. */
  url: string;
  /** Dockerode/docker-modem options without a version. */
  options: DockerOptions;
}

export function parseDockerHost(host: string | undefined): DockerEndpoint {
  const url = (host || process.env.DOCKER_HOST || DEFAULT_DOCKER_HOST).trim();
  if (url.startsWith("unix://")) {
    const socketPath = url.slice("unix://".length);
    if (!socketPath.startsWith("/")) throw invalidArgument("docker_host", `${JSON.stringify(url)}: expected unix:///absolute/path`);
    // host/port/timeout undefined on purpose: docker-modem merges DOCKER_HOST's defaults under
    // ours, a host from the environment would win over our socketPath, and DOCKER_CLIENT_TIMEOUT
    // (a socket idle timeout) would cut the event stream of a quiet engine.
    return { url, options: { socketPath, host: undefined, port: undefined, protocol: "http", timeout: undefined } };
  }
  const m = /^(?:tcp|http):\/\/([^/:]+|\[[^\]]+\]):(\d+)\/?$/.exec(url);
  if (m) return { url, options: { host: m[1]!, port: Number(m[2]), protocol: "http", socketPath: undefined, timeout: undefined } };
  throw invalidArgument("docker_host", `${JSON.stringify(url)}: expected unix:///path or tcp://host:port`);
}

/** Compares "1.41"-style versions numerically (1.9 < 1.10). */
export function compareApiVersions(a: string, b: string): number {
  const pa = a.split(".").map(Number);
  const pb = b.split(".").map(Number);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d < 0 ? -1 : 1;
  }
  return 0;
}

/** The API version to pin for this engine; throws when the engine is too old or says nothing. */
export function negotiateApiVersion(engine: DockerVersion): string {
  const offered = engine.ApiVersion;
  if (!offered || !/^\d+\.\d+$/.test(offered)) throw new Error(`engine did not report an API version (${JSON.stringify(offered ?? null)})`);
  if (compareApiVersions(offered, MIN_API_VERSION) < 0) throw new Error(`engine API ${offered} is older than ${MIN_API_VERSION}, the oldest this agent speaks`);
  return compareApiVersions(offered, MAX_API_VERSION) > 0 ? MAX_API_VERSION : offered;
}
