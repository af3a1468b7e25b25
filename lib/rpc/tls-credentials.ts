import * as grpc from "@grpc/grpc-js";
import { readFileSync } from "node:fs";
import { X509Certificate } from "node:crypto";
import { createSecureContext } from "node:tls";
import { errorMessage } from "../error-message.js";

type CertificateProvider = grpc.experimental.CertificateProvider;
type IdentityUpdate = grpc.experimental.IdentityCertificateUpdate;
type CaUpdate = grpc.experimental.CaCertificateUpdate;
type IdentityListener = grpc.experimental.IdentityCertificateUpdateListener;
type CaListener = grpc.experimental.CaCertificateUpdateListener;

/** PEM files of one side of a TLS connection; any of them may be replaced on disk at any time. */
export interface TlsFiles {
  /** Our certificate chain (server: required; client: with keyFile for mTLS). */
  certFile?: string;
  keyFile?: string;
  /** Server: client certificates must chain to it (mTLS). Client: the server's must. */
  caFile?: string;
}

/** How often the files are re-read: rotation takes effect within this (security.md). */
export const TLS_REFRESH_MS = 1000;

/**
 * grpc-js's file watcher re-reads the files every interval and hands over whatever it read: a
 * certificate replaced before its key (or a file caught half-written) would make the server
 * drop every connection until the next read. This wrapper passes on only a pair that loads
 * together and a CA that parses, and otherwise keeps the last good one, so a rotation never
 * fails a call. The first read is synchronous, so a bad file stops the daemon at start with
 * one line naming it.
 */
export class CheckedCertificateFiles implements CertificateProvider {
  private identity: IdentityUpdate | null = null;
  private ca: CaUpdate | null = null;
  private readonly identityListeners = new Set<IdentityListener>();
  private readonly caListeners = new Set<CaListener>();
  private readonly watcher: grpc.experimental.FileWatcherCertificateProvider;
  private watching = false;

  constructor(
    private readonly files: TlsFiles,
    private readonly onRejected: (problem: string) => void = () => undefined,
    refreshIntervalMs = TLS_REFRESH_MS,
  ) {
    if ((files.certFile === undefined) !== (files.keyFile === undefined)) {
      throw new Error("a TLS certificate and its key go together (give both --tls-cert and --tls-key, or neither)");
    }
    if (files.certFile !== undefined) {
      const update = { certificate: readPem(files.certFile), privateKey: readPem(files.keyFile!) };
      const problem = identityProblem(update);
      if (problem) throw new Error(`${files.certFile} with ${files.keyFile}: ${problem}`);
      this.identity = update;
    }
    if (files.caFile !== undefined) {
      const update = { caCertificate: readPem(files.caFile) };
      const problem = caProblem(update);
      if (problem) throw new Error(`${files.caFile}: ${problem}`);
      this.ca = update;
    }
    this.watcher = new grpc.experimental.FileWatcherCertificateProvider({
      certificateFile: files.certFile,
      privateKeyFile: files.keyFile,
      caCertificateFile: files.caFile,
      refreshIntervalMs,
    });
  }

  get hasIdentity(): boolean {
    return this.identity !== null;
  }

  /** The last good certificate and key (null without certFile). */
  get currentIdentity(): IdentityUpdate | null {
    return this.identity;
  }

  /** The last good CA (null without caFile). */
  get currentCa(): CaUpdate | null {
    return this.ca;
  }

  get hasCa(): boolean {
    return this.ca !== null;
  }

  private readonly onIdentity: IdentityListener = (update) => {
    if (this.files.certFile === undefined) return;
    // Unchanged files (every second, nearly always) first: checking them costs a SecureContext
    // and an X.509 parse, ~2.6 ms of CPU a second per daemon (bench/tls, idle farm agents).
    if (update && this.identity && update.certificate.equals(this.identity.certificate) && update.privateKey.equals(this.identity.privateKey)) return;
    const problem = update === null ? "unreadable" : identityProblem(update);
    if (problem || update === null) {
      this.onRejected(`${this.files.certFile} with ${this.files.keyFile}: ${problem}; keeping the previous certificate`);
      return;
    }
    this.identity = update;
    for (const listener of this.identityListeners) listener(update);
  };

  private readonly onCa: CaListener = (update) => {
    if (this.files.caFile === undefined) return;
    if (update && this.ca && update.caCertificate.equals(this.ca.caCertificate)) return;
    const problem = update === null ? "unreadable" : caProblem(update);
    if (problem || update === null) {
      this.onRejected(`${this.files.caFile}: ${problem}; keeping the previous CA`);
      return;
    }
    this.ca = update;
    for (const listener of this.caListeners) listener(update);
  };

