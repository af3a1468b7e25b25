import type { DescMethod } from "@bufbuild/protobuf";
import { Code, ConnectError, type HandlerContext } from "@connectrpc/connect";
import type { Logger } from "../logger.js";
import type { CallTransportSecurity } from "../tls-peer-identity.js";
import { CALL_COMPLETED, CALL_REQUEST, type CallInterceptor } from "../service-adapter.js";
import { codeName } from "../status-codes.js";
import { CALLER_IDENTITY, type Identity, LOCAL_ADMIN, limitKey, ON_BEHALF_OF_HEADER } from "./identity.js";
import type { MutatingRateLimit } from "./mutating-rate-limit.js";
import { isMutatingRole, isRole, requiredRole, roleIncludes } from "./role-table.js";
import type { TokensFile } from "./tokens-file.js";

/**
 * Finds the identity of a call from its headers (or, later, its TLS peer). Returns undefined
 * when the call carries no credential this resolver knows; throws UNAUTHENTICATED for one it
 * knows but rejects.
 */
export type IdentityResolver = (context: HandlerContext, peer: string, transport: CallTransportSecurity) => Identity | undefined;

export interface AuthorizerOptions {
  /**
   * How callers are identified, tried in order. None: every caller is "local" with role admin —
   * the no-setup development default, only safe because the daemons then listen on loopback.
   */
  resolvers: IdentityResolver[];
  /** Where audit lines go (pino, `"audit":true`). */
  logger: Logger;
  /** Mutating calls per second per authenticated identity (--max-mutating-calls-per-second); none: unlimited. */
  mutatingRateLimit?: MutatingRateLimit;
}

/** Bearer tokens (`authorization: Bearer <token>`) checked against the tokens file. */
export function bearerTokenResolver(tokens: TokensFile): IdentityResolver {
  return (context) => {
    const header = context.requestHeader.get("authorization");
    if (header === null) return undefined;
    const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
    if (!m) throw new ConnectError("authorization header is not 'Bearer <token>'", Code.Unauthenticated);
    const identity = tokens.identify(m[1]!);
    if (!identity) throw new ConnectError("bearer token not recognised", Code.Unauthenticated);
    return identity;
  };
}

/**
 * A verified client certificate (mTLS): its CN (else first SAN) is the name, its OU the role
 * (`fleetlet certs client --role`). A certificate without a role OU is refused.
 */
export function clientCertificateResolver(): IdentityResolver {
  return (_context, _peer, transport) => {
    const cert = transport.peerCertificate;
    if (!cert) return undefined;
    const name = cert.commonName || cert.subjectAltNames[0] || `serial:${cert.serialNumber}`;
    // OU=aggregator (`fleetlet certs client --role aggregator`): the aggregator's own identity,
    // the only one that may acknowledge metering entries on agents.
    const role = cert.organizationalUnits.find(isRole);
    if (!role) throw new ConnectError(`client certificate ${name} carries no role (OU=viewer|operator|admin|aggregator)`, Code.Unauthenticated);
    return { name, via: "certificate", role };
  };
}

// Request fields naming what a call acts on, logged with mutating calls (camelCase as decoded).
const TARGET_FIELDS: ReadonlyArray<[string, string]> = [
  ["instanceId", "instance_id"],
  ["snapshotId", "snapshot_id"],
  ["containerId", "container_id"],
  ["externalId", "external_id"],
  ["host", "host"],
  ["name", "host"], // AddHost / RemoveHost / ResyncHost name the host as `name`
  ["address", "address"],
  ["ledgerId", "ledger_id"],
];

/** The target ids of a decoded request, for the audit line; nothing for a streamed request. */
export function auditTargets(request: unknown): Record<string, string> {
  const targets: Record<string, string> = {};
  if (typeof request !== "object" || request === null) return targets;
  const fields = request as Record<string, unknown>;
  // RegisterInstance / RegisterSnapshot carry the target as a nested message's id.
  for (const [nested, key] of [["instance", "instance_id"], ["snapshot", "snapshot_id"]] as const) {
    const id = (fields[nested] as { id?: unknown } | undefined)?.id;
    if (typeof id === "string" && id !== "") targets[key] = id;
  }
  for (const [field, key] of TARGET_FIELDS) {
    const value = fields[field];
    if (typeof value === "string" && value !== "" && targets[key] === undefined) targets[key] = value;
  }
  return targets;
}

