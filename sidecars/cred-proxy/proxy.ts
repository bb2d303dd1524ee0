import http from 'node:http';
import type net from 'node:net';
import type { Duplex } from 'node:stream';
import { type AddressPolicy, createAddressPolicy, pinnedLookup, systemResolve, vetHost } from '../common/address-policy.js';
import { JSON_TYPE, rawResponse, requestTimeouts, TEXT_TYPE } from '../common/http.js';
import { type AuditRecord, type RequestOutcome, redactedCount, requestRecord } from './audit.js';
import { errorBody, forward } from './exchange.js';
import { targetRefusal, upstreamHeaders } from './inject.js';
import { redactText } from './redact.js';
import { buildTable, RetiredAgents, type RouteTable } from './route-table.js';
import { HEALTH_PATH, matchRoute, type Route, upstreamTarget } from './routes.js';
import type { TokenState } from './tokens.js';

export type { AuditRecord } from './audit.js';
export { upstreamAgent } from './route-table.js';

/**
 * The cred-proxy: the agent calls http://cred-proxy:9099/<route path>/... with a worthless
 * placeholder; the proxy sends the request to the route's fixed upstream with the real token.
 *
 * - Routing: the longest route prefix matching the request path on a segment boundary. The
 *   upstream (scheme, host, port, base path) comes from the route only; the Host header is
 *   never used for routing and is rewritten to the upstream's host. Only origin-form requests
 *   (`GET /anthropic/v1/messages`); absolute-form, CONNECT and Upgrade are refused. A path
 *   outside every route gets 404 naming the routes.
 * - Request headers: hop-by-hop headers go, and so do every credential the agent could send
 *   (Authorization, Proxy-Authorization, X-Api-Key, Cookie, the route's inject header), any
 *   header carrying the placeholder or a real token, Forwarded, X-Forwarded-(anything), X-Real-Ip (no
 *   spoofed client facts upstream) and Accept-Encoding (replaced with identity, so an echoed
 *   token can be seen and redacted). Then the route's header is set to its format with the
 *   token in place of {token}.
 * - Response headers: hop-by-hop headers and Set-Cookie go (a session minted for the real
 *   token is a credential too, and must not reach the agent); every token in a header value
 *   is redacted. Content-Length goes for bodies (redaction can change the length).
 * - Bodies stream both ways: each chunk is passed on as it arrives (server-sent events reach
 *   the agent as they are produced). Every token of the bottle, current or rotated out, is
 *   replaced with [redacted] in the response body, also when split across chunks. A body in a
 *   content-encoding the upstream sent despite `identity` is decoded (gzip, deflate, br) so it
 *   can be inspected; another encoding is refused (502).
 * - Upstream TLS is verified against the system CAs plus the route's CA bundle. A connect or
 *   TLS failure is a 502 (a connect timeout 504) with a short reason; no message ever holds
 *   a token.
 * - GET/HEAD /healthz answers 200 while every route has its token, 503 otherwise; it is never
 *   routed.
 * - The routes can be replaced while serving (`setRoutes`): one swap, seen whole by the next
 *   request; a request already in flight keeps the route (and upstream connection) it matched.
 *
 * The parts: routes.ts (reading routes, matching a path), route-table.ts (the routes in force
 * and their upstream agents), inject.ts (the request target's checks, the headers sent with
 * the token), exchange.ts (the forwarding exchange), audit.ts (the lines); this file builds the
 * server around them.
 */

export interface TokenSource {
  /** The current token of a token file, or why there is none. */
  get(file: string): TokenState;
  /** Every token to redact from responses (current and recently rotated out). */
  secrets(): readonly string[];
  /** Token files without a usable token right now. */
  problems(): { file: string; error: string }[];
}

