/**
 * The child processes of bench/egress/run.ts (forked, so each has its own event loop and CPU
 * as in production, where the agent, the egress sidecar and the upstream are separate):
 *
 *   upstream [SERVICE_MS [JITTER_MS]]
 *                          an HTTP server on 127.0.0.1 answering every request with the same
 *                          small body (keep-alive); counts its TCP connections. With SERVICE_MS
 *                          > 0 it answers SERVICE_MS ms (plus a uniform random 0 to JITTER_MS)
 *                          after the request has come in whole (a timer: waiting, not CPU, as
 *                          a registry or API that takes that long to answer).
 *   proxy UPSTREAM_PORT[,PORT...] AUDIT_FILE [noaudit]
 *                          createEgressProxy on 127.0.0.1 with the allowlist `bench.test:PORT`
 *                          for each PORT,
 *                          an injected resolver mapping bench.test (only) to 127.0.0.1, and the
 *                          real address policy except that 127.0.0.1 is let through (this bench
 *                          only: production refuses loopback), its defaults otherwise (the
 *                          keep-alive upstream pool, the 5 s resolution cache). Audit lines go
 *                          to AUDIT_FILE through openAuditLog as in the sidecar (the lines of
 *                          one event-loop turn in one write(2)); with `noaudit` they are dropped
 *                          (to see what the audit costs).
 *   bare UPSTREAM_PORT new|keepalive
 *                          a reference, not the product: the least a Node forward proxy does
 *                          (parse the absolute URI, http.request to 127.0.0.1:PORT, pipe both
 *                          ways; no policy, no resolver, no audit), with a new upstream
 *                          connection per request (`new`, as the egress proxy did before its
 *                          upstream pool) or a keep-alive upstream Agent (`keepalive`).
 *
 * All answer the parent's { type: 'stats' } with their CPU time, connection count and RSS (and
 * the upstream with its answers and their summed wait, request end to answer).
 * Nothing here listens on anything but 127.0.0.1 or dials anything but 127.0.0.1.
 */
import http from 'node:http';
import type net from 'node:net';
import { performance } from 'node:perf_hooks';
import { checkAddress } from '../../config/address-policy.js';
import { createEgressProxy, openAuditLog } from '../../sidecars/egress/proxy.js';

const BODY = Buffer.from(`${'egress bench upstream '.repeat(3)}\n`); // 67 bytes

const [role, upstreamPortText, auditFile, flag] = process.argv.slice(2);
let connections = 0;
/** The upstream's answers and the time from each request's end to its answer (the wait). */
let answered = 0;
let waitedMs = 0;

function serve(server: http.Server) {
  server.on('connection', (s: net.Socket) => {
    connections += 1;
    s.on('error', () => undefined);
  });
  server.listen(0, '127.0.0.1', () => {
    process.send?.({ type: 'listening', port: (server.address() as net.AddressInfo).port });
  });
}

if (role === 'upstream') {
  const serviceMs = Number(upstreamPortText ?? 0);
  const jitterMs = Number(auditFile ?? 0);
  const answer = (res: http.ServerResponse, since: number) => {
    answered += 1;
    waitedMs += performance.now() - since;
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': BODY.length });
    res.end(BODY);
  };
  const server = http.createServer({ keepAliveTimeout: 120_000 }, (req, res) => {
    req.resume();
    req.on('end', () => {
      if (serviceMs > 0) setTimeout(answer, serviceMs + Math.random() * jitterMs, res, performance.now());
      else answer(res, performance.now());
    });
  });
  serve(server);
} else if (role === 'proxy') {
  const upstreamPorts = (upstreamPortText ?? '').split(',').map(Number);
  const log = flag === 'noaudit' ? undefined : openAuditLog(auditFile);
  const proxy = createEgressProxy({
    allowlist: upstreamPorts.map((p) => `bench.test:${p}`),
    bottle: 'bench',
    resolve: async (host) => {
      if (host === 'bench.test') return ['127.0.0.1'];
      throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${host}`), { code: 'ENOTFOUND' });
    },
    // Loopback is let through for this bench only: the upstream listens there.
    isForbidden: (ip) => {
      const v = checkAddress(ip);
      return ip === '127.0.0.1' || v.ok ? undefined : v;
    },
    audit: log ? (r) => log.write(r) : () => undefined,
    log: (m) => process.stderr.write(`${m}\n`),
  });
  serve(proxy);
} else if (role === 'bare') {
  const upstreamPort = Number(upstreamPortText);
  const agent = auditFile === 'keepalive' ? new http.Agent({ keepAlive: true }) : false;
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/');
    const upstream = http.request(
      { host: '127.0.0.1', port: upstreamPort, method: req.method, path: url.pathname + url.search, headers: { host: req.headers.host ?? url.host }, agent },
      (ures) => {
        res.writeHead(ures.statusCode ?? 502, { 'content-type': ures.headers['content-type'] ?? 'text/plain', 'content-length': ures.headers['content-length'] ?? '0' });
        ures.pipe(res);
      },
    );
    upstream.on('error', () => res.destroy());
    req.pipe(upstream);
  });
  serve(server);
} else {
  process.stderr.write(`servers.ts: unknown role ${role}\n`);
  process.exit(2);
}

process.on('message', (m: { type: string }) => {
  if (m.type === 'stats') process.send?.({ type: 'stats', connections, cpu: process.cpuUsage(), rss: process.memoryUsage.rss(), answered, waitedMs });
});
process.on('disconnect', () => process.exit(0));
