import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type * as grpc from "@grpc/grpc-js";
import { Code, ConnectError } from "@connectrpc/connect";
import { HostOrigin } from "../../gen/fleetlet/aggregator/v1/fleet_pb.js";
import { removeStaleTempFiles, writeFileAtomicSync } from "../../lib/atomic-file.js";
import { HostConnection, type HostConfig, type ReconnectBackoff } from "./host-connection.js";
import { errorMessage } from "../../lib/error-message.js";
import { DEFAULT_MAX_HOSTS } from "../../lib/resource-limits.js";

const FILE = "hosts.json";

/**
 * The hosts the aggregator fans out to, each with its connection. Hosts come from --hosts,
 * --hosts-file and AddHost; only AddHost's are persisted (in `<state-dir>/hosts.json`), since
 * the others are configuration that is read again at every start.
 */
export class HostRegistry {
  private readonly hosts = new Map<string, HostConnection>();

  constructor(
    private readonly stateDir: string,
    private readonly backoff: ReconnectBackoff,
    /** AddHost past this many hosts gets RESOURCE_EXHAUSTED (each host is a connection and two follower streams). */
    private readonly maxHosts: number = DEFAULT_MAX_HOSTS,
    /** How every host (and AddHost's probe) is dialled: TLS with --agent-tls-*; none: plaintext. */
    readonly credentials?: grpc.ChannelCredentials,
    /** --agent-token: the bearer token every host connection (and AddHost's probe) presents. */
    readonly agentToken?: string,
  ) {}

  /** Loads configured hosts, then the persisted API hosts (configuration wins on a clash). */
  load(configured: HostConfig[]): void {
    for (const h of configured) this.put(h);
    const path = join(this.stateDir, FILE);
    // Temp files of a save cut short by a crash (random names: never reused, so never overwritten).
    removeStaleTempFiles(path);
    if (!existsSync(path)) return;
    let saved: { name: string; address: string; perHostTimeoutMs?: number }[];
    try {
      saved = (JSON.parse(readFileSync(path, "utf8")) as { hosts: typeof saved }).hosts;
    } catch (e) {
      throw new Error(`${path}: not valid JSON (${errorMessage(e)}); refusing to start over it`);
    }
    if (!Array.isArray(saved) || saved.some((h) => typeof h?.name !== "string" || typeof h?.address !== "string")) {
      throw new Error(`${path}: expected {"hosts": [{"name", "address"}, ...]}; refusing to start over it`);
    }
    for (const h of saved) {
      if (!this.hosts.has(h.name)) {
        this.put({ name: h.name, address: h.address, origin: HostOrigin.API, perHostTimeoutMs: h.perHostTimeoutMs });
      }
    }
  }

  get(name: string): HostConnection | undefined {
    return this.hosts.get(name);
  }

  /** Sorted by name. */
  list(): HostConnection[] {
    return [...this.hosts.values()].sort((a, b) => (a.config.name < b.config.name ? -1 : a.config.name > b.config.name ? 1 : 0));
  }

  /**
   * AddHost: idempotent for the same name and address (the timeout is updated);
   * ALREADY_EXISTS when the name is taken by another address.
   */
  add(config: HostConfig): HostConnection {
    const existing = this.hosts.get(config.name);
    if (existing && existing.config.address !== config.address) {
      throw new ConnectError(
        `host ${JSON.stringify(config.name)} already exists with address ${existing.config.address}`,
        Code.AlreadyExists,
      );
    }
    if (existing) {
      const before = existing.config.perHostTimeoutMs;
      existing.config.perHostTimeoutMs = config.perHostTimeoutMs;
      this.saveOrUndo(() => (existing.config.perHostTimeoutMs = before));
      return existing;
    }
    if (this.hosts.size >= this.maxHosts) {
      throw new ConnectError(`this aggregator holds its maximum of ${this.maxHosts} hosts (--max-hosts)`, Code.ResourceExhausted);
    }
    const conn = this.put(config);
    this.saveOrUndo(() => {
      conn.close();
      this.hosts.delete(config.name);
    });
    return conn;
  }

  remove(name: string): void {
    const conn = this.hosts.get(name);
    if (!conn) throw new ConnectError(`host ${JSON.stringify(name)} not found`, Code.NotFound);
    // Configuration is the operator's: a removed configured host would come back at the next
    // start, and an API caller could re-add the name pointing at another agent meanwhile.
    if (conn.config.origin === HostOrigin.FLAG || conn.config.origin === HostOrigin.FILE) {
      const flag = conn.config.origin === HostOrigin.FLAG ? "--hosts" : "--hosts-file";
      throw new ConnectError(`host ${JSON.stringify(name)} is configured by ${flag}; remove it there and restart the aggregator`, Code.FailedPrecondition);
    }
    this.hosts.delete(name);
    this.saveOrUndo(() => this.hosts.set(name, conn));
    conn.close();
  }

  /** Persists, or undoes the change in memory and fails: nothing unsaved is acknowledged. */
  private saveOrUndo(undo: () => void): void {
    try {
      this.save();
    } catch (e) {
      undo();
      throw e;
    }
  }

  close(): void {
    for (const conn of this.hosts.values()) conn.close();
    this.hosts.clear();
  }

  private put(config: HostConfig): HostConnection {
    this.hosts.get(config.name)?.close();
    const conn = new HostConnection({ ...config }, this.backoff, this.credentials, this.agentToken);
    this.hosts.set(config.name, conn);
    return conn;
  }

  private save(): void {
    const hosts = this.list()
      .filter((h) => h.config.origin === HostOrigin.API)
      .map((h) => ({ name: h.config.name, address: h.config.address, perHostTimeoutMs: h.config.perHostTimeoutMs }));
    try {
      writeFileAtomicSync(join(this.stateDir, FILE), `${JSON.stringify({ hosts }, null, 1)}\n`);
    } catch (e) {
      throw new ConnectError(`could not persist the hosts: ${errorMessage(e)}`, Code.Unavailable);
    }
  }
}