export interface CredProxyOptions {
  routes: readonly Route[];
  tokens: TokenSource;
  /** The placeholder the agent holds: a header carrying it is never forwarded; a request target carrying it is refused. */
  placeholder?: string;
  /** Trusted besides Node's bundled roots for every https upstream (PEM bundle); missing is fine. Default Debian's. */
  systemCaFile?: string;
  /** One record per request (not for /healthz). */
  audit?: (record: AuditRecord) => void;
  /** Diagnostics, never holding a token. */
  log?: (message: string) => void;
  now?: () => number;
  /** Time allowed to connect (and finish TLS) to an upstream (ms); default 10 000. */
  connectTimeoutMs?: number;
  /** An exchange with no traffic from the upstream for this long is ended (ms); default 600 000. */
  idleTimeoutMs?: number;
  /** How long a kept-alive connection to an upstream may sit unused before it is closed (ms); default 4000. */
  upstreamKeepAliveMs?: number;
  /** Which upstream addresses may be dialled (sidecars/common/address-policy.ts); default the policy with no opt-in and no deny list. */
  addressPolicy?: AddressPolicy;
  /** Resolves an upstream's name to all its addresses, once per new connection; default dns.lookup(all). */
  resolve?: (host: string) => Promise<string[]>;
  /** The bottle's name in the manifest, for the "allow it with bottles.<bottle>.private_networks" hint. */
  bottle?: string;
  /** Time allowed for the agent to send request headers (ms); default 30 000. */
  headersTimeoutMs?: number;
  /** Time allowed for the agent to send a whole request, body included (ms); default 600 000. */
  requestTimeoutMs?: number;
}

export interface CredProxy extends http.Server {
  /** Closes the keep-alive connections to the upstreams as well. */
  closeUpstreams(): void;
  /** The routes in force. */
  routes(): readonly Route[];
  /**
   * Puts new routes in force for the next request. Throws, changing nothing, when a new
   * route's upstream agent cannot be built (its CA bundle cannot be read or holds no
   * certificate). A route kept (same path, upstream and CA file) keeps its upstream agent;
   * the agent of a route gone is closed once its requests in flight are done.
   */
  setRoutes(routes: readonly Route[]): void;
}

