/**
 * Loopback-only fixtures for the cred-proxy tests: a test PKI made with openssl at test time,
 * fake upstreams (HTTPS "model APIs" and plain HTTP servers) on 127.0.0.1 that record what
 * they receive, and the proxy itself on 127.0.0.1. Nothing here sends a packet off the machine.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach } from 'vitest';
import type { AuditRecord } from '../../../../sidecars/cred-proxy/audit.js';
import { type CredProxyOptions, createCredProxy } from '../../../../sidecars/cred-proxy/proxy.js';
import { createAddressPolicy } from '../../../../sidecars/common/address-policy.js';

/** The production address policy, except that the test's own upstreams on 127.0.0.1 may be dialled. */
const production = createAddressPolicy();
export const loopbackUpstreamsOnly = { ...production, check: (a: string) => (a === '127.0.0.1' ? undefined : production.check(a)) };
import { RoutesReloader, type RoutesReloaderOptions } from '../../../../sidecars/cred-proxy/reload.js';
import { parseRoutes, type Route } from '../../../../sidecars/cred-proxy/routes.js';
import { TokenStore } from '../../../../sidecars/cred-proxy/tokens.js';

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

export function tempDir(prefix = 'bottle-cred-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

// ---- test PKI ------------------------------------------------------------------------

export interface Pki {
  /** The CA that signed `cert` (give it to a route as ca_file). */
  caFile: string;
  key: string;
  cert: string;
  /** A server certificate from another CA, which the routes do not trust. */
  rogueKey: string;
  rogueCert: string;
  dir: string;
}

const openssl = (cwd: string, args: string[]) => execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });

function makeCa(dir: string, name: string): void {
  const key = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', `${name}.key`];
  const ext = ['-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'];
  openssl(dir, ['req', '-x509', ...key, '-out', `${name}.pem`, '-days', '2', '-subj', `/CN=bot-bottle test ${name}`, ...ext]);
}

function makeLeaf(dir: string, ca: string, name: string): void {
  writeFileSync(
    join(dir, `${name}.ext`),
    'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:model.test\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n',
  );
  openssl(dir, ['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', '/CN=model.test']);
  openssl(dir, ['x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.pem`, '-CAkey', `${ca}.key`, '-CAcreateserial', '-out', `${name}.pem`, '-days', '2', '-extfile', `${name}.ext`]);
}

/** A CA and a server certificate for 127.0.0.1 signed by it, plus a rogue one signed by another CA. Remove `dir` when done. */
export function makePki(): Pki {
  const dir = mkdtempSync(join(tmpdir(), 'bottle-cred-pki-'));
  makeCa(dir, 'ca');
  makeLeaf(dir, 'ca', 'server');
  makeCa(dir, 'rogue-ca');
  makeLeaf(dir, 'rogue-ca', 'rogue');
  const read = (f: string) => readFileSync(join(dir, f), 'utf8');
  return { caFile: join(dir, 'ca.pem'), key: read('server.key'), cert: read('server.pem'), rogueKey: read('rogue.key'), rogueCert: read('rogue.pem'), dir };
}

// ---- fake upstreams --------------------------------------------------------------------

export interface SeenRequest {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  rawHeaders: string[];
  body: string;
}

export type Handler = (req: http.IncomingMessage, res: http.ServerResponse, body: string) => void;

function track(server: net.Server, counter?: { connections: number }): Promise<number> {
  const sockets = new Set<net.Socket>();
  server.on('connection', (s: net.Socket) => {
    if (counter) counter.connections += 1;
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  cleanups.push(
    () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  );
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve((server.address() as net.AddressInfo).port));
  });
}

/** An upstream on 127.0.0.1 (HTTPS with `tls`, plain HTTP without) that records every request. */
export async function startUpstream(opts: { tls?: { key: string; cert: string }; handler?: Handler } = {}) {
  const requests: SeenRequest[] = [];
  const onRequest = (req: http.IncomingMessage, res: http.ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString();
      requests.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, rawHeaders: req.rawHeaders, body });
      if (opts.handler) opts.handler(req, res, body);
      else {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ ok: true, method: req.method, url: req.url }));
      }
    });
  };
  const server = opts.tls ? https.createServer({ key: opts.tls.key, cert: opts.tls.cert }, onRequest) : http.createServer(onRequest);
  const counter = { connections: 0 };
  const port = await track(server, counter);
  const origin = `${opts.tls ? 'https' : 'http'}://127.0.0.1:${port}`;
  return {
    port,
    origin,
    requests,
    /** TCP connections accepted so far. */
    get connections() {
      return counter.connections;
    },
  };
}

// ---- the proxy -------------------------------------------------------------------------

export interface RouteSpec {
  path: string;
  upstream: string;
  inject: { header: string; format: string };
  roles?: string[];
  token: string;
  ca_file?: string;
}

