import { promises as dnsPromises } from 'node:dns';
import http from 'node:http';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import { connectionNamed, type HeaderMap, isHopByHop, rawResponse, requestTimeouts, TEXT_TYPE } from '../common/http.js';
import type { AuditRecord } from './audit.js';
import {
  type AddressBlock,
  createPolicy,
  type Decision,
  forbiddenAddress,
  formatTarget,
  type Policy,
  parseAuthority,
  suggestedEntry,
  type Target,
} from './policy.js';
import { createSecretScanner, type Detection, type SecretsConfig } from './secrets.js';
import { cachedResolver, dial, type PooledRequestOptions, UpstreamError, UpstreamPool, type VettedTarget } from './upstream.js';

export type { AuditLog, AuditRecord } from './audit.js';
export { openAuditLog } from './audit.js';
export { readAllowlistFile, watchAllowlistFile } from './allowlist-file.js';
export type { Detection, SecretHash, SecretsConfig } from './secrets.js';

/**
 * The egress proxy: the agent's only route out of its bottle.
 *
 * - Plain HTTP: absolute-URI requests (`GET http://host/path`) only; the Host header must name
 *   the same host:port; hop-by-hop and Proxy-* headers are dropped; bodies stream both ways.
 * - Everything else: CONNECT host:port tunnels.
 * - The decision is made on the target the proxy dials: the allowlist first (a refused name is
 *   never even resolved), then the proxy resolves the name itself, refuses it when any address
 *   is forbidden (loopback, link-local, ... see policy.forbiddenAddress) and connects to the
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
 */

export interface Health {
  ok: boolean;
  message: string;
}

