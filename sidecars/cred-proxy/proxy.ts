import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type net from 'node:net';
import { type Duplex, pipeline, type Transform } from 'node:stream';
import tls from 'node:tls';
import zlib from 'node:zlib';
import { addHeader, connectionNamed, type HeaderMap, isHopByHop, JSON_TYPE, rawResponse, requestTimeouts, TEXT_TYPE } from '../common/http.js';
import type { AuditRecord } from './audit.js';
import { containsAny, RedactStream, redactText } from './redact.js';
import { HEALTH_PATH, matchRoute, type Route, requestPathProblem, upstreamTarget } from './routes.js';
import type { TokenState } from './tokens.js';

export type { AuditRecord } from './audit.js';

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

/** Inbound headers never forwarded, whatever the route: credentials and client facts. */
const STRIPPED_INBOUND = new Set([
  'host',
  'authorization',
  'proxy-authorization',
  'x-api-key',
  'cookie',
  'forwarded',
  'x-forwarded-for',
  'x-forwarded-host',
  'x-forwarded-proto',
  'x-forwarded-port',
  'x-real-ip',
  'accept-encoding',
]);

/** Upstream response headers never passed to the agent besides hop-by-hop ones. */
const STRIPPED_OUTBOUND = new Set(['set-cookie', 'set-cookie2']);

const DEFAULT_SYSTEM_CA = '/etc/ssl/certs/ca-certificates.crt';

/** A keep-alive agent per route; https agents trust the system CAs plus the route's bundle. */
export function upstreamAgent(route: Route, systemCaFile: string = DEFAULT_SYSTEM_CA, keepAliveMs = 4000): http.Agent {
  // Free sockets are dropped after a few seconds: an upstream closing an idle connection just
  // as a request is written on it would fail that request.
  const common = { keepAlive: true, timeout: keepAliveMs };
  if (route.upstream.protocol === 'http:') return new http.Agent(common);
  const ca: string[] = [...tls.rootCertificates];
  try {
    ca.push(readFileSync(systemCaFile, 'utf8'));
  } catch {
    // No system bundle: Node's bundled roots alone.
  }
  if (route.caFile !== undefined) {
    const extra = readFileSync(route.caFile, 'utf8'); // unreadable: the caller fails closed
    if (!extra.includes('-----BEGIN CERTIFICATE-----')) throw new Error(`${route.caFile} holds no PEM certificate`);
    ca.push(extra);
  }
  // One secure context per route, built once: parsing a few hundred roots per connection would cost milliseconds.
  return new https.Agent({ ...common, secureContext: tls.createSecureContext({ ca }) });
}

/** What a route's upstream agent depends on: a route that keeps these keeps its agent (and its warm connections) across a reload. */
const agentKey = (r: Route) => JSON.stringify([r.path, r.upstream.origin, r.caFile ?? null]);

/** The routes in force and what serves them, swapped as one value. */
interface RouteTable {
  routes: readonly Route[];
  agents: Map<Route, http.Agent>;
  byKey: Map<string, http.Agent>;
  paths: string[];
}

/** A short reason for an upstream failure: the error's code, never its data. */
function upstreamFailure(err: NodeJS.ErrnoException, route: Route, idleMs: number): { status: number; reason: string } {
  const code = err.code ?? 'error';
  const origin = route.upstream.origin;
  if (code === 'ETIMEDOUT') return { status: 504, reason: `connecting to ${origin} timed out` };
  if (code === 'EIDLE') return { status: 504, reason: `${origin} sent nothing for ${Math.round(idleMs / 1000)} s` };
  if (/CERT|SELF_SIGNED|UNABLE_TO|^ERR_TLS|^ERR_SSL|^EPROTO$|HOSTNAME|ALTNAME/.test(code)) return { status: 502, reason: `TLS with ${origin} failed (${code})` };
  if (code === 'ECONNRESET' || code === 'ERR_STREAM_PREMATURE_CLOSE') return { status: 502, reason: `${origin} closed the connection (${code})` };
  return { status: 502, reason: `cannot reach ${origin} (${code})` };
}

function decoderFor(encoding: string): Transform | undefined {
  switch (encoding) {
    case 'gzip':
    case 'x-gzip':
      return zlib.createGunzip();
    case 'deflate':
      return zlib.createUnzip();
    case 'br':
      return zlib.createBrotliDecompress();
    default:
      return undefined;
  }
}

/** An error body shaped like a model API's, so an SDK shows the message. */
function errorBody(type: string, message: string, extra: Record<string, unknown> = {}): string {
  return `${JSON.stringify({ type: 'error', error: { type, message }, ...extra })}\n`;
}