/**
 * The authorisation interceptor (security.md "Authorisation", "Audit"): default deny. A call
 * with no identity gets UNAUTHENTICATED; an identity without the method's role (or a method the
 * role table does not know) gets PERMISSION_DENIED naming the role. Refused calls and every call
 * of an operator/admin method write one audit line.
 */
export function createAuthorizer(options: AuthorizerOptions): CallInterceptor {
  const { logger, resolvers, mutatingRateLimit } = options;
  const audit = (fields: Record<string, unknown>) => logger.info({ audit: true, ...fields }, "audit");
  return (method: DescMethod, context: HandlerContext, peer: string, transport: CallTransportSecurity) => {
    const path = `/${method.parent.typeName}/${method.name}`;
    const onBehalfOf = context.requestHeader.get(ON_BEHALF_OF_HEADER) ?? undefined;
    const refuse = (error: ConnectError, identity?: Identity): never => {
      audit({
        identity: identity?.name,
        via: identity?.via,
        ...(onBehalfOf ? { on_behalf_of: onBehalfOf } : {}),
        method: path,
        peer,
        code: codeName(error.code),
        error: error.rawMessage,
      });
      throw error;
    };

    let identity: Identity | undefined;
    if (resolvers.length === 0) identity = LOCAL_ADMIN;
    else {
      try {
        for (const resolve of resolvers) {
          identity = resolve(context, peer, transport);
          if (identity) break;
        }
      } catch (e) {
        refuse(ConnectError.from(e));
      }
      if (!identity) refuse(new ConnectError(`${path} needs credentials (authorization: Bearer <token>)`, Code.Unauthenticated));
    }
    const caller = identity as Identity;
    const needed = requiredRole(path);
    if (needed === undefined) {
      refuse(new ConnectError(`${path} is not in the role table; refused by default`, Code.PermissionDenied), caller);
    } else if (caller.via !== "local" && !roleIncludes(caller.role, needed)) {
      // "local" (no credentials configured, loopback only) may call every method in the table,
      // the aggregator's acknowledgements included: `fleetlet up` needs no set-up.
      refuse(new ConnectError(`${path} needs role ${needed}; ${caller.name} has role ${caller.role}`, Code.PermissionDenied), caller);
    }
    // "local" is every caller of a daemon with no credentials configured (loopback development):
    // one identity for all, so it is not rate limited (per address it would be one user anyway).
    if (mutatingRateLimit && needed !== undefined && isMutatingRole(needed) && caller.via !== "local" && !mutatingRateLimit.take(limitKey(caller, peer))) {
      refuse(
        new ConnectError(`${caller.name} made more than ${mutatingRateLimit.perSecond} state-changing calls per second (--max-mutating-calls-per-second); retry later`, Code.ResourceExhausted),
        caller,
      );
    }
    context.values.set(CALLER_IDENTITY, caller);
    if (needed !== undefined && isMutatingRole(needed)) {
      // The outcome is known when the call completes: the adapter aborts the call's signal then,
      // with CALL_COMPLETED on success or the call's error.
      context.signal.addEventListener(
        "abort",
        () => {
          const reason = context.signal.reason;
          const error = reason === CALL_COMPLETED ? undefined : ConnectError.from(reason);
          audit({
            identity: caller.name,
            via: caller.via,
            ...(onBehalfOf ? { on_behalf_of: onBehalfOf } : {}),
            method: path,
            peer,
            ...auditTargets(context.values.get(CALL_REQUEST)),
            code: codeName(error?.code ?? 0),
            ...(error ? { error: error.rawMessage } : {}),
          });
        },
        { once: true },
      );
    }
  };
}

/**
 * The resolvers a daemon uses: bearer tokens when --tokens-file is set, verified client
 * certificates when the listener asks for them (--tls-ca). Neither: [] — every caller is "local"
 * admin, the loopback development default. A token comes first: with mTLS every connection has a
 * certificate (often one per machine or tool), while a token names the person or job making this
 * call; a bad token is refused, never silently replaced by the certificate's role.
 */
export function daemonIdentityResolvers(options: { tokens?: TokensFile; clientCertificates: boolean }): IdentityResolver[] {
  return [
    ...(options.tokens ? [bearerTokenResolver(options.tokens)] : []),
    ...(options.clientCertificates ? [clientCertificateResolver()] : []),
  ];
}
