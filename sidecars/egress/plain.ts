import http from 'node:http';
import { connectionNamed, type HeaderMap, isHopByHop, TEXT_TYPE } from '../common/http.js';
import { type AuditRecord, clientOf, type RequestFacts, refusalRecord } from './audit.js';
import { type ProxyContext, shownTarget } from './context.js';
import { type CredentialFinding, credentialFound, deniedText } from './decision.js';
import { type Decision, formatTarget, parseAuthority, type Target } from './policy.js';
import type { BodyScan, Detection, SecretScanner } from './secrets.js';
import { type PooledRequestOptions, UpstreamError, UpstreamPool, type VettedTarget } from './upstream.js';

/**
 * Plain HTTP through the egress proxy: absolute-URI requests (`GET http://host/path`) only, the
 * Host header naming the same host:port, hop-by-hop and Proxy-* headers dropped, bodies
 * streamed both ways on a pooled upstream connection to a vetted address (upstream.ts). The
 * body is checked by the canary before any byte of it is forwarded (CheckedBody).
 */

export interface Health {
  ok: boolean;
  message: string;
}

/** With token hashes, a plain request's body is checked this many bytes at a time, the event loop free in between. */
const SCAN_SLICE = 8 * 1024;
/** Checked body bytes kept while the upstream connection is being made; past this the client is paused. */
const PENDING_LIMIT = 64 * 1024;
/** Idempotent methods (RFC 9110 9.2.2): sent again once when a reused upstream connection was found closed. */
const RETRIABLE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE', 'PUT', 'DELETE']);

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

/** A request the proxy will not forward: its status, the text the client gets, and the audit's reason. */
interface Unforwardable {
  ok: false;
  status: number;
  text: string;
  reason: string;
  /** The target, when it could be read before the request was found wanting. */
  target: Target | null;
}

/** A request the proxy can forward, once the policy allows its target. */
interface Forwardable {
  ok: true;
  target: Target;
  /** The Host header to send: the client's, or the URI's authority for an HTTP/1.0 request without one. */
  host: string;
  /** The origin-form path to send (with its query). */
  path: string;
}

const unforwardable = (status: number, text: string, reason: string, target: Target | null = null): Unforwardable => ({ ok: false, status, text, reason, target });

/**
 * Reads a plain request's target from its absolute URI and checks the head around it. The
 * decision is made on the URI's authority, so a Host header naming anything else is refused
 * (a server routing on Host would otherwise be reached under another name), and so is
 * ambiguous framing (a second lock behind Node's parser against request smuggling).
 */
