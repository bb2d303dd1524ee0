import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import { pipeline, type Transform } from 'node:stream';
import zlib from 'node:zlib';
import { addHeader, connectionNamed, type HeaderMap, isHopByHop } from '../common/http.js';
import type { RequestOutcome } from './audit.js';
import { containsAny, RedactStream, redactText } from './redact.js';
import type { Route } from './routes.js';

/**
 * One request forwarded to its route's upstream and the answer streamed back: connect and
 * idle timeouts, the response head cleaned of hop-by-hop headers, sessions and echoed tokens,
 * the body decoded when the upstream compressed it anyway and redacted as it streams.
 */

/** Upstream response headers never passed to the agent besides hop-by-hop ones: a session minted for the real token is a credential too. */
const STRIPPED_OUTBOUND = new Set(['set-cookie', 'set-cookie2']);

/** An error body shaped like a model API's, so an SDK shows the message. */
export function errorBody(type: string, message: string, extra: Record<string, unknown> = {}): string {
  return `${JSON.stringify({ type: 'error', error: { type, message }, ...extra })}\n`;
}

/** Answers the agent with an error of the model API's shape (the message redacted by the caller's reply). */
export type Reply = (status: number, type: string, message: string, extra?: Record<string, unknown>) => void;

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

/** The response headers the agent gets, each token in a value redacted; `redacted` counts the values changed. */
function agentHeaders(raw: readonly string[], secrets: readonly string[]): { headers: HeaderMap; redacted: number } {
  const named = connectionNamed(raw);
  const headers: HeaderMap = {};
  let redacted = 0;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!.toLowerCase();
    if (isHopByHop(name, named) || STRIPPED_OUTBOUND.has(name)) continue;
    let value = raw[i + 1]!;
    if (containsAny(value, secrets)) {
      value = redactText(value, secrets);
      redacted += 1;
    }
    addHeader(headers, name, value);
  }
  return { headers, redacted };
}

/** The decoders for a body's Content-Encoding, outermost first; `unsupported` when one cannot be decoded (and so not inspected). */
function decodersFor(contentEncoding: string | undefined): { decoders: Transform[]; unsupported?: string } {
  const encoding = (contentEncoding ?? '').toLowerCase();
  const codings = encoding
    .split(',')
    .map((c) => c.trim())
    .filter((c) => c !== '' && c !== 'identity');
  const decoders: Transform[] = [];
  for (const c of codings.reverse()) {
    const d = decoderFor(c);
    if (d === undefined) return { decoders: [], unsupported: encoding };
    decoders.push(d);
  }
  return { decoders };
}

export interface Exchange {
  route: Route;
  /** The route's keep-alive agent, as the table in force when the request arrived has it. */
  agent: http.Agent;
  method: string;
  /** The upstream request target (routes.upstreamTarget). */
  target: string;
  headers: HeaderMap;
  /** Every token to redact from the answer. */
  secrets: readonly string[];
  connectTimeoutMs: number;
  idleTimeoutMs: number;
  /** Answers the upstream's name with its vetted addresses only (address-policy.pinnedLookup). */
  lookup: net.LookupFunction;
}

/** Sends the agent's request upstream and streams the answer back, recording status, bytes and what went wrong in `outcome`. */
export function forward(req: http.IncomingMessage, res: http.ServerResponse, x: Exchange, outcome: RequestOutcome, reply: Reply): void {
  const { route: r, method, secrets } = x;
  const client = r.upstream.protocol === 'https:' ? https : http;
  const hostname = r.upstream.hostname.replace(/^\[(.*)\]$/, '$1');
  const upstream = client.request({
    host: hostname,
    // A literal address is its own answer (net never looks it up); a name gets the vetted addresses.
    ...(net.isIP(hostname) ? {} : { lookup: x.lookup }),
    port: r.upstream.port,
    method,
    path: x.target,
    headers: x.headers,
    setHost: false,
    agent: x.agent,
  });

  upstream.on('error', (err: NodeJS.ErrnoException) => {
    const f = upstreamFailure(err, r, x.idleTimeoutMs);
    outcome.error ??= f.reason;
    if (res.writableEnded) return;
    if (!res.headersSent) reply(f.status, 'api_error', `route ${r.path}: ${f.reason}`);
    else res.destroy();
  });
  upstream.on('socket', (s: net.Socket) => {
    if (!s.connecting) return; // a kept-alive connection
    const timer = setTimeout(() => upstream.destroy(Object.assign(new Error('connect timeout'), { code: 'ETIMEDOUT' })), x.connectTimeoutMs);
    s.once(r.upstream.protocol === 'https:' ? 'secureConnect' : 'connect', () => clearTimeout(timer));
    s.once('close', () => clearTimeout(timer));
  });
  upstream.setTimeout(x.idleTimeoutMs, () => upstream.destroy(Object.assign(new Error('idle'), { code: 'EIDLE' })));
  // The agent went away: so does the upstream exchange.
  res.on('close', () => {
    if (!res.writableFinished) upstream.destroy();
  });

  upstream.on('response', (ures: http.IncomingMessage) => {
    const code = ures.statusCode ?? 502;
    const hasBody = method !== 'HEAD' && code !== 204 && code !== 304 && code >= 200;
    const { headers: out, redacted } = agentHeaders(ures.rawHeaders, secrets);
    outcome.redactedInHead += redacted;
    let decoders: Transform[] = [];
    if (hasBody) {
      // Redaction can change the body's length.
      delete out['content-length'];
      const decoding = decodersFor(ures.headers['content-encoding']);
      if (decoding.unsupported !== undefined) {
        ures.resume();
        upstream.destroy();
        outcome.error = `the upstream answered in content-encoding "${decoding.unsupported}"`;
        reply(502, 'api_error', `route ${r.path}: ${outcome.error}, which the cred-proxy cannot inspect for leaked tokens`);
        return;
      }
      decoders = decoding.decoders;
      if (decoders.length > 0) delete out['content-encoding'];
    }
    outcome.status = code;
    const message = redactText(ures.statusMessage ?? '', secrets);
    if (message !== (ures.statusMessage ?? '')) outcome.redactedInHead += 1;
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
    const body = new RedactStream(secrets);
    outcome.body = body;
    const stages: NodeJS.ReadWriteStream[] = [...decoders, body];
    pipeline([ures, ...stages, res], (err) => {
      if (err && !res.writableFinished) {
        outcome.error ??= `the response stream broke (${(err as NodeJS.ErrnoException).code ?? 'error'})`;
        res.destroy();
      }
    });
  });

  req.on('data', (c: Buffer) => {
    outcome.bytesUp += c.length;
  });
  req.on('error', () => upstream.destroy());
  req.pipe(upstream);
}
