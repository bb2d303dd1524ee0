/**
 * Loopback-only fixtures for the egress proxy tests: the proxy on 127.0.0.1, upstream test
 * servers on 127.0.0.1, and a resolver that maps test names (allowed.test, ...) to them
 * explicitly. Nothing here ever sends a packet off the machine.
 */
import http from 'node:http';
import net from 'node:net';
import { afterEach } from 'vitest';
import type { AuditRecord } from '../../../../sidecars/egress/audit.js';
import { checkAddress } from '../../../../config/address-policy.js';
import { createEgressProxy, type EgressProxy, type EgressProxyOptions } from '../../../../sidecars/egress/proxy.js';

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

function listen(server: net.Server): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve((server.address() as net.AddressInfo).port));
  });
}

function closeLater(server: net.Server, sockets: Set<net.Socket>) {
  cleanups.push(
    () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  );
}

export interface SeenRequest {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** An upstream HTTP server on loopback that records every connection and request. */
export async function startHttpUpstream(handler?: (req: http.IncomingMessage, res: http.ServerResponse, body: string) => void) {
  const requests: SeenRequest[] = [];
  const sockets = new Set<net.Socket>();
  let connections = 0;
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString();
      requests.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body });
      if (handler) handler(req, res, body);
      else {
        res.writeHead(200, { 'content-type': 'text/plain', 'x-upstream': 'yes', connection: 'keep-alive', 'keep-alive': 'timeout=99' });
        res.end(`hello from upstream: ${req.method} ${req.url} ${body}`);
      }
    });
  });
  server.on('connection', (s) => {
    connections += 1;
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  const port = await listen(server);
  closeLater(server, sockets);
  return {
    port,
    requests,
    get connections() {
      return connections;
    },
    /** Connections open now (the proxy's pooled ones among them). */
    get open() {
      return sockets.size;
    },
  };
}

/**
 * A TCP server on loopback that records every byte it receives and never answers: for checking
 * what reached an upstream (to the byte) when the proxy is expected to cut a request off.
 */
export async function startRecordingUpstream() {
  const sockets = new Set<net.Socket>();
  const received: Buffer[] = [];
  let connections = 0;
  let closed = 0;
  const server = net.createServer((s) => {
    connections += 1;
    sockets.add(s);
    s.on('data', (c: Buffer) => received.push(c));
    s.on('error', () => undefined);
    s.on('close', () => {
      closed += 1;
      sockets.delete(s);
    });
  });
  const port = await listen(server);
  closeLater(server, sockets);
  return {
    port,
    /** Everything received, all connections together, as latin1 text. */
    get text() {
      return Buffer.concat(received).toString('latin1');
    },
    get connections() {
      return connections;
    },
    /** Connections that have ended (the proxy aborted them, or they were never used). */
    get closed() {
      return closed;
    },
  };
}

/** A TCP echo server on loopback that counts connections. */
export async function startEchoServer() {
  const sockets = new Set<net.Socket>();
  let connections = 0;
  const server = net.createServer((s) => {
    connections += 1;
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => undefined);
    s.pipe(s);
  });
  const port = await listen(server);
  closeLater(server, sockets);
  return {
    port,
    get connections() {
      return connections;
    },
  };
}

/** Maps test names to loopback, on purpose; any other name fails like NXDOMAIN. Records every lookup. */
export function fakeResolver(map: Record<string, string[]>) {
  const lookups: string[] = [];
  const resolve = async (host: string) => {
    lookups.push(host);
    const found = map[host];
    if (found === undefined) throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${host}`), { code: 'ENOTFOUND' });
    return found;
  };
  return { resolve, lookups };
}

/** The real address policy, except that 127.0.0.1 (where the test upstreams listen) is let through. */
export const loopbackTestServersOnly = (ip: string) => {
  const v = checkAddress(ip);
  return ip === '127.0.0.1' || v.ok ? undefined : v;
};

export async function startProxy(opts: EgressProxyOptions) {
  const audits: AuditRecord[] = [];
  const proxy: EgressProxy = createEgressProxy({
    bottle: 'web',
    isForbidden: loopbackTestServersOnly,
    audit: (r) => audits.push(r),
    ...opts,
  });
  const sockets = new Set<net.Socket>();
  proxy.on('connection', (s: net.Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  const port = await listen(proxy);
  closeLater(proxy, sockets);
  return { proxy, port, audits };
}

export interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** A plain-HTTP request through the proxy: absolute URI, Host header given or derived. */
export function viaProxy(
  proxyPort: number,
  url: string,
  opts: { method?: string; headers?: Record<string, string>; body?: string } = {},
): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = http.request({
      host: '127.0.0.1',
      port: proxyPort,
      method: opts.method ?? 'GET',
      path: url,
      headers: { host: new URL(url).host, ...opts.headers },
      agent: false,
    });
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString() }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(opts.body);
  });
}

/** Opens a CONNECT tunnel; resolves with the proxy's answer and, on 200, the tunnel socket. */
export function connectVia(proxyPort: number, target: string): Promise<{ status: number; body: string; socket: net.Socket }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: proxyPort, method: 'CONNECT', path: target, agent: false });
    req.on('connect', (res, socket: net.Socket, head: Buffer) => {
      if (res.statusCode === 200) {
        if (head.length > 0) socket.unshift(head);
        cleanups.push(() => void socket.destroy());
        resolve({ status: 200, body: '', socket });
        return;
      }
      const chunks: Buffer[] = [head];
      socket.on('data', (c: Buffer) => chunks.push(c));
      socket.on('close', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString(), socket }));
      socket.on('error', () => undefined);
    });
    req.on('response', (res) => {
      // Node reports a non-2xx CONNECT answer as 'connect' too; this is a fallback.
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString(), socket: res.socket as net.Socket }));
    });
    req.on('error', reject);
    req.end();
  });
}

/** Writes `data` through a tunnel and waits for `expected` to come back (an echo). */
export function echoThrough(socket: net.Socket, data: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let got = '';
    const onData = (c: Buffer) => {
      got += c.toString();
      if (got.length >= data.length) {
        socket.off('data', onData);
        resolve(got);
      }
    };
    socket.on('data', onData);
    socket.once('error', reject);
    socket.write(data);
  });
}

/** Sends raw bytes to the proxy and collects everything it answers until it closes the connection. */
export function rawExchange(port: number, data: string | Buffer, opts: { waitMs?: number } = {}): Promise<{ text: string; closedAfterMs: number }> {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const socket = net.connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('error', () => undefined);
    socket.on('close', () => resolve({ text: Buffer.concat(chunks).toString(), closedAfterMs: Date.now() - started }));
    socket.on('connect', () => socket.write(data));
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no close within ${opts.waitMs ?? 5000} ms; got ${JSON.stringify(Buffer.concat(chunks).toString())}`));
    }, opts.waitMs ?? 5000);
    socket.on('close', () => clearTimeout(timer));
  });
}

/** Polls until `check` returns true (for things that happen after a connection closes). */
export async function until(check: () => boolean, what: string, timeoutMs = 3000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