export function readPlainRequest(req: http.IncomingMessage): Forwardable | Unforwardable {
  const url = req.url ?? '';
  if (url.startsWith('/')) {
    const reason = 'origin-form request to the proxy itself';
    return unforwardable(400, `egress: this is a forward proxy; send absolute-URI requests (GET http://host/path) or CONNECT host:port.\n`, reason);
  }
  const m = /^http:\/\/([^/?#]*)([/?][^#]*)?$/i.exec(url);
  if (!m) {
    const reason = /^https:/i.test(url) ? 'https:// URI in a plain request (use CONNECT)' : 'request target is not an absolute http:// URI';
    return unforwardable(400, `egress: ${reason}.\n`, reason);
  }
  const authority = m[1]!;
  if (authority.includes('@')) return unforwardable(400, 'egress: credentials in the request URI are not forwarded.\n', 'userinfo in the request URI');
  const parsed = parseAuthority(authority, 80);
  if (!parsed.ok) return unforwardable(400, `egress: bad target "${authority}": ${parsed.message}.\n`, `bad target: ${parsed.message}`);
  const target = parsed.value;

  const hostLines = req.rawHeaders.filter((_, i) => i % 2 === 0 && req.rawHeaders[i]!.toLowerCase() === 'host').length;
  const hostHeader = req.headers.host;
  if (hostLines > 1) return unforwardable(400, 'egress: more than one Host header.\n', 'more than one Host header', target);
  if (hostHeader === undefined) {
    if (req.httpVersion !== '1.0') return unforwardable(400, 'egress: the request has no Host header.\n', 'no Host header', target);
  } else {
    const h = parseAuthority(hostHeader, 80);
    if (!h.ok || h.value.host !== target.host || h.value.port !== target.port) {
      const reason = `Host header "${hostHeader}" does not match the target ${formatTarget(target)}`;
      return unforwardable(400, `egress: ${reason}.\n`, reason, target);
    }
  }
  const te = req.headers['transfer-encoding'];
  if (te !== undefined) {
    if (req.headers['content-length'] !== undefined) {
      return unforwardable(400, 'egress: both Content-Length and Transfer-Encoding.\n', 'both Content-Length and Transfer-Encoding', target);
    }
    if (te.trim().toLowerCase() !== 'chunked') return unforwardable(400, `egress: unsupported Transfer-Encoding "${te}".\n`, 'unsupported Transfer-Encoding', target);
  }
  const path = (m[2] ?? '/').startsWith('?') ? `/${m[2]}` : (m[2] ?? '/');
  return { ok: true, target, host: hostHeader ?? authority, path };
}

/** Answers a plain request: the canary on its head, /healthz, the checks of readPlainRequest, the allowlist, then the exchange. */
export function handlePlainRequest(ctx: ProxyContext, health: (() => Health) | undefined, req: http.IncomingMessage, res: http.ServerResponse, expectsContinue: boolean): void {
  const method = req.method ?? 'GET';
  const url = req.url ?? '';
  const facts: RequestFacts = { at: ctx.now(), client: clientOf(req.socket), method };
  const secrets = ctx.secrets();
  const refuse = (status: number, text: string, target: Target | null, reason: string, rule: string | null = null, extra: Partial<AuditRecord> = {}) => {
    ctx.audit(refusalRecord(facts, ctx.now() - facts.at, status, reason, target, rule, extra));
    res.writeHead(status, { 'content-type': TEXT_TYPE, 'content-length': Buffer.byteLength(text), connection: 'close' });
    res.end(text);
  };

  // The canary, before anything else: a credential in the target or a header goes nowhere
  // (not even to the resolver, as a name under a wildcard entry would).
  const inHead = secrets.scanHead(url, req.rawHeaders);
  if (inHead) {
    const m = /^http:\/\/([^/?#@]*)(?:[/?#]|$)/i.exec(url);
    const parsedTarget = m ? parseAuthority(m[1]!, 80) : undefined;
    const target = parsedTarget?.ok ? shownTarget(secrets, parsedTarget.value) : null;
    const found = credentialFound(inHead, inHead.where, method, target ? formatTarget(target) : 'the request');
    ctx.log(found.log);
    refuse(403, found.text, target, found.reason, null, found.extra);
    return;
  }
  if (url === '/healthz' && (method === 'GET' || method === 'HEAD') && health) {
    const h = health();
    const text = `${h.message}\n`;
    res.writeHead(h.ok ? 200 : 503, { 'content-type': TEXT_TYPE, 'content-length': Buffer.byteLength(text) });
    res.end(method === 'HEAD' ? undefined : text);
    return;
  }
  const read = readPlainRequest(req);
  if (!read.ok) {
    refuse(read.status, read.text, read.target, read.reason);
    return;
  }
  const decision = ctx.policy().decide(read.target);
  if (!decision.allowed) {
    refuse(403, deniedText(ctx.bottle, method, read.target, decision), read.target, decision.reason);
    return;
  }
  new PlainExchange(ctx, secrets, req, res, facts, read, decision, expectsContinue, refuse).start();
}

/**
 * A request body checked by the canary before it is forwarded. Read from the start (while the
 * name is resolved and the upstream connection found or made), a slice at a time; what passed
 * the check waits until the upstream request has its connection (`attach`), up to
 * PENDING_LIMIT, and then goes out with the client paused whenever the upstream pushes back.
 * The end of each chunk that could be the start of a credential is held back by the scan until
 * the next chunk shows it is not, so the upstream never receives a byte of a credential.
 */
class CheckedBody {
  /** Body bytes written to the upstream. */
  bytesUp = 0;
  /** The whole body was checked and handed on (or is waiting in `pending`). */
  done = false;
  readonly #req: http.IncomingMessage;
  readonly #scan: BodyScan;
  readonly #slice: number;
  readonly #onCredential: (detection: Detection) => void;
  /** The upstream request once it has its connection; until then checked bytes wait in `pending`. */
  #sink: http.ClientRequest | undefined;
  #input: Buffer[] = [];
  #inputEnded = false;
  #pending: Buffer[] = [];
  #pendingBytes = 0;
  #outputBlocked = false;
  #yielding = false;
  /** The exchange is over (ended, or refused for a credential): nothing more is read or sent. */
  #stopped = false;

  constructor(req: http.IncomingMessage, secrets: SecretScanner, onCredential: (detection: Detection) => void) {
    this.#req = req;
    this.#scan = secrets.body();
    this.#slice = secrets.hashing ? SCAN_SLICE : Number.POSITIVE_INFINITY;
    this.#onCredential = onCredential;
    req.on('data', (chunk: Buffer) => {
      if (this.#stopped) return;
      this.#input.push(chunk);
      this.drive();
    });
    req.on('end', () => {
      this.#inputEnded = true;
      this.drive();
    });
  }

  /** The upstream request has its connection: what was checked meanwhile goes out first, then the body carries on (or ends). */
  attach(sink: http.ClientRequest): void {
    this.#sink = sink;
    const checked = this.#pending;
    this.#pending = [];
    this.#pendingBytes = 0;
    this.#outputBlocked = false;
    for (const b of checked) this.#emit(b);
    if (this.done) sink.end();
  }

  /** A new upstream request is being made (the retry): checked bytes wait for it. */
  detach(): void {
    this.#sink = undefined;
  }

  /** Nothing more is read or forwarded; what is buffered is dropped. */
  stop(): void {
    this.#stopped = true;
    this.#input.length = 0;
    this.#pending = [];
  }

  drive(): void {
    if (this.#stopped || this.done || this.#yielding) return;
    let budget = this.#slice;
    while (this.#input.length > 0 && !this.#outputBlocked) {
      if (budget === 0) {
        // A long body is checked in slices, other connections served in between.
        this.#yielding = true;
        setImmediate(() => {
          this.#yielding = false;
          this.drive();
        });
        break;
      }
      const head = this.#input[0]!;
      const piece = head.length <= budget ? head : head.subarray(0, budget);
      if (piece === head) this.#input.shift();
      else this.#input[0] = head.subarray(budget);
      budget -= piece.length;
      const r = this.#scan.push(piece);
      if (r.detection) {
        this.#onCredential(r.detection);
        return;
      }
      this.#emit(r.forward);
    }
    if (this.#input.length > 0 || this.#outputBlocked) {
      this.#req.pause();
      return;
    }
    if (this.#inputEnded) {
      this.#emit(this.#scan.end());
      this.done = true;
      this.#sink?.end();
      return;
    }
    this.#req.resume();
  }

  #onDrain = () => {
    this.#outputBlocked = false;
    this.drive();
  };

  #emit(b: Buffer): void {
    if (b.length === 0) return;
    const sink = this.#sink;
    if (sink === undefined) {
      this.#pending.push(b);
      this.#pendingBytes += b.length;
      if (this.#pendingBytes >= PENDING_LIMIT) this.#outputBlocked = true;
      return;
    }
    this.bytesUp += b.length;
    if (!sink.write(b) && !this.#outputBlocked) {
      this.#outputBlocked = true;
      sink.once('drain', this.#onDrain);
    }
  }
}

type Refuse = (status: number, text: string, target: Target | null, reason: string, rule?: string | null, extra?: Partial<AuditRecord>) => void;

/**
 * One allowed plain request and its upstream exchange, from vetting the target's addresses to
 * the audit record written when the client's response closes. Exactly one record: `end`.
 */
class PlainExchange {
  readonly #where: string;
  readonly #method: string;
  readonly #headers: HeaderMap;
  readonly #body: CheckedBody;
  #status = 0;
  #bytesDown = 0;
  #address: string | undefined;
  #error: string | undefined;
  /** The exchange is over and audited. */
  #done = false;
  /** The upstream request: made once the target is vetted; it gets a connection from the pool. */
  #upstream: http.ClientRequest | undefined;
  /** The upstream's response ended (its connection can go back to the pool). */
  #responseEnded = false;
  /** A credential seen in the body: the request is refused and the upstream request aborted. */
  #alarm: CredentialFinding | undefined;
  #sentContinue = false;
  #retried = false;

  constructor(
    private readonly ctx: ProxyContext,
    secrets: SecretScanner,
    private readonly req: http.IncomingMessage,
    private readonly res: http.ServerResponse,
    private readonly facts: RequestFacts,
    private readonly read: Forwardable,
    private readonly decision: Extract<Decision, { allowed: true }>,
    private readonly expectsContinue: boolean,
    private readonly refuse: Refuse,
  ) {
    this.#method = facts.method ?? 'GET';
    this.#where = formatTarget(read.target);
    this.#headers = endToEndHeaders(req, ['host']);
    this.#headers.host = read.host;
    res.on('close', this.#end);
    this.#body = new CheckedBody(req, secrets, (d) => this.#blockBody(credentialFound(d, 'the request body', this.#method, this.#where)));
  }

  start(): void {
    this.#vetAndSend().catch((err: Error) => {
      this.ctx.log(`egress: internal error on ${this.#method} ${this.#where}: ${err.stack ?? err.message}`);
      this.#failWith(500, 'internal error');
    });
  }

  async #vetAndSend(): Promise<void> {
    const { target } = this.read;
    const vetted = await this.ctx.vet(target);
    if (this.#alarm || this.res.destroyed || this.#done) return;
    if (!vetted.ok) {
      if (vetted.forbidden) {
        // An address refusal is a denial, reported at once like any other.
        this.#done = true;
        this.res.removeListener('close', this.#end);
        this.refuse(403, `egress: refused ${this.#method} ${this.#where}: ${vetted.reason}.\n`, target, vetted.reason, this.decision.rule, vetted.addressClass ? { address_class: vetted.addressClass } : {});
        return;
      }
      this.#failWith(vetted.status, vetted.reason);
      return;
    }
    this.#send({ host: target.host, port: target.port, addresses: vetted.addresses });
  }

  /**
   * Sends the request on a pooled connection to the vetted target (pool.createConnection dials
   * one of `vetted.addresses` when none is idle). Once: again only when a reused connection
   * turned out to be closed by the upstream before it answered a request without a body.
   */
  #send(vetted: VettedTarget): void {
    const { pool, idleTimeoutMs } = this.ctx;
    this.#body.detach();
    const options: PooledRequestOptions = {
      agent: pool,
      vetted,
      host: vetted.addresses[0], // an address, never a name: nothing here ever resolves
      port: this.read.target.port,
      method: this.#method,
      path: this.read.path,
      headers: this.#headers,
      setHost: false,
      timeout: idleTimeoutMs,
    };
    const request = http.request(options);
    this.#upstream = request;
    request.on('socket', (socket) => {
      if (this.#upstream !== request || this.#done || this.#alarm) return;
      this.#address = pool.addressOf(socket) ?? this.#address;
      this.#body.attach(request);
      if (this.expectsContinue && !this.#sentContinue && !this.res.headersSent) {
        this.#sentContinue = true;
        this.res.writeContinue();
      }
      this.#body.drive();
    });
    request.on('timeout', () => {
      this.#error ??= 'upstream idle timeout';
      this.#failWith(504, 'the upstream did not answer in time');
      request.destroy();
    });
    request.on('error', (err: NodeJS.ErrnoException) => {
      if (this.#upstream !== request) return;
      if (
        !this.#retried &&
        request.reusedSocket &&
        this.#status === 0 &&
        this.#body.done &&
        this.#body.bytesUp === 0 &&
        RETRIABLE_METHODS.has(this.#method) &&
        (err.code === 'ECONNRESET' || err.code === 'EPIPE' || err.code === 'ECONNABORTED') &&
        !this.#done &&
        !this.#alarm
      ) {
        // The upstream closed an idle connection as we reused it: its other idle ones are
        // likely gone too. The request had no body and no answer: sent again, once.
        this.#retried = true;
        pool.dropIdle(UpstreamPool.key(vetted));
        this.#send(vetted);
        return;
      }
      if (err instanceof UpstreamError) this.#failWith(err.status, err.message);
      else this.#failWith(502, `upstream error: ${err.code ?? err.message}`);
    });
    request.on('response', (ures) => {
      if (this.#upstream !== request) return;
      this.#status = ures.statusCode ?? 502;
      const hint = ures.headers['keep-alive'];
      if (hint !== undefined) pool.noteKeepAlive(request.socket, String(hint));
      this.res.writeHead(this.#status, ures.statusMessage, endToEndHeaders(ures));
      ures.on('data', (chunk: Buffer) => {
        this.#bytesDown += chunk.length;
      });
      ures.on('end', () => {
        this.#responseEnded = true;
      });
      ures.on('error', () => this.res.destroy());
      ures.pipe(this.res);
    });
  }

  #failWith(code: number, message: string): void {
    if (this.#alarm) return; // the refusal is already under way; this is the aborted upstream
    this.#error ??= message;
    if (!this.res.headersSent) {
      this.#status = code;
      const text = `egress: ${this.#method} ${this.#where}: ${message}.\n`;
      this.res.writeHead(code, { 'content-type': TEXT_TYPE, 'content-length': Buffer.byteLength(text), connection: 'close' });
      this.res.end(text);
    } else {
      this.res.destroy();
    }
  }

  #blockBody(found: CredentialFinding): void {
    this.#alarm = found;
    this.#body.stop();
    // Nothing more reaches the upstream: the request is aborted mid-body (or never sent), and
    // its connection closed with it.
    this.#upstream?.destroy();
    this.ctx.log(found.log);
    if (!this.res.headersSent) {
      this.#status = 403;
      this.res.writeHead(403, { 'content-type': TEXT_TYPE, 'content-length': Buffer.byteLength(found.text), connection: 'close' });
      this.res.end(found.text);
    } else {
      this.#error ??= 'cut off: a credential was found in the request body';
      this.res.destroy();
    }
    this.req.resume(); // the rest of the body is read and dropped, so the client sees the answer
  }

  readonly #end = (): void => {
    if (this.#done) return;
    this.#done = true;
    this.#body.stop();
    const upstream = this.#upstream;
    // An exchange that did not end cleanly takes its connection with it: only a request that
    // went out whole and got its whole answer leaves a connection to the pool.
    if (upstream && !(this.#responseEnded && upstream.writableFinished)) upstream.destroy();
    this.req.resume(); // whatever is left of the body is read and dropped
    const alarm = this.#alarm;
    const { target } = this.read;
    // One object literal of a fixed shape (absent fields undefined, which the line leaves out): this runs for every request.
    this.ctx.audit({
      at: this.facts.at,
      client: this.facts.client,
      method: this.#method,
      host: target.host,
      port: target.port,
      decision: alarm ? 'deny' : 'allow',
      rule: this.decision.rule,
      reason: alarm ? alarm.reason : this.decision.reason,
      bytes_up: this.#body.bytesUp,
      bytes_down: this.#bytesDown,
      duration_ms: this.ctx.now() - this.facts.at,
      status: this.#status,
      alarm: alarm?.extra.alarm,
      token_fp: alarm?.extra.token_fp,
      address: this.#address,
      error: this.#error,
    });
  };
}