export function createCredProxy(opts: CredProxyOptions): CredProxy {
  const { tokens } = opts;
  const now = opts.now ?? Date.now;
  const audit = opts.audit ?? (() => undefined);
  const log = opts.log ?? (() => undefined);
  const placeholder = opts.placeholder === '' ? undefined : opts.placeholder;
  const connectTimeout = opts.connectTimeoutMs ?? 10_000;
  const idleTimeout = opts.idleTimeoutMs ?? 600_000;
  const agentOptions = { systemCaFile: opts.systemCaFile, keepAliveMs: opts.upstreamKeepAliveMs };
  let table: RouteTable = buildTable(opts.routes, agentOptions);
  const retired = new RetiredAgents();
  const addressPolicy = opts.addressPolicy ?? createAddressPolicy();
  const resolve = opts.resolve ?? systemResolve;

  const server = http.createServer(requestTimeouts(opts.headersTimeoutMs ?? 30_000, opts.requestTimeoutMs ?? 600_000)) as CredProxy;
  server.on('connection', (s: net.Socket) => s.setNoDelay(true));

  const health = (req: http.IncomingMessage, res: http.ServerResponse) => {
    const method = req.method ?? 'GET';
    let status = 200;
    const { routes, paths } = table;
    let text = `ok: ${routes.length} route(s): ${paths.join(', ')}\n`;
    if (method !== 'GET' && method !== 'HEAD') {
      status = 405;
      text = `${HEALTH_PATH} answers GET and HEAD\n`;
    } else {
      const bad = tokens.problems();
      if (bad.length > 0) {
        status = 503;
        const byFile = (f: string) => routes.filter((r) => r.tokenFile === f).map((r) => r.path).join(', ');
        text = `unhealthy: ${bad.map((b) => `route ${byFile(b.file)}: ${b.error}`).join('; ')}\n`;
      }
    }
    res.writeHead(status, { 'content-type': TEXT_TYPE, 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' });
    res.end(method === 'HEAD' ? undefined : text);
  };

  server.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
    const at = now();
    const method = req.method ?? 'GET';
    const url = req.url ?? '';
    const q = url.indexOf('?');
    const path = q === -1 ? url : url.slice(0, q);
    const query = q === -1 ? '' : url.slice(q);
    if (path === HEALTH_PATH) {
      health(req, res);
      return;
    }
    const secrets = tokens.secrets();
    const redact = (text: string) => redactText(text, secrets);
    // The routes as they are now: a reload during this request does not change its route.
    const current = table;

    const outcome: RequestOutcome = { route: null, tokenFp: null, status: 0, bytesUp: 0, redactedInHead: 0 };
    let audited = false;
    res.on('close', () => {
      if (audited) return;
      audited = true;
      if (!res.writableFinished) outcome.error ??= 'the connection closed before the response ended';
      const redacted = redactedCount(outcome);
      if (redacted > 0) log(`cred-proxy: route ${outcome.route ?? undefined}: the upstream echoed a token; ${redacted} occurrence(s) redacted`);
      audit(requestRecord(at, now() - at, method, path, outcome, redact));
    });

    const reply = (code: number, type: string, message: string, extra: Record<string, unknown> = {}) => {
      outcome.status = code;
      const text = errorBody(type, `cred-proxy: ${redact(message)}`, extra);
      res.writeHead(code, { 'content-type': JSON_TYPE, 'content-length': Buffer.byteLength(text) });
      res.end(method === 'HEAD' ? undefined : text);
    };

    const refused = targetRefusal(method, url, path, secrets, placeholder);
    if (refused !== undefined) {
      if (refused.alarm !== undefined) outcome.alarm = refused.alarm;
      outcome.error = refused.error;
      reply(400, 'invalid_request_error', refused.message);
      return;
    }
    const route = matchRoute(current.routes, path);
    if (route === undefined) {
      reply(404, 'not_found_error', `no route for ${path}; routes: ${current.paths.join(', ')}`, { routes: current.paths });
      return;
    }
    outcome.route = route.path;
    const state = tokens.get(route.tokenFile);
    if (!state.ok) {
      outcome.error = state.error;
      reply(503, 'api_error', `route ${route.path}: its token is unavailable (${state.error})`);
      return;
    }
    outcome.tokenFp = state.fp;
    const injected = upstreamHeaders(req.rawHeaders, route, state.token, secrets, placeholder);
    if (injected.alarm !== undefined) outcome.alarm = injected.alarm;
    // The upstream's name is resolved here, once, and every address checked against the address
    // policy; the connection goes to those addresses only (pinnedLookup: no second lookup), and
    // TLS still checks the certificate against the name.
    req.pause();
    vetHost(route.upstream.hostname, addressPolicy, resolve, 'the cred-proxy', opts.bottle).then(
      (vetted) => {
        if (res.destroyed || res.writableEnded) return;
        if (!vetted.ok) {
          outcome.error = vetted.reason;
          if (vetted.refusal) outcome.addressClass = vetted.refusal.addressClass;
          reply(vetted.refusal ? 403 : 502, vetted.refusal ? 'permission_error' : 'api_error', `route ${route.path}: ${vetted.reason}`);
          return;
        }
        forward(
          req,
          res,
          {
            route,
            agent: current.agents.get(route)!,
            method,
            target: upstreamTarget(route, path, query),
            headers: injected.headers,
            secrets,
            connectTimeoutMs: connectTimeout,
            idleTimeoutMs: idleTimeout,
            lookup: pinnedLookup(vetted.addresses),
          },
          outcome,
          reply,
        );
      },
      (err: Error) => {
        outcome.error = `internal error: ${err.message}`;
        if (!res.headersSent) reply(500, 'api_error', `route ${route.path}: internal error`);
      },
    );
  });

  // Neither tunnels nor protocol switches: each would carry bytes the proxy cannot vet.
  const refuseRaw = (kind: string) => (req: http.IncomingMessage, socket: Duplex) => {
    socket.on('error', () => undefined);
    const status = kind === 'CONNECT' ? 405 : 400;
    audit({
      at: now(),
      type: 'request',
      route: null,
      method: req.method ?? kind,
      path: kind === 'CONNECT' ? '' : redactText((req.url ?? '').split('?')[0]!, tokens.secrets()),
      status,
      bytes_up: 0,
      bytes_down: 0,
      duration_ms: 0,
      token_fp: null,
      error: `${kind} refused`,
    });
    rawResponse(socket, status, JSON_TYPE, errorBody('invalid_request_error', `cred-proxy: ${kind} is not supported; send plain requests to /<route>/...`));
  };
  server.on('connect', refuseRaw('CONNECT'));
  server.on('upgrade', refuseRaw('Upgrade'));

  server.routes = () => table.routes;
  server.setRoutes = (routes) => {
    const next = buildTable(routes, agentOptions, table);
    retired.retire(table, next);
    table = next;
  };
  server.closeUpstreams = () => {
    for (const a of table.byKey.values()) a.destroy();
    retired.closeAll();
  };
  server.on('close', () => server.closeUpstreams());
  return server;
}
