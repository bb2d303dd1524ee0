import http from 'node:http';
import type { Duplex } from 'node:stream';
import { rawResponse, requestTimeouts, TEXT_TYPE } from '../common/http.js';
import { type AuditRecord, clientOf, refusalRecord } from './audit.js';
import type { ProxyContext } from './context.js';
import type { AddressBlock } from '../../config/address-policy.js';
import { createAddressPolicy } from '../common/address-policy.js';
import { createVet, credentialFound, defaultResolve, type IsForbidden, policyOf } from './decision.js';
import { handlePlainRequest, type Health } from './plain.js';
import { createPolicy, type Policy } from './policy.js';
import { createSecretScanner, type SecretsConfig } from './secrets.js';
import { handleConnect } from './tunnel.js';
import { cachedResolver, UpstreamPool } from './upstream.js';

export type { AuditLog, AuditRecord } from './audit.js';
export { openAuditLog } from './audit.js';
export { readAllowlistFile, watchAllowlistFile } from './allowlist-file.js';
export type { Detection, SecretHash, SecretsConfig } from './secrets.js';
export { endToEndHeaders, type Health } from './plain.js';

/**
 * The egress proxy: the agent's only route out of its bottle.
 *
 * - Plain HTTP: absolute-URI requests (`GET http://host/path`) only; the Host header must name
 *   the same host:port; hop-by-hop and Proxy-* headers are dropped; bodies stream both ways.
 * - Everything else: CONNECT host:port tunnels.
 * - The decision is made on the target the proxy dials: the allowlist first (a refused name is
 *   never even resolved), then the proxy resolves the name itself, refuses it when any address
 *   is refused by the shared address policy (loopback, link-local, the Docker host, private
 *   ranges not opted in, ... see sidecars/common/address-policy.ts) and connects to the
 *   vetted address, never re-resolving (no DNS-rebinding window). A name's answer is kept 5 s
 *   (resolveCacheMs); its addresses are checked again for every request.
 * - Plain HTTP goes out on a keep-alive pool of upstream connections (upstream.ts UpstreamPool)
 *   keyed by the vetted target: name, port and the vetted addresses, never a Host header. Every
 *   request is decided against the policy in force before it reaches the pool; a reload closes
 *   idle connections to the targets it drops. The client's connection to the proxy stays
 *   keep-alive too. A tunnel always has its own upstream connection.
 * - A refusal is a 403 whose text names the host:port and the manifest key that would allow it.
 * - The canary (secrets.ts): a request in which the placeholder token or a real token is seen
 *   is refused with a 403 that never quotes it, and its audit line carries `alarm`. Checked
 *   first, before the allowlist: the request target and every header of plain requests and
 *   CONNECT requests, then a plain request's body as it streams. Body bytes go to the upstream
 *   only once checked, and the end of each chunk that could be the start of a credential is
 *   held back until the next chunk shows it is not; a detection aborts the upstream request,
 *   so the upstream never receives a byte of the credential (and nothing at all when it is in
 *   the target, the headers, or a body that arrives before the upstream connection is up).
 *   A CONNECT tunnel's payload is opaque (TLS) and is not read.
 *
 * The parts: plain.ts (the plain-HTTP exchange), tunnel.ts (CONNECT), decision.ts with policy.ts
 * (allowlist, address policy, refusal texts), audit.ts (the records), upstream.ts (dialling,
 * the pool, the resolver cache); this file builds them and the server around them.
 */

export interface EgressProxyOptions {
  /** The initial allowlist entries (see policy.ts); default none: everything is refused. */
  allowlist?: readonly string[];
  /** Resolves a name to all its addresses; default dns.lookup(all) (which reads /etc/hosts). */
  resolve?: (host: string) => Promise<string[]>;
  /** A test's stand-in for the address policy; default the shared policy (sidecars/common/address-policy.ts) with `deny` and `privateNetworks`. */
  isForbidden?: IsForbidden;
  /** Never dialled, even inside private_networks: the bottle networks' gateways and the Docker host's addresses. */
  deny?: readonly AddressBlock[];
  /** The manifest's private_networks: the non-global blocks that may be dialled. */
  privateNetworks?: readonly AddressBlock[];
  /** The bottle's name in the manifest, for the "add it to bottles.<bottle>.egress.allow" hint. */
  bottle?: string;
  /** Receives one record per decision; default none. */
  audit?: (record: AuditRecord) => void;
  /** Diagnostics (not decisions); default none. */
  log?: (message: string) => void;
  /** Answers `GET /healthz` (origin-form) on the proxy port; without it /healthz is refused like any origin-form request. */
  health?: () => Health;
  /** Time allowed to send the request headers (ms); default 10 000. */
  headersTimeoutMs?: number;
  /** Time allowed to send the whole request, body included (ms); default 300 000. */
  requestTimeoutMs?: number;
  /** A tunnel or upstream exchange with no traffic either way for this long is closed (ms); default 600 000. */
  idleTimeoutMs?: number;
  /** Time allowed to connect to the upstream (ms); default 10 000. */
  connectTimeoutMs?: number;
  /** Idle plain-HTTP upstream connections kept per vetted target (see upstream.ts UpstreamPool); default 16. */
  upstreamMaxIdle?: number;
  /** An idle pooled upstream connection is closed after this long (ms); default 4 000 (less when the upstream announces less). */
  upstreamIdleMs?: number;
  /** A name's resolution is reused for this long (ms), its addresses checked again on each use; default 5 000; 0 resolves every request. */
  resolveCacheMs?: number;
  /** Largest request head accepted (bytes); default 16 KiB; larger gets 431. */
  maxHeaderSize?: number;
  /** Clock for audit records; default Date.now. */
  now?: () => number;
  /** The canary: the placeholder and the real tokens' length:sha256 (see secrets.ts); default nothing to look for. */
  secrets?: SecretsConfig;
}