  /**
   * The current files go to a new listener once the caller is done subscribing: grpc-js's server
   * registers its own watcher only after subscribing to us, and would miss a synchronous answer
   * (and then drop every connection, as the files do not change again).
   */
  private replay(deliver: () => unknown): void {
    queueMicrotask(() => void deliver());
  }

  private watch(): void {
    const wanted = this.identityListeners.size + this.caListeners.size > 0;
    if (wanted && !this.watching) {
      this.watcher.addIdentityCertificateListener(this.onIdentity);
      this.watcher.addCaCertificateListener(this.onCa);
    } else if (!wanted && this.watching) {
      this.watcher.removeIdentityCertificateListener(this.onIdentity);
      this.watcher.removeCaCertificateListener(this.onCa);
    }
    this.watching = wanted;
  }

  addIdentityCertificateListener(listener: IdentityListener): void {
    this.identityListeners.add(listener);
    this.watch();
    this.replay(() => this.identityListeners.has(listener) && this.identity && listener(this.identity));
  }

  removeIdentityCertificateListener(listener: IdentityListener): void {
    this.identityListeners.delete(listener);
    this.watch();
  }

  addCaCertificateListener(listener: CaListener): void {
    this.caListeners.add(listener);
    this.watch();
    this.replay(() => this.caListeners.has(listener) && this.ca && listener(this.ca));
  }

  removeCaCertificateListener(listener: CaListener): void {
    this.caListeners.delete(listener);
    this.watch();
  }
}

function readPem(file: string): Buffer {
  try {
    return readFileSync(file);
  } catch (e) {
    throw new Error(`${file}: ${errorMessage(e)}`);
  }
}

function identityProblem(update: IdentityUpdate): string | undefined {
  try {
    createSecureContext({ cert: update.certificate, key: update.privateKey });
    new X509Certificate(update.certificate);
    return undefined;
  } catch (e) {
    return errorMessage(e);
  }
}

function caProblem(update: CaUpdate): string | undefined {
  try {
    new X509Certificate(update.caCertificate);
    createSecureContext({ ca: update.caCertificate });
    return undefined;
  } catch (e) {
    return errorMessage(e);
  }
}

/**
 * A listener's credentials: TLS from the files (reloaded on change); with a CA, every client
 * must present a certificate chaining to it (mTLS).
 */
export function serverTlsCredentials(files: TlsFiles, onRejected?: (problem: string) => void): grpc.ServerCredentials {
  if (files.certFile === undefined) throw new Error("--tls-ca needs --tls-cert and --tls-key (the server's own certificate)");
  const identity = new CheckedCertificateFiles({ certFile: files.certFile, keyFile: files.keyFile }, onRejected);
  const ca = files.caFile === undefined ? null : new CheckedCertificateFiles({ caFile: files.caFile }, onRejected);
  // grpc-js 1.14.7 (pinned) passes this function's (ca, identity) on to a constructor that takes
  // (identity, ca), so the providers go in swapped to arrive where they belong; the e2e test
  // (test/e2e/tls-mtls.test.ts) fails if a grpc-js upgrade fixes that. A null CA provider means
  // no client certificate is asked for; the typing does not say grpc-js takes one.
  const credentials = grpc.experimental.createCertificateProviderServerCredentials(identity, ca as CertificateProvider, ca !== null);
  // grpc-js hands these to http2.createSecureServer, whose TLS handshake timeout is Node's 120 s
  // default: a connection that never finishes its ClientHello held a file descriptor for two
  // minutes, so a few thousand of them (no identity needed) kept every new client out
  // (test/e2e/tls-clients-fuzz.test.ts). A real handshake takes milliseconds.
  const constructorOptions = credentials._getConstructorOptions.bind(credentials);
  credentials._getConstructorOptions = () => {
    const options = constructorOptions();
    return options && { ...options, handshakeTimeout: TLS_HANDSHAKE_TIMEOUT_MS };
  };
  return credentials;
}

/** How long a client may take to complete the TLS handshake before its connection is dropped. */
export const TLS_HANDSHAKE_TIMEOUT_MS = 10_000;

/**
 * A client's credentials: the server's certificate is verified against the CA file and the host
 * name or IP dialled (SAN), and our certificate, when given, is presented (mTLS). The files are
 * re-read on change, so long-lived channels pick up a rotated certificate on their next connection.
 */
export function channelTlsCredentials(files: TlsFiles, onRejected?: (problem: string) => void, caFlag = "--tls-ca"): grpc.ChannelCredentials {
  if (files.caFile === undefined) throw new Error(`a TLS client needs the CA its servers' certificates chain to (${caFlag})`);
  const ca = new CheckedCertificateFiles({ caFile: files.caFile }, onRejected);
  const identity = files.certFile === undefined && files.keyFile === undefined ? null : new CheckedCertificateFiles({ certFile: files.certFile, keyFile: files.keyFile }, onRejected);
  return grpc.experimental.createCertificateProviderChannelCredentials(ca, identity);
}
