/**
 * The supervise API, where the agent asks for more and a human decides (on the host):
 *
 *   GET  /healthz        200 {"ok":true} once current.json has been read, else 503
 *   GET  /current        the bottle's current Dockerfile, allowlist and routes (current.json)
 *   POST /proposals      a proposal (see proposal.ts) → 201 {"id","status":"pending"}, 400 with
 *                        {"error","issues":[{"path","message"}]}, 429 past a bound (pending proposals,
 *                        proposals a minute, proposals in all) with {"error","limit",...} saying what to do
 *   GET  /proposals      every proposal as [{"id","kind","status","reason"?,"error"?}]
 *   GET  /proposals/ID   one of them; status from decisions.json, else "pending"; 404 if unknown
 *
 * The host learns of proposals only through `emit` (main.ts writes each line to stdout) and
 * answers only through decisions.json. Nothing the agent sends is written anywhere but its
 * accepted proposal (a rejected body is never logged).
 */
import http from 'node:http';
import type { Duplex } from 'node:stream';
import { type CurrentState, type Decision, type Decisions, parseCurrent, parseDecisions, WatchedJsonFile } from './host-files.js';
import { LIMITS, type ProposalChange, type ProposalIssue, type ProposalKind, parseProposalBody } from './proposal.js';
import { PROPOSAL_ID, ProposalStore, type StoredProposal } from './store.js';

const KNOWN_METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'CONNECT', 'TRACE']);

/** A line for the host (one JSON document per line on stdout). */
export type SuperviseLine =
  | { source: 'supervise'; type: 'proposal'; at: string; proposal: { id: string; kind: ProposalKind; reason: string; change: ProposalChange } }
  | { source: 'supervise'; type: 'rejected'; at: string; status: number; error: string }
  /**
   * A request for something supervise does not do (write or approve through another method or
   * endpoint): kept in the audit, so the human sees that it was tried. `endpoint` is the route it
   * matched (`/proposals/ID`), never the path the agent wrote; an unknown method is `other`.
   */
  | { source: 'supervise'; type: 'refused'; at: string; status: 404 | 405; method: string; endpoint: string };

/** The line as written: single-line JSON (newlines inside values are escaped) and a newline. */
export function lineText(line: SuperviseLine): string {
  return `${JSON.stringify(line)}\n`;
}

export type ProposalStatus = 'pending' | Decision['status'];

/** What GET /proposals/ID answers. `reason` and `error` are the decision's, not the agent's. */
export interface ProposalView {
  id: string;
  kind: ProposalKind;
  status: ProposalStatus;
  reason?: string;
  error?: string;
}

export interface SuperviseServerOptions {
  /** The folder the host puts current.json and decisions.json into; proposals go to <dir>/proposals. */
  dir: string;
  /** Receives one line per accepted and per rejected proposal. */
  emit: (line: SuperviseLine) => void;
  /** Diagnostics for a human (stderr). */
  log?: (message: string) => void;
  /** Accepted proposals per lifetime (default MAX_PROPOSALS). */
  limit?: number;
  /** Proposals not yet decided (default 100): one more is refused with 429. */
  pendingLimit?: number;
  /** Proposals accepted in any 60 seconds (default 30): one more is refused with 429. */
  perMinute?: number;
  /** Request bodies larger than this are refused with 400 (default 256 KiB + 64 KiB for JSON escapes). */
  maxBodyBytes?: number;
  headersTimeoutMs?: number;
  requestTimeoutMs?: number;
  now?: () => Date;
}

export interface SuperviseServer extends http.Server {
  readonly store: ProposalStore;
  readonly current: WatchedJsonFile<CurrentState>;
  readonly decisions: WatchedJsonFile<Decisions>;
}

export const DEFAULT_MAX_BODY_BYTES = LIMITS.dockerfileBytes + 64 * 1024;
/** The defaults of machines/limits.ts (PROPOSALS_PENDING, PROPOSALS_PER_MINUTE); the engine passes the bottle's own. */
export const DEFAULT_PENDING_LIMIT = 100;
export const DEFAULT_PER_MINUTE = 30;
/** A body over the limit by at most this much is read to its end (and dropped) before the 400 is sent; a larger one gets the 400 at once and its connection is cut. */
const DRAIN_BYTES = 1024 * 1024;