export interface EgressProxy extends http.Server {
  /** Replaces the allowlist for requests that arrive from now on; open tunnels and requests are left alone. */
  setAllowlist(entries: readonly string[]): Policy;
  /** Replaces what the canary looks for (a rotated or newly approved token's hash), for requests from now on. */
  setSecrets(config: SecretsConfig): void;
  /** The policy in force. */
  readonly policy: Policy;
  /** Plain-HTTP upstream connections open now: idle in the pool, and in use. */
  upstreamConnections(): { idle: number; busy: number };
}

export function createEgressProxy(opts: EgressProxyOptions = {}): EgressProxy {
  const now = opts.now ?? Date.now;
  const resolver = cachedResolver(opts.resolve ?? defaultResolve, opts.resolveCacheMs ?? 5_000);
  const addressPolicy = opts.isForbidden ? policyOf(opts.isForbidden) : createAddressPolicy(opts.deny ?? [], opts.privateNetworks ?? []);
  const audit = opts.audit ?? (() => undefined);
  const log = opts.log ?? (() => undefined);
  const connectTimeout = opts.connectTimeoutMs ?? 10_000;
  let policy = createPolicy(opts.allowlist ?? []);
  const pool = new UpstreamPool({
    connectTimeoutMs: connectTimeout,
    maxIdlePerTarget: opts.upstreamMaxIdle ?? 16,
    idleMs: opts.upstreamIdleMs ?? 4_000,
    allowed: (host, port) => policy.decide({ host, port }).allowed,
  });
  let secrets = createSecretScanner(opts.secrets);

  const server = http.createServer({
    maxHeaderSize: opts.maxHeaderSize ?? 16 * 1024,
    ...requestTimeouts(opts.headersTimeoutMs ?? 10_000, opts.requestTimeoutMs ?? 300_000),
  }) as EgressProxy;

  const ctx: ProxyContext = {
    policy: () => policy,
    secrets: () => secrets,
    vet: createVet(resolver.resolve, addressPolicy, opts.bottle),
    pool,
    bottle: opts.bottle ?? '<bottle>',
    audit,
    log,
    now,
    idleTimeoutMs: opts.idleTimeoutMs ?? 600_000,
    connectTimeoutMs: connectTimeout,
  };

  /** The audit record of a refusal made before any target was known (no host, no bytes). */
  const auditUntargeted = (socket: Duplex, method: string | null, reason: string, status: number, extra: Partial<AuditRecord> = {}) =>
    audit(refusalRecord({ at: now(), client: clientOf(socket as Duplex & { remoteAddress?: string; remotePort?: number }), method }, 0, status, reason, null, null, extra));

  server.on('request', (req, res) => handlePlainRequest(ctx, opts.health, req, res, false));
  server.on('checkContinue', (req, res) => handlePlainRequest(ctx, opts.health, req, res, true));
  server.on('connect', (req: http.IncomingMessage, socket: Duplex, head: Buffer) => handleConnect(ctx, req, socket, head));

  // Neither protocol switches: the bytes after them could not be read as requests.
  server.on('upgrade', (req: http.IncomingMessage, socket: Duplex) => {
    const inHead = secrets.scanHead(req.url ?? '', req.rawHeaders);
    const found = inHead ? credentialFound(inHead, inHead.where, req.method ?? 'GET', 'the request') : undefined;
    const reason = found ? found.reason : 'Upgrade is not proxied as plain HTTP';
    if (found) log(found.log);
    auditUntargeted(socket, req.method ?? null, reason, found ? 403 : 400, found ? found.extra : {});
    if (found) rawResponse(socket, 403, TEXT_TYPE, found.text);
    else rawResponse(socket, 400, TEXT_TYPE, `egress: ${reason}; use CONNECT (wss://, https://).\n`);
  });

  // ---- requests that cannot be read --------------------------------------------------

  server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => {
    // A response already under way on this socket (keep-alive) must not be interleaved with ours.
    const inFlight = (socket as Duplex & { _httpMessage?: unknown })._httpMessage;
    if (err.code === 'ECONNRESET' || !socket.writable || inFlight) {
      socket.destroy();
      return;
    }
    const status = err.code === 'HPE_HEADER_OVERFLOW' ? 431 : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : 400;
    const reason =
      status === 431 ? 'request headers too large' : status === 408 ? 'the client was too slow to send its request' : `malformed request (${err.code ?? 'parse error'}: ${err.message})`;
    auditUntargeted(socket, null, reason, status);
    rawResponse(socket, status, TEXT_TYPE, `egress: ${reason}.\n`);
    // Closed as soon as the answer is out: the HTTP server still listens on this socket and
    // would report the client's later end as a second error.
    socket.once('finish', () => socket.destroy());
  });

  Object.defineProperty(server, 'policy', { get: () => policy, enumerable: true });
  server.setAllowlist = (entries: readonly string[]) => {
    policy = createPolicy(entries);
    // Every request is decided against the new policy before it reaches the pool; idle
    // connections to a target it no longer allows are closed now, busy ones when they end.
    pool.dropDisallowed();
    resolver.clear();
    return policy;
  };
  server.setSecrets = (config: SecretsConfig) => {
    secrets = createSecretScanner(config);
  };
  server.upstreamConnections = () => pool.counts();
  server.on('close', () => pool.destroy());
  return server;
}