export function createCredProxy(opts: CredProxyOptions): CredProxy {
  const { tokens } = opts;
  const now = opts.now ?? Date.now;
  const audit = opts.audit ?? (() => undefined);
  const log = opts.log ?? (() => undefined);
  const placeholder = opts.placeholder === '' ? undefined : opts.placeholder;
  const connectTimeout = opts.connectTimeoutMs ?? 10_000;
  const idleTimeout = opts.idleTimeoutMs ?? 600_000;
  /** Builds the table for `routes`, reusing the agents of `previous` where the route is unchanged; throws before anything changes. */
  const buildTable = (routes: readonly Route[], previous?: RouteTable): RouteTable => {
    const agents = new Map<Route, http.Agent>();
    const byKey = new Map<string, http.Agent>();
    const built: http.Agent[] = [];
    try {
      for (const r of routes) {
        const key = agentKey(r);
        let agent = byKey.get(key) ?? previous?.byKey.get(key);
        if (agent === undefined) {
          agent = upstreamAgent(r, opts.systemCaFile, opts.upstreamKeepAliveMs);
          built.push(agent);
        }
        agents.set(r, agent);
        byKey.set(key, agent);
      }
    } catch (err) {
      for (const a of built) a.destroy();
      throw err;
    }
    return { routes: [...routes], agents, byKey, paths: routes.map((r) => r.path) };
  };
  let table = buildTable(opts.routes);

  // Agents of routes removed by a reload: closed once no request uses them any more.
  const retired = new Set<http.Agent>();
  let reaper: NodeJS.Timeout | undefined;
  const reap = () => {
    for (const a of retired) {
      const busy = Object.values(a.sockets).some((l) => (l?.length ?? 0) > 0) || Object.values(a.requests).some((l) => (l?.length ?? 0) > 0);
      if (busy) continue;
      a.destroy();
      retired.delete(a);
    }
    if (retired.size === 0 && reaper !== undefined) {
      clearInterval(reaper);
      reaper = undefined;
    }
  };

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
    // The routes as they are now: a reload during this request does not change its route.
    const current = table;

    let route: Route | null = null;
    let tokenFp: string | null = null;
    let status = 0;
    let bytesUp = 0;
    let redactedInHeaders = 0;
    let alarm: string | undefined;
    let error: string | undefined;
    let body: RedactStream | undefined;
    let audited = false;
    const finish = () => {
      if (audited) return;
      audited = true;
      if (!res.writableFinished) error ??= 'the connection closed before the response ended';
      const redacted = redactedInHeaders + (body?.redactor.count ?? 0);
      if (redacted > 0) log(`cred-proxy: route ${route?.path}: the upstream echoed a token; ${redacted} occurrence(s) redacted`);
      audit({
        at,
        type: 'request',
        route: route?.path ?? null,
        method,
        // Never a token, even one the agent somehow put in its path.
        path: redactText(path.length > 2048 ? `${path.slice(0, 2048)}...` : path, secrets),
        status,
        bytes_up: bytesUp,
        bytes_down: body?.bytesOut ?? 0,
        duration_ms: now() - at,
        token_fp: tokenFp,
        ...(redacted > 0 ? { redacted } : {}),
        ...(alarm !== undefined ? { alarm } : {}),
        ...(error !== undefined ? { error: redactText(error, secrets) } : {}),
      });
    };
    res.on('close', finish);

    const reply = (code: number, type: string, message: string, extra: Record<string, unknown> = {}) => {
      status = code;
      const text = errorBody(type, `cred-proxy: ${redactText(message, secrets)}`, extra);
      res.writeHead(code, { 'content-type': JSON_TYPE, 'content-length': Buffer.byteLength(text) });
      res.end(method === 'HEAD' ? undefined : text);
    };

    if (!url.startsWith('/')) {
      error = 'not an origin-form request';
      reply(400, 'invalid_request_error', 'send requests as GET /<route>/..., with the route in the path; this is not a forward proxy');
      return;
    }
    const problem = requestPathProblem(path);
    if (problem !== undefined) {
      error = problem;
      reply(400, 'invalid_request_error', `refused ${method} ${path}: ${problem}`);
      return;
    }
    if (containsAny(url, secrets)) {
      alarm = 'a real token in the request target';
      error = alarm;
      reply(400, 'invalid_request_error', 'refused: the request target carries a credential');
      return;
    }
    if (placeholder !== undefined && url.includes(placeholder)) {
      error = 'the placeholder in the request target';
      reply(400, 'invalid_request_error', 'refused: the request target carries the placeholder credential; the cred-proxy injects credentials as headers only');
      return;
    }

    route = matchRoute(current.routes, path) ?? null;
    if (route === null) {
      reply(404, 'not_found_error', `no route for ${path}; routes: ${current.paths.join(', ')}`, { routes: current.paths });
      return;
    }
    const r = route;
    const state = tokens.get(r.tokenFile);
    if (!state.ok) {
      error = state.error;
      reply(503, 'api_error', `route ${r.path}: its token is unavailable (${state.error})`);
      return;
    }
    tokenFp = state.fp;

    // ---- request headers --------------------------------------------------------------
    const raw = req.rawHeaders;
    const named = connectionNamed(raw);
    const headers: HeaderMap = {};
    for (let i = 0; i < raw.length; i += 2) {
      const name = raw[i]!.toLowerCase();
      const value = raw[i + 1]!;
      if (containsAny(value, secrets)) {
        alarm ??= `a real token in the request header ${name}`;
        continue;
      }
      if (isHopByHop(name, named) || STRIPPED_INBOUND.has(name) || name === r.inject.header) continue;
      if (placeholder !== undefined && value.includes(placeholder)) continue;
      addHeader(headers, name, value);
    }
    headers.host = r.upstream.host;
    headers['accept-encoding'] = 'identity';
    // split/join, not replace: a `$` in a token must not be read as a replacement pattern.
    headers[r.inject.header] = r.inject.format.split('{token}').join(state.token);

    // ---- upstream exchange ------------------------------------------------------------
    const client = r.upstream.protocol === 'https:' ? https : http;
    const upstream = client.request({
      host: r.upstream.hostname,
      port: r.upstream.port,
      method,
      path: upstreamTarget(r, path, query),
      headers,
      setHost: false,
      agent: current.agents.get(r)!,
    });

    const fail = (err: NodeJS.ErrnoException) => {
      const f = upstreamFailure(err, r, idleTimeout);
      error ??= f.reason;
      if (res.writableEnded) return;
      if (!res.headersSent) reply(f.status, 'api_error', `route ${r.path}: ${f.reason}`);
      else res.destroy();
    };
    upstream.on('error', fail);
    upstream.on('socket', (s: net.Socket) => {
      if (!s.connecting) return; // a kept-alive connection
      const timer = setTimeout(() => upstream.destroy(Object.assign(new Error('connect timeout'), { code: 'ETIMEDOUT' })), connectTimeout);
      s.once(r.upstream.protocol === 'https:' ? 'secureConnect' : 'connect', () => clearTimeout(timer));
      s.once('close', () => clearTimeout(timer));
    });
    upstream.setTimeout(idleTimeout, () => upstream.destroy(Object.assign(new Error('idle'), { code: 'EIDLE' })));
    // The agent went away: so does the upstream exchange.
    res.on('close', () => {
      if (!res.writableFinished) upstream.destroy();
    });

    upstream.on('response', (ures: http.IncomingMessage) => {
      const code = ures.statusCode ?? 502;
      const hasBody = method !== 'HEAD' && code !== 204 && code !== 304 && code >= 200;
      const uraw = ures.rawHeaders;
      const unamed = connectionNamed(uraw);
      const out: HeaderMap = {};
      for (let i = 0; i < uraw.length; i += 2) {
        const name = uraw[i]!.toLowerCase();
        if (isHopByHop(name, unamed) || STRIPPED_OUTBOUND.has(name)) continue;
        let value = uraw[i + 1]!;
        if (containsAny(value, secrets)) {
          value = redactText(value, secrets);
          redactedInHeaders += 1;
        }
        addHeader(out, name, value);
      }
      const decoders: Transform[] = [];
      if (hasBody) {
        delete out['content-length'];
        const encoding = (ures.headers['content-encoding'] ?? '').toLowerCase();
        const codings = encoding
          .split(',')
          .map((c) => c.trim())
          .filter((c) => c !== '' && c !== 'identity');
        for (const c of codings.reverse()) {
          const d = decoderFor(c);
          if (d === undefined) {
            ures.resume();
            upstream.destroy();
            error = `the upstream answered in content-encoding "${encoding}"`;
            reply(502, 'api_error', `route ${r.path}: ${error}, which the cred-proxy cannot inspect for leaked tokens`);
            return;
          }
          decoders.push(d);
        }
        if (decoders.length > 0) delete out['content-encoding'];
      }
      status = code;
      const message = redactText(ures.statusMessage ?? '', secrets);
      if (message !== (ures.statusMessage ?? '')) redactedInHeaders += 1;
      if (message !== '') res.writeHead(code, message, out);
      else res.writeHead(code, out);
      if (!hasBody) {
        ures.resume();
        res.end();
        return;
      }
      // The head goes out now, not with the first body chunk: a streaming client sees the
      // status as soon as the upstream sends it.
      res.flushHeaders();
      body = new RedactStream(secrets);
      const stages: NodeJS.ReadWriteStream[] = [...decoders, body];
      pipeline([ures, ...stages, res], (err) => {
        if (err && !res.writableFinished) {
          error ??= `the response stream broke (${(err as NodeJS.ErrnoException).code ?? 'error'})`;
          res.destroy();
        }
      });
    });

    req.on('data', (c: Buffer) => {
      bytesUp += c.length;
    });
    req.on('error', () => upstream.destroy());
    req.pipe(upstream);
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
    const next = buildTable(routes, table);
    const kept = new Set(next.byKey.values());
    for (const a of table.byKey.values()) if (!kept.has(a)) retired.add(a);
    table = next;
    if (retired.size > 0 && reaper === undefined) {
      reaper = setInterval(reap, 1000);
      reaper.unref();
    }
  };
  server.closeUpstreams = () => {
    for (const a of table.byKey.values()) a.destroy();
    for (const a of retired) a.destroy();
    retired.clear();
    if (reaper !== undefined) clearInterval(reaper);
    reaper = undefined;
  };
  server.on('close', () => server.closeUpstreams());
  return server;
}