/** Writes token files and a routes file into `dir`; returns the routes file path and each route's token file. */
export function writeConfig(dir: string, specs: RouteSpec[]): { routesFile: string; tokenFiles: string[] } {
  mkdirSync(join(dir, 'secrets'), { recursive: true });
  const tokenFiles = specs.map((s, i) => {
    const f = join(dir, 'secrets', String(i));
    writeFileSync(f, `${s.token}\n`, { mode: 0o600 });
    return f;
  });
  const routes = specs.map((s, i) => ({
    path: s.path,
    upstream: s.upstream,
    inject: s.inject,
    roles: s.roles ?? [],
    token_file: tokenFiles[i],
    ...(s.ca_file ? { ca_file: s.ca_file } : {}),
  }));
  const routesFile = join(dir, 'routes.json');
  writeFileSync(routesFile, `${JSON.stringify({ routes }, null, 2)}\n`);
  return { routesFile, tokenFiles };
}

/** Replaces a file the atomic way: a new file renamed into place. */
export function replaceFile(file: string, content: string): void {
  writeFileSync(`${file}.new`, content, { mode: 0o600 });
  renameSync(`${file}.new`, file);
}

/** What the proxy's routes file watcher reported: `reloaded /a,/b` or `rejected <error>`. */
export type RoutesEvent = { decision: 'reloaded'; routes: string[] } | { decision: 'rejected'; error: string };

export async function startProxy(
  specs: RouteSpec[],
  opts: Partial<CredProxyOptions> & {
    pollMs?: number;
    /** Watch the routes file as main.ts does (options of the watcher; pollMs defaults to the token store's). */
    watchRoutes?: Pick<RoutesReloaderOptions, 'watch' | 'pollMs' | 'settleMs'>;
  } = {},
) {
  const { pollMs, watchRoutes, ...proxyOpts } = opts;
  const dir = tempDir();
  const { routesFile, tokenFiles } = writeConfig(dir, specs);
  const routesText = readFileSync(routesFile, 'utf8');
  const parsed = parseRoutes(routesText, dir);
  if (!parsed.ok) throw new Error(parsed.errors.join('; '));
  const routes: Route[] = parsed.routes;
  const logs: string[] = [];
  const tokens = new TokenStore(
    routes.map((r) => r.tokenFile),
    { pollMs: pollMs ?? 500, onChange: (f, fp) => logs.push(`changed ${f} ${fp}`), onError: (f, m) => logs.push(`error ${f} ${m}`) },
  );
  cleanups.push(() => tokens.close());
  const audits: AuditRecord[] = [];
  const proxy = createCredProxy({ routes, tokens, addressPolicy: loopbackUpstreamsOnly, audit: (r) => audits.push(r), log: (m) => logs.push(m), ...proxyOpts });
  const port = await track(proxy);
  cleanups.push(() => proxy.closeUpstreams());
  const routesEvents: RoutesEvent[] = [];
  let reloader: RoutesReloader | undefined;
  if (watchRoutes) {
    reloader = new RoutesReloader({
      file: routesFile,
      initialText: routesText,
      proxy,
      tokens,
      pollMs: pollMs ?? 500,
      ...watchRoutes,
      onReload: (now) => routesEvents.push({ decision: 'reloaded', routes: now.map((r) => r.path) }),
      onReject: (error) => routesEvents.push({ decision: 'rejected', error }),
    });
    cleanups.push(() => reloader?.close());
  }
  return { port, audits, logs, tokens, tokenFiles, routes, dir, routesFile, proxy, reloader, routesEvents };
}

// ---- clients ---------------------------------------------------------------------------

export interface Reply {
  status: number;
  statusMessage: string;
  headers: http.IncomingHttpHeaders;
  rawHeaders: string[];
  body: string;
  /** Each body read as it arrived, with its arrival time (ms since the request was sent). */
  reads: { at: number; data: string }[];
}

/** A request to the proxy on loopback, as the agent makes it (origin-form). */
export function request(
  port: number,
  path: string,
  opts: { method?: string; headers?: Record<string, string | string[]>; body?: string | Buffer; chunks?: string[] } = {},
): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const req = http.request({ host: '127.0.0.1', port, method: opts.method ?? 'GET', path, headers: { host: 'cred-proxy:9099', ...opts.headers }, agent: false });
    req.on('response', (res) => {
      const reads: { at: number; data: string }[] = [];
      res.on('data', (c: Buffer) => reads.push({ at: Date.now() - started, data: c.toString() }));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, statusMessage: res.statusMessage ?? '', headers: res.headers, rawHeaders: res.rawHeaders, body: reads.map((r) => r.data).join(''), reads }));
      res.on('error', reject);
    });
    req.on('error', reject);
    if (opts.chunks) {
      for (const c of opts.chunks) req.write(c);
      req.end();
    } else req.end(opts.body);
  });
}

export { rawExchange, until } from '../loopback.js';

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Every header value the upstream saw, joined: to look for a string anywhere in them. */
export const allHeaderText = (seen: SeenRequest) => seen.rawHeaders.join('\n');