export interface EgressProxyOptions {
  /** The initial allowlist entries (see policy.ts); default none: everything is refused. */
  allowlist?: readonly string[];
  /** Resolves a name to all its addresses; default dns.lookup(all) (which reads /etc/hosts). */
  resolve?: (host: string) => Promise<string[]>;
  /** Why an address must not be dialled, or undefined; default policy.forbiddenAddress with `deny`. */
  isForbidden?: (address: string) => string | undefined;
  /** Extra forbidden addresses/blocks for the default isForbidden (the bottle networks' gateways). */
  deny?: readonly AddressBlock[];
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

/** End-to-end headers of `msg` (lowercase names): drops hop-by-hop, Proxy-*, what Connection names, and `drop`. */
export function endToEndHeaders(msg: http.IncomingMessage, drop: readonly string[] = []): HeaderMap {
  const named = connectionNamed(msg.rawHeaders);
  for (const name of drop) named.add(name);
  const out: HeaderMap = {};
  for (const [name, value] of Object.entries(msg.headers)) {
    if (value === undefined || isHopByHop(name, named)) continue;
    out[name] = value;
  }
  return out;
}

async function defaultResolve(host: string): Promise<string[]> {
  const found = await dnsPromises.lookup(host, { all: true, verbatim: true });
  return found.map((a) => a.address);
}


/** With token hashes, a plain request's body is checked this many bytes at a time, the event loop free in between. */
const SCAN_SLICE = 8 * 1024;
/** Checked body bytes kept while the upstream connection is being made; past this the client is paused. */
const PENDING_LIMIT = 64 * 1024;
/** Idempotent methods (RFC 9110 9.2.2): sent again once when a reused upstream connection was found closed. */
const RETRIABLE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE', 'PUT', 'DELETE']);

/** The audit fields, reason and refusal text for a credential seen in a request. */
function credentialFound(d: Detection, where: string, method: string, target: string) {
  const what = d.alarm === 'canary' ? "the bottle's placeholder token" : 'a real API token';
  return {
    extra: { alarm: d.alarm, ...(d.fingerprint !== undefined ? { token_fp: d.fingerprint } : {}) } satisfies Partial<AuditRecord>,
    reason: `credential found in ${where} (${d.alarm === 'canary' ? 'the placeholder token' : 'a real token'}); request blocked`,
    log: `egress: ALARM (${d.alarm}): a credential was found in ${where} of ${method} ${target}; the request was blocked`,
    text:
      `egress: refused ${method} ${target}: a credential (${what}) was found in ${where} and was blocked; it was not sent.\n` +
      'Credentials reach their APIs only through the cred-proxy, which adds them itself.\n',
  };
}

interface Vetted {
  ok: true;
  addresses: string[];
}
interface Refused {
  ok: false;
  status: number;
  reason: string;
  /** A refusal by address policy (403) rather than a failure to resolve (502). */
  forbidden: boolean;
}

export function createEgressProxy(opts: EgressProxyOptions = {}): EgressProxy {
  const now = opts.now ?? Date.now;
  const resolver = cachedResolver(opts.resolve ?? defaultResolve, opts.resolveCacheMs ?? 5_000);
  const resolve = resolver.resolve;
  const deny = opts.deny ?? [];
  const isForbidden = opts.isForbidden ?? ((ip: string) => forbiddenAddress(ip, deny));
  const bottle = opts.bottle ?? '<bottle>';
  const audit = opts.audit ?? (() => undefined);
  const log = opts.log ?? (() => undefined);
  const idleTimeout = opts.idleTimeoutMs ?? 600_000;
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

  const allowHint = (target: Target) =>
    `To allow it, add "${suggestedEntry(target)}" to bottles.${bottle}.egress.allow in the manifest.`;

  const deniedText = (method: string, target: Target, decision: Decision) =>
    `egress: refused ${method} ${formatTarget(target)}: ${decision.reason}.\n${allowHint(target)}\n`;

  async function vet(target: Target): Promise<Vetted | Refused> {
    let addresses: string[];
    if (net.isIP(target.host)) {
      addresses = [target.host];
    } else {
      try {
        addresses = await resolve(target.host);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
        return { ok: false, status: 502, reason: `could not resolve ${target.host} (${code})`, forbidden: false };
      }
      if (addresses.length === 0) return { ok: false, status: 502, reason: `${target.host} has no address`, forbidden: false };
    }
    for (const address of addresses) {
      const why = isForbidden(address);
      if (why !== undefined) {
        const what = address === target.host ? address : `${target.host} resolves to ${address}`;
        return { ok: false, status: 403, reason: `${what}, a ${why} address, which the egress proxy never connects to`, forbidden: true };
      }
    }
    return { ok: true, addresses };
  }

  /** The target, to name in a refusal and its audit line; null when the credential is in the host name itself. */
  const shownTarget = (target: Target): Target | null => (secrets.scan(target.host) ? null : target);

  const clientOf = (socket: net.Socket | Duplex) => {
    const s = socket as net.Socket;
    if (s.remoteAddress === undefined) return 'unknown';
    // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d; the audit shows them plainly.
    return `${s.remoteAddress.replace(/^::ffff:(?=\d+\.\d+\.\d+\.\d+$)/i, '')}:${s.remotePort}`;
  };

  /** The audit record of a refusal made before any target was known (no host, no bytes). */
  const auditUntargeted = (socket: net.Socket | Duplex, method: string | null, reason: string, status: number, extra: Partial<AuditRecord> = {}) =>
    audit({ at: now(), client: clientOf(socket), method, host: null, port: null, decision: 'deny', rule: null, reason, bytes_up: 0, bytes_down: 0, duration_ms: 0, status, ...extra });

  // ---- plain HTTP ------------------------------------------------------------------

  const onRequest = (req: http.IncomingMessage, res: http.ServerResponse, expectsContinue: boolean) => {
    const at = now();
    const method = req.method ?? 'GET';
    const url = req.url ?? '';
    const base = { at, client: clientOf(req.socket), method };
    const finish = (rec: Partial<AuditRecord> & Pick<AuditRecord, 'decision' | 'reason'>) =>
      audit({ ...base, host: null, port: null, rule: null, bytes_up: 0, bytes_down: 0, duration_ms: now() - at, ...rec });
    const refuse = (status: number, text: string, target: Target | null, reason: string, rule?: string, extra: Partial<AuditRecord> = {}) => {
      finish({ decision: 'deny', reason, status, host: target?.host ?? null, port: target?.port ?? null, rule: rule ?? null, ...extra });
      res.writeHead(status, { 'content-type': TEXT_TYPE, 'content-length': Buffer.byteLength(text), connection: 'close' });
      res.end(text);
    };

    // The canary, before anything else: a credential in the target or a header goes nowhere
    // (not even to the resolver, as a name under a wildcard entry would).
    const inHead = secrets.scanHead(url, req.rawHeaders);
    if (inHead) {
      const m = /^http:\/\/([^/?#@]*)(?:[/?#]|$)/i.exec(url);
      const parsedTarget = m ? parseAuthority(m[1]!, 80) : undefined;
      const target = parsedTarget?.ok ? shownTarget(parsedTarget.value) : null;
      const found = credentialFound(inHead, inHead.where, method, target ? formatTarget(target) : 'the request');
      log(found.log);
      refuse(403, found.text, target, found.reason, undefined, found.extra);
      return;
    }

    if (url.startsWith('/')) {
      if (url === '/healthz' && (method === 'GET' || method === 'HEAD') && opts.health) {
        const h = opts.health();
        const text = `${h.message}\n`;
        res.writeHead(h.ok ? 200 : 503, { 'content-type': TEXT_TYPE, 'content-length': Buffer.byteLength(text) });
        res.end(method === 'HEAD' ? undefined : text);
        return;
      }
      const reason = 'origin-form request to the proxy itself';
      refuse(400, `egress: this is a forward proxy; send absolute-URI requests (GET http://host/path) or CONNECT host:port.\n`, null, reason);
      return;
    }
    const m = /^http:\/\/([^/?#]*)([/?][^#]*)?$/i.exec(url);
    if (!m) {
      const reason = /^https:/i.test(url) ? 'https:// URI in a plain request (use CONNECT)' : 'request target is not an absolute http:// URI';
      refuse(400, `egress: ${reason}.\n`, null, reason);
      return;
    }
    const authority = m[1]!;
    if (authority.includes('@')) {
      refuse(400, 'egress: credentials in the request URI are not forwarded.\n', null, 'userinfo in the request URI');
      return;
    }
    const parsed = parseAuthority(authority, 80);
    if (!parsed.ok) {
      refuse(400, `egress: bad target "${authority}": ${parsed.message}.\n`, null, `bad target: ${parsed.message}`);
      return;
    }
    const target = parsed.value;
    const where = formatTarget(target);

    // The decision is made on the URI's authority; a Host header naming anything else is refused.
    const hostLines = req.rawHeaders.filter((_, i) => i % 2 === 0 && req.rawHeaders[i]!.toLowerCase() === 'host').length;
    const hostHeader = req.headers.host;
    if (hostLines > 1) {
      refuse(400, 'egress: more than one Host header.\n', target, 'more than one Host header');
      return;
    }
    if (hostHeader === undefined) {
      if (req.httpVersion !== '1.0') {
        refuse(400, 'egress: the request has no Host header.\n', target, 'no Host header');
        return;
      }
    } else {
      const h = parseAuthority(hostHeader, 80);
      if (!h.ok || h.value.host !== target.host || h.value.port !== target.port) {
        const reason = `Host header "${hostHeader}" does not match the target ${where}`;
        refuse(400, `egress: ${reason}.\n`, target, reason);
        return;
      }
    }
    // Ambiguous framing (Node's parser already refuses most of it; this is the second lock).
    const te = req.headers['transfer-encoding'];
    if (te !== undefined) {
      if (req.headers['content-length'] !== undefined) {
        refuse(400, 'egress: both Content-Length and Transfer-Encoding.\n', target, 'both Content-Length and Transfer-Encoding');
        return;
      }
      if (te.trim().toLowerCase() !== 'chunked') {
        refuse(400, `egress: unsupported Transfer-Encoding "${te}".\n`, target, 'unsupported Transfer-Encoding');
        return;
      }
    }

    const decision = policy.decide(target);
    if (!decision.allowed) {
      refuse(403, deniedText(method, target, decision), target, decision.reason);
      return;
    }

    let bytesUp = 0;
    let bytesDown = 0;
    let status = 0;
    let address: string | undefined;
    let error: string | undefined;
    let done = false;
    /** The upstream request: made once the target is vetted; it gets a connection from the pool. */
    let upstream: http.ClientRequest | undefined;
    /** Whether `upstream` has its connection (body bytes go out from then on). */
    let connected = false;
    /** The upstream's response ended (its connection can go back to the pool). */
    let responseEnded = false;
    /** A credential seen in the body: the request is refused and the upstream request aborted. */
    let alarm: ReturnType<typeof credentialFound> | undefined;
    const end = () => {
      if (done) return;
      done = true;
      // An exchange that did not end cleanly takes its connection with it: only a request that
      // went out whole and got its whole answer leaves a connection to the pool.
      if (upstream && !(responseEnded && upstream.writableFinished)) upstream.destroy();
      req.resume(); // whatever is left of the body is read and dropped
      // One object literal of a fixed shape (absent fields undefined, which the line leaves out): this runs for every request.
      audit({
        at,
        client: base.client,
        method,
        host: target.host,
        port: target.port,
        decision: alarm ? 'deny' : 'allow',
        rule: decision.rule,
        reason: alarm ? alarm.reason : decision.reason,
        bytes_up: bytesUp,
        bytes_down: bytesDown,
        duration_ms: now() - at,
        status,
        alarm: alarm?.extra.alarm,
        token_fp: alarm?.extra.token_fp,
        address,
        error,
      });
    };
    res.on('close', end);
    const failWith = (code: number, message: string) => {
      if (alarm) return; // the refusal is already under way; this is the aborted upstream
      error ??= message;
      if (!res.headersSent) {
        status = code;
        const text = `egress: ${method} ${where}: ${message}.\n`;
        res.writeHead(code, { 'content-type': TEXT_TYPE, 'content-length': Buffer.byteLength(text), connection: 'close' });
        res.end(text);
      } else {
        res.destroy();
      }
    };

    // ---- the body: checked before it is forwarded --------------------------------------
    // Read from now on (while the name is resolved and the upstream connection found or made), a
    // slice at a time; what passed the check waits in `pending` until the upstream request has
    // its connection, up to PENDING_LIMIT, and then goes out with the client paused whenever the
    // upstream pushes back.
    const scan = secrets.body();
    const input: Buffer[] = [];
    let inputEnded = false;
    let bodyDone = false;
    let pending: Buffer[] = [];
    let pendingBytes = 0;
    let outputBlocked = false;
    let yielding = false;
    const onDrain = () => {
      outputBlocked = false;
      drive();
    };
    const emit = (b: Buffer) => {
      if (b.length === 0) return;
      if (!connected || upstream === undefined) {
        pending.push(b);
        pendingBytes += b.length;
        if (pendingBytes >= PENDING_LIMIT) outputBlocked = true;
        return;
      }
      bytesUp += b.length;
      if (!upstream.write(b) && !outputBlocked) {
        outputBlocked = true;
        upstream.once('drain', onDrain);
      }
    };
    const blockBody = (found: ReturnType<typeof credentialFound>) => {
      alarm = found;
      input.length = 0;
      pending = [];
      // Nothing more reaches the upstream: the request is aborted mid-body (or never sent), and
      // its connection closed with it.
      upstream?.destroy();
      log(found.log);
      if (!res.headersSent) {
        status = 403;
        res.writeHead(403, { 'content-type': TEXT_TYPE, 'content-length': Buffer.byteLength(found.text), connection: 'close' });
        res.end(found.text);
      } else {
        error ??= 'cut off: a credential was found in the request body';
        res.destroy();
      }
      req.resume(); // the rest of the body is read and dropped, so the client sees the answer
    };
    const drive = () => {
      if (alarm || bodyDone || yielding || done) return;
      let budget = secrets.hashing ? SCAN_SLICE : Number.POSITIVE_INFINITY;
      while (input.length > 0 && !outputBlocked) {
        if (budget === 0) {
          // A long body is checked in slices, other connections served in between.
          yielding = true;
          setImmediate(() => {
            yielding = false;
            drive();
          });
          break;
        }
        const head = input[0]!;
        const piece = head.length <= budget ? head : head.subarray(0, budget);
        if (piece === head) input.shift();
        else input[0] = head.subarray(budget);
        budget -= piece.length;
        const r = scan.push(piece);
        if (r.detection) {
          blockBody(credentialFound(r.detection, 'the request body', method, where));
          return;
        }
        emit(r.forward);
      }
      if (input.length > 0 || outputBlocked) {
        req.pause();
        return;
      }
      if (inputEnded) {
        emit(scan.end());
        bodyDone = true;
        if (connected) upstream?.end();
        return;
      }
      req.resume();
    };
    req.on('data', (chunk: Buffer) => {
      if (alarm || done) return;
      input.push(chunk);
      drive();
    });
    req.on('end', () => {
      inputEnded = true;
      drive();
    });

    // ---- the upstream exchange ---------------------------------------------------------
    const headers = endToEndHeaders(req, ['host']);
    headers.host = hostHeader ?? authority;
    const path = (m[2] ?? '/').startsWith('?') ? `/${m[2]}` : (m[2] ?? '/');
    let sentContinue = false;
    let retried = false;
    /**
     * Sends the request on a pooled connection to the vetted target (pool.createConnection dials
     * one of `vetted.addresses` when none is idle). Once: again only when a reused connection
     * turned out to be closed by the upstream before it answered a request without a body.
     */
    const send = (vetted: VettedTarget) => {
      connected = false;
      const options: PooledRequestOptions = {
        agent: pool,
        vetted,
        host: vetted.addresses[0], // an address, never a name: nothing here ever resolves
        port: target.port,
        method,
        path,
        headers,
        setHost: false,
        timeout: idleTimeout,
      };
      const request = http.request(options);
      upstream = request;
      request.on('socket', (socket) => {
        if (upstream !== request || done || alarm) return;
        connected = true;
        address = pool.addressOf(socket) ?? address;
        // What was checked meanwhile goes out first, then the body carries on (or ends).
        const checked = pending;
        pending = [];
        pendingBytes = 0;
        outputBlocked = false;
        for (const b of checked) emit(b);
        if (bodyDone) request.end();
        if (expectsContinue && !sentContinue && !res.headersSent) {
          sentContinue = true;
          res.writeContinue();
        }
        drive();
      });
      request.on('timeout', () => {
        error ??= 'upstream idle timeout';
        failWith(504, 'the upstream did not answer in time');
        request.destroy();
      });
      request.on('error', (err: NodeJS.ErrnoException) => {
        if (upstream !== request) return;
        if (
          !retried &&
          request.reusedSocket &&
          status === 0 &&
          bodyDone &&
          bytesUp === 0 &&
          RETRIABLE_METHODS.has(method) &&
          (err.code === 'ECONNRESET' || err.code === 'EPIPE' || err.code === 'ECONNABORTED') &&
          !done &&
          !alarm
        ) {
          // The upstream closed an idle connection as we reused it: its other idle ones are
          // likely gone too. The request had no body and no answer: sent again, once.
          retried = true;
          pool.dropIdle(UpstreamPool.key(vetted));
          send(vetted);
          return;
        }
        if (err instanceof UpstreamError) failWith(err.status, err.message);
        else failWith(502, `upstream error: ${err.code ?? err.message}`);
      });
      request.on('response', (ures) => {
        if (upstream !== request) return;
        status = ures.statusCode ?? 502;
        const hint = ures.headers['keep-alive'];
        if (hint !== undefined) pool.noteKeepAlive(request.socket, String(hint));
        res.writeHead(status, ures.statusMessage, endToEndHeaders(ures));
        ures.on('data', (chunk: Buffer) => {
          bytesDown += chunk.length;
        });
        ures.on('end', () => {
          responseEnded = true;
        });
        ures.on('error', () => res.destroy());
        ures.pipe(res);
      });
    };

    void (async () => {
      const vetted = await vet(target);
      if (alarm || res.destroyed || done) return;
      if (!vetted.ok) {
        if (vetted.forbidden) {
          // An address refusal is a denial, reported at once like any other.
          done = true;
          res.removeListener('close', end);
          const text = `egress: refused ${method} ${where}: ${vetted.reason}.\n`;
          refuse(403, text, target, vetted.reason, decision.rule);
          return;
        }
        failWith(vetted.status, vetted.reason);
        return;
      }
      send({ host: target.host, port: target.port, addresses: vetted.addresses });
    })().catch((err: Error) => {
      log(`egress: internal error on ${method} ${where}: ${err.stack ?? err.message}`);
      failWith(500, 'internal error');
    });
  };

  server.on('request', (req, res) => onRequest(req, res, false));
  server.on('checkContinue', (req, res) => onRequest(req, res, true));

  server.on('upgrade', (req: http.IncomingMessage, socket: Duplex) => {
    const inHead = secrets.scanHead(req.url ?? '', req.rawHeaders);
    const found = inHead ? credentialFound(inHead, inHead.where, req.method ?? 'GET', 'the request') : undefined;
    const reason = found ? found.reason : 'Upgrade is not proxied as plain HTTP';
    if (found) log(found.log);
    auditUntargeted(socket, req.method ?? null, reason, found ? 403 : 400, found ? found.extra : {});
    if (found) rawResponse(socket, 403, TEXT_TYPE, found.text);
    else rawResponse(socket, 400, TEXT_TYPE, `egress: ${reason}; use CONNECT (wss://, https://).\n`);
  });

  // ---- CONNECT tunnels ---------------------------------------------------------------

  server.on('connect', (req: http.IncomingMessage, socket: Duplex, head: Buffer) => {
    const client = socket as net.Socket;
    client.pause();
    client.on('error', () => undefined); // reported through 'close'
    const at = now();
    const base = { at, client: clientOf(client), method: 'CONNECT' };
    const url = req.url ?? '';
    const refuse = (status: number, text: string, reason: string, target: Target | null, rule: string | null = null, extra: Partial<AuditRecord> = {}) => {
      audit({ ...base, host: target?.host ?? null, port: target?.port ?? null, decision: 'deny', rule, reason, bytes_up: 0, bytes_down: 0, duration_ms: now() - at, status, ...extra });
      rawResponse(client, status, TEXT_TYPE, text);
    };
    const parsed = parseAuthority(url);
    // The canary: the CONNECT request line and headers are read; the tunnel's payload is not (TLS).
    const inHead = secrets.scanHead(url, req.rawHeaders);
    if (inHead) {
      const target = parsed.ok ? shownTarget(parsed.value) : null;
      const found = credentialFound(inHead, inHead.where, 'CONNECT', target ? formatTarget(target) : 'the request');
      log(found.log);
      refuse(403, found.text, found.reason, target, null, found.extra);
      return;
    }
    if (!parsed.ok) {
      refuse(400, `egress: bad CONNECT target "${url}": ${parsed.message}.\n`, `bad target: ${parsed.message}`, null);
      return;
    }
    const target = parsed.value;
    const where = formatTarget(target);
    const decision = policy.decide(target);
    if (!decision.allowed) {
      refuse(403, deniedText('CONNECT', target, decision), decision.reason, target);
      return;
    }
    let clientClosed = false;
    client.once('close', () => {
      clientClosed = true;
    });
    const fail = (status: number, message: string, extra: Partial<AuditRecord> = {}) => {
      audit({
        ...base,
        host: target.host,
        port: target.port,
        decision: 'allow',
        rule: decision.rule,
        reason: decision.reason,
        bytes_up: 0,
        bytes_down: 0,
        duration_ms: now() - at,
        status,
        error: message,
        ...extra,
      });
      rawResponse(client, status, TEXT_TYPE, `egress: CONNECT ${where}: ${message}.\n`);
    };

    void (async () => {
      const vetted = await vet(target);
      if (!vetted.ok) {
        if (vetted.forbidden) refuse(403, `egress: refused CONNECT ${where}: ${vetted.reason}.\n`, vetted.reason, target, decision.rule);
        else fail(vetted.status, vetted.reason);
        return;
      }
      if (clientClosed) {
        fail(499, 'the client went away');
        return;
      }
      let dialled: { socket: net.Socket; address: string };
      try {
        dialled = await dial(vetted.addresses, target.port, connectTimeout);
      } catch (err) {
        const e = err as UpstreamError;
        fail(e.status ?? 502, e.message);
        return;
      }
      const upstream = dialled.socket;
      if (clientClosed) {
        upstream.destroy();
        fail(499, 'the client went away', { address: dialled.address });
        return;
      }
      let error: string | undefined;
      let open = 2;
      const closed = () => {
        open -= 1;
        if (open > 0) return;
        audit({
          ...base,
          host: target.host,
          port: target.port,
          decision: 'allow',
          rule: decision.rule,
          reason: decision.reason,
          bytes_up: upstream.bytesWritten,
          bytes_down: upstream.bytesRead,
          duration_ms: now() - at,
          status: 200,
          address: dialled.address,
          ...(error !== undefined ? { error } : {}),
        });
      };
      upstream.on('close', closed);
      client.on('close', closed);
      upstream.on('error', (err: NodeJS.ErrnoException) => {
        error ??= `upstream: ${err.code ?? err.message}`;
        client.destroy();
      });
      client.on('error', (err: NodeJS.ErrnoException) => {
        error ??= `client: ${err.code ?? err.message}`;
        upstream.destroy();
      });
      // Either side closing fully ends the tunnel; a half-close is passed on by pipe.
      upstream.on('close', () => client.destroy());
      client.on('close', () => upstream.destroy());
      const idle = () => {
        error ??= 'idle timeout';
        client.destroy();
        upstream.destroy();
      };
      client.setTimeout(idleTimeout, idle);
      upstream.setTimeout(idleTimeout, idle);
      client.write('HTTP/1.1 200 Connection Established\r\n\r\n');
      if (head.length > 0) upstream.write(head);
      client.pipe(upstream);
      upstream.pipe(client);
      client.resume();
    })().catch((err: Error) => {
      log(`egress: internal error on CONNECT ${where}: ${err.stack ?? err.message}`);
      client.destroy();
    });
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