const JSON_TYPE = 'application/json; charset=utf-8';

export function createSuperviseServer(opts: SuperviseServerOptions): SuperviseServer {
  const log = opts.log ?? (() => undefined);
  const now = opts.now ?? (() => new Date());
  const maxBody = opts.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
  const headersTimeout = opts.headersTimeoutMs ?? 10_000;
  const requestTimeout = Math.max(opts.requestTimeoutMs ?? 10_000, headersTimeout);

  const current: WatchedJsonFile<CurrentState> = new WatchedJsonFile(`${opts.dir}/current.json`, parseCurrent, {
    onLoad: (c) =>
      log(`supervise: current.json loaded (dockerfile: ${c.dockerfile === null ? 'none' : `${c.dockerfile.length} characters`}, ${c.allowlist.length} allowlist entries, ${c.routes.length} route(s))`),
    onError: (m) => log(`supervise: current.json ${m}; ${current.last() === undefined ? 'nothing to serve yet' : 'keeping the last good one'}`),
  });
  const decisions = new WatchedJsonFile(`${opts.dir}/decisions.json`, parseDecisions, {
    onLoad: (d) => log(`supervise: decisions.json loaded (${d.byId.size} decision(s)${d.skipped > 0 ? `, ${d.skipped} entry(ies) not understood and left out` : ''})`),
    onError: (m) => {
      // Missing is the normal state until the human decides something.
      if (m !== 'does not exist') log(`supervise: decisions.json ${m}; keeping the last good one`);
    },
  });
  const store = new ProposalStore({ dir: `${opts.dir}/proposals`, ...(opts.limit !== undefined ? { limit: opts.limit } : {}), log, now });
  const pendingLimit = opts.pendingLimit ?? DEFAULT_PENDING_LIMIT;
  const perMinute = opts.perMinute ?? DEFAULT_PER_MINUTE;
  /** When the proposals of the last minute were accepted (ms), oldest first. */
  const recent: number[] = [];
  const pendingCount = () => store.list().filter((p) => decisions.value()?.byId.get(p.id) === undefined).length;

  const view = (p: StoredProposal): ProposalView => {
    const d = decisions.value()?.byId.get(p.id);
    if (d === undefined) return { id: p.id, kind: p.kind, status: 'pending' };
    return { id: p.id, kind: p.kind, status: d.status, ...(d.reason !== undefined ? { reason: d.reason } : {}), ...(d.error !== undefined ? { error: d.error } : {}) };
  };

  const reject = (res: http.ServerResponse, status: number, error: string, issues?: ProposalIssue[], summary = error, extra: Record<string, unknown> = {}, headers: Record<string, string> = {}) => {
    opts.emit({ source: 'supervise', type: 'rejected', at: now().toISOString(), status, error: summary });
    send(res, status, { error, ...(issues === undefined ? {} : { issues }), ...extra }, headers);
  };

  /** The bounds an agent meets before the lifetime cap: pending proposals, then the rate. A refusal says why and what to do. */
  const overBound = (): { error: string; extra: Record<string, unknown>; headers: Record<string, string> } | undefined => {
    const pending = pendingCount();
    if (pending >= pendingLimit) {
      return {
        error: `too many pending proposals: ${pending} wait for the human (this bottle holds at most ${pendingLimit}); wait until some are decided (GET /proposals shows their status), then propose again`,
        extra: { limit: 'pending', pending, max_pending: pendingLimit },
        headers: {},
      };
    }
    const t = now().getTime();
    while (recent.length > 0 && recent[0]! <= t - 60_000) recent.shift();
    if (recent.length >= perMinute) {
      const retry = Math.max(1, Math.ceil((recent[0]! + 60_000 - t) / 1000));
      return {
        error: `too many proposals: at most ${perMinute} a minute; try again in ${retry} s, and put related changes into one proposal`,
        extra: { limit: 'rate', per_minute: perMinute, retry_after_s: retry },
        headers: { 'retry-after': String(retry) },
      };
    }
    return undefined;
  };

  async function propose(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const body = await readBody(req, maxBody);
    if (body.kind === 'gone') return;
    if (body.kind === 'too-large') {
      if (body.cut) {
        // The rest is not read: the connection ends with the answer.
        res.shouldKeepAlive = false;
        res.once('finish', () => req.socket.destroy());
      }
      const message = `the body is larger than ${maxBody} bytes (a Dockerfile may be at most ${LIMITS.dockerfileBytes} bytes)`;
      reject(res, 400, 'the body is too large', [{ path: '(root)', message }]);
      return;
    }
    const result = parseProposalBody(body.text);
    if (!result.ok) {
      // The line for the host says what kind of problem, never anything the agent wrote (not even a key name).
      const n = result.issues.length;
      reject(res, 400, result.error, result.issues, `${result.error} (${n} problem${n === 1 ? '' : 's'})`);
      return;
    }
    const over = overBound();
    if (over !== undefined) {
      reject(res, 429, over.error, undefined, `${over.error.split(':')[0]} (${String(over.extra.limit)})`, over.extra, over.headers);
      return;
    }
    const stored = store.add(result.proposal);
    if (stored !== undefined) recent.push(now().getTime());
    if (stored === undefined) {
      reject(res, 429, `too many proposals: this bottle accepts at most ${store.limit}; ask the human directly`);
      return;
    }
    const { id, kind, reason, change } = stored;
    opts.emit({ source: 'supervise', type: 'proposal', at: stored.at, proposal: { id, kind, reason, change } });
    log(`supervise: proposal ${id} (${kind}) queued for the human${store.persistent ? '' : ' (memory only)'}`);
    send(res, 201, { id, status: 'pending' });
  }

  function route(req: http.IncomingMessage, res: http.ServerResponse): void | Promise<void> {
    let path: string;
    try {
      path = new URL(req.url ?? '/', 'http://supervise').pathname;
    } catch {
      send(res, 400, { error: 'the request target is not a valid path' });
      return;
    }
    const method = req.method ?? 'GET';
    const refused = (status: 404 | 405, endpoint: string) =>
      opts.emit({ source: 'supervise', type: 'refused', at: now().toISOString(), status, method: KNOWN_METHODS.has(method) ? method : 'other', endpoint });
    const only = (allowed: string[], endpoint = path) => {
      if (allowed.includes(method) || (method === 'HEAD' && allowed.includes('GET'))) return true;
      refused(405, endpoint);
      send(res, 405, { error: `method ${method} not allowed on ${path} (allowed: ${allowed.join(', ')})` }, { allow: allowed.join(', ') });
      return false;
    };
    if (path === '/healthz') {
      if (!only(['GET'])) return;
      const state = current.value();
      if (state !== undefined) send(res, 200, { ok: true });
      else send(res, 503, { ok: false, error: `waiting for the host's current.json (${current.error() ?? 'not read yet'})` });
      return;
    }
    if (path === '/current') {
      if (!only(['GET'])) return;
      const state = current.value();
      if (state !== undefined) send(res, 200, state);
      else send(res, 503, { error: "the bottle's current configuration is not known yet; try again shortly" });
      return;
    }
    if (path === '/proposals') {
      if (!only(['GET', 'POST'])) return;
      if (method === 'POST') return propose(req, res);
      send(res, 200, store.list().map(view));
      return;
    }
    const one = /^\/proposals\/([^/]+)$/.exec(path);
    if (one) {
      if (!only(['GET'], '/proposals/ID')) return;
      const id = one[1]!;
      const p = PROPOSAL_ID.test(id) ? store.get(id) : undefined;
      if (p === undefined) send(res, 404, { error: `no proposal with id ${JSON.stringify(id.slice(0, 40))}` });
      else send(res, 200, view(p));
      return;
    }
    refused(404, 'unknown');
    send(res, 404, { error: `not found: ${path.slice(0, 200)} (endpoints: GET /healthz, GET /current, GET and POST /proposals, GET /proposals/ID)` });
  }

  const onRequest = (req: http.IncomingMessage, res: http.ServerResponse) => {
    Promise.resolve()
      .then(() => route(req, res))
      .catch((err: Error) => {
        log(`supervise: internal error on ${req.method} ${req.url}: ${err.stack ?? err.message}`);
        if (!res.headersSent) send(res, 500, { error: 'internal error in the supervise sidecar' });
        else res.destroy();
      });
  };

  const server = http.createServer({
    maxHeaderSize: 16 * 1024,
    headersTimeout,
    requestTimeout,
    // How often Node checks the two timeouts above; its default (30 s) would make them coarse.
    connectionsCheckingInterval: Math.max(10, Math.min(1000, Math.floor(headersTimeout / 4))),
  }) as SuperviseServer;
  server.on('request', onRequest);
  // A body announced as too large is refused before the client sends it.
  server.on('checkContinue', (req: http.IncomingMessage, res: http.ServerResponse) => {
    if (!announcedTooLarge(req, maxBody)) res.writeContinue();
    onRequest(req, res);
  });
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => {
    // A response already under way on this socket must not be interleaved with ours (a request
    // whose body is too slow has a response object, but nothing of it was sent).
    const inFlight = (socket as Duplex & { _httpMessage?: { headersSent?: boolean } })._httpMessage;
    if (err.code === 'ECONNRESET' || !socket.writable || inFlight?.headersSent) {
      socket.destroy();
      return;
    }
    const status = err.code === 'HPE_HEADER_OVERFLOW' ? 431 : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : 400;
    const error = status === 431 ? 'request headers too large' : status === 408 ? 'the client was too slow to send its request' : 'malformed HTTP request';
    const body = JSON.stringify({ error });
    socket.end(`HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\nContent-Type: ${JSON_TYPE}\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
    socket.once('finish', () => socket.destroy());
    setTimeout(() => socket.destroy(), 2000).unref();
  });
  server.maxConnections = 256;

  Object.defineProperties(server, {
    store: { value: store, enumerable: true },
    current: { value: current, enumerable: true },
    decisions: { value: decisions, enumerable: true },
  });
  // Read what the host has already put there, so the first log lines say so.
  current.refresh();
  decisions.refresh();
  return server;
}

function send(res: http.ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = `${JSON.stringify(body)}\n`;
  res.writeHead(status, {
    'content-type': JSON_TYPE,
    'content-length': Buffer.byteLength(text),
    'cache-control': 'no-store',
    'x-content-type-options': 'nosniff',
    ...headers,
  });
  res.end(res.req?.method === 'HEAD' ? undefined : text);
}

function announcedTooLarge(req: http.IncomingMessage, max: number): boolean {
  const length = req.headers['content-length'];
  return length !== undefined && /^\d+$/.test(length) && Number(length) > max;
}

type Body = { kind: 'ok'; text: string } | { kind: 'too-large'; cut: boolean } | { kind: 'gone' };

/**
 * Reads the body, keeping at most `max` bytes. Past that nothing more is kept, and the rest is
 * read and dropped so that a client that writes its whole body before reading sees the answer
 * (closing with unread data would reset the connection under it); a body more than DRAIN_BYTES
 * over the limit (announced or sent) is answered at once and its connection cut (`cut`).
 */
function readBody(req: http.IncomingMessage, max: number): Promise<Body> {
  return new Promise((resolve) => {
    let settled = false;
    const settle = (b: Body) => {
      if (!settled) {
        settled = true;
        resolve(b);
      }
    };
    // A client waiting for 100 Continue has not sent its body and never gets the go-ahead.
    const waiting = /^100-continue$/i.test(req.headers.expect ?? '');
    const length = req.headers['content-length'];
    if (length !== undefined && /^\d+$/.test(length) && Number(length) > (waiting ? max : max + DRAIN_BYTES)) {
      settle({ kind: 'too-large', cut: true });
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > max + DRAIN_BYTES) settle({ kind: 'too-large', cut: true });
      else if (size > max) chunks.length = 0;
      else chunks.push(chunk);
    });
    req.on('end', () => settle(size > max ? { kind: 'too-large', cut: false } : { kind: 'ok', text: Buffer.concat(chunks).toString('utf8') }));
    req.on('error', () => settle({ kind: 'gone' }));
    req.on('close', () => settle({ kind: 'gone' }));
  });
}
