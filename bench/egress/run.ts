/**
 * Egress proxy: throughput, added latency and idle memory.
 *
 * Three processes, as in production (agent, egress sidecar, upstream are separate): this one
 * is the client; bench/egress/servers.ts is forked as the upstream (an HTTP server on
 * 127.0.0.1 with a small fixed answer) and as the proxy (createEgressProxy on 127.0.0.1, an
 * injected resolver mapping bench.test to 127.0.0.1, loopback let through for this bench only,
 * audit lines appended to a temp file as the sidecar does). In the same run, every round has
 * CLIENTS concurrent keep-alive clients (node:http Agent, keepAlive) issue REQUESTS GETs per
 * mode, cut into SLICES slices; the modes take turns slice by slice, the order rotating:
 *   direct     straight to the upstream;
 *   proxy      through the proxy as absolute-URI requests (GET http://bench.test:PORT/);
 *   connect    one CONNECT tunnel per client, then the requests inside it;
 *   noaudit    as `proxy`, through a second proxy whose audit lines are dropped;
 *   bare-new, bare-keepalive
 *              references, not the product: a minimal Node forward proxy (no policy, no
 *              audit) with a new upstream connection per request (as the egress proxy did
 *              before its upstream pool), or with a keep-alive upstream Agent; they show
 *              where the proxy's time goes.
 * Then the same with one client (unloaded latency), and a POST whose body comes in a second
 * write 1 ms after its head, one client, direct / proxy / connect (Nagle's algorithm on a hop).
 *
 * That upstream answers in about 35 µs of CPU, so those figures are three processes' CPU on
 * the machine's shared cores. A second scenario is closer to an agent's egress: a second
 * upstream (servers.ts `upstream SERVICE_MS`) answers --service-ms ms (default 2) after each
 * request (plus a uniform random 0 to --service-jitter-ms, default 0), a timer (waiting, not
 * CPU) like a registry or API, same body; the same proxy
 * process has both upstreams on its allowlist. In every round, after the scenario above,
 * direct / proxy / connect take turns slice by slice against it with each of --service-clients
 * (default 1,8,32) clients, max(400, clients x --service-requests (150)) requests per mode.
 *
 * Reports requests/second, per-request
 * latency median and p99 (medians over rounds), the added latency and the throughput ratio
 * against `direct` (computed per round, median over rounds), CPU per request of each process
 * and new connections per request (client to proxy, proxy to upstream). Each slice opens
 * its clients' connections (and tunnels) before its clock starts. Then a table of the
 * goals (at least 0.70x of direct req/s, added median under 1 ms) per scenario, clients and
 * mode, and the RSS of the bench's proxy process after start and after all that load.
 *
 * Memory: bundles sidecars/egress/main.ts as scripts/build.mjs does (esbuild, node18, ESM)
 * into a temp dir (or takes --sidecar FILE, e.g. dist/sidecars/egress.mjs), runs it with
 * `node` on a free loopback port and a temp allowlist, and reads VmRSS from /proc/PID/status
 * 2 s after 'ready' and 2 s after 1000 requests that the allowlist refuses (never resolved,
 * so no lookup leaves the machine). With Docker and a bot-bottle/sidecar image, the same idle
 * figure from a container of that image (--network none), unless --no-docker.
 *
 * Usage: npx tsx bench/egress/run.ts [ROUNDS=7] [--clients 8] [--requests 4000]
 *          [--latency-requests 800] [--slices 4] [--service-ms 2] [--service-jitter-ms 0]
 *          [--service-clients 1,8,32]
 *          [--service-requests 150] [--sidecar FILE] [--no-docker] [--json FILE]
 *
 * Talks only to 127.0.0.1 and to the container it starts itself (which has no network).
 */
import { type ChildProcess, execFileSync, fork, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { benchArgs, bundleSidecar, median, quantile, range, sorted } from '../common.js';

const { option, positional, flag } = benchArgs(['--clients', '--requests', '--latency-requests', '--slices', '--sidecar', '--json', '--service-ms', '--service-jitter-ms', '--service-clients', '--service-requests']);
const ROUNDS = Number(positional[0] ?? 7);
const CLIENTS = Number(option('--clients') ?? 8);
const REQUESTS = Number(option('--requests') ?? 4000);
const LAT_REQUESTS = Number(option('--latency-requests') ?? 800);
const SLICES = Number(option('--slices') ?? 4);
const SPLIT_REQUESTS = 30;
const SIDECAR = option('--sidecar');
const NO_DOCKER = flag('--no-docker');
const JSON_OUT = option('--json');
const MEMORY_REQUESTS = 1000;
const SERVICE_MS = Number(option('--service-ms') ?? 2);
/** 0 by default: every answer waits exactly SERVICE_MS (as Node's millisecond timers go). */
const SERVICE_JITTER_MS = Number(option('--service-jitter-ms') ?? 0);
const SERVICE_CLIENTS = (option('--service-clients') ?? '1,8,32').split(',').filter(Boolean).map(Number);
/** Requests per mode and round in the service-time scenario: this many per client, at least 400. */
const SERVICE_PER_CLIENT = Number(option('--service-requests') ?? 150);
const serviceTotal = (clients: number) => Math.max(400, clients * SERVICE_PER_CLIENT);

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..', '..');
const tmp = mkdtempSync(join(tmpdir(), 'bottle-bench-egress-'));

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---- child processes ----------------------------------------------------------------------

interface Child {
  proc: ChildProcess;
  port: number;
  stats(): Promise<{ connections: number; cpuMs: number; rssMiB: number; answered: number; waitedMs: number }>;
}

const children: ChildProcess[] = [];

async function startChild(argv: string[]): Promise<Child> {
  const proc = fork(join(here, 'servers.ts'), argv, { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  children.push(proc);
  const [msg] = (await once(proc, 'message')) as [{ type: string; port: number }];
  if (msg.type !== 'listening') throw new Error(`servers.ts ${argv[0]}: unexpected ${JSON.stringify(msg)}`);
  return {
    proc,
    port: msg.port,
    async stats() {
      proc.send({ type: 'stats' });
      for (;;) {
        const [m] = (await once(proc, 'message')) as [{ type: string; connections: number; cpu: NodeJS.CpuUsage; rss: number; answered: number; waitedMs: number }];
        if (m.type === 'stats')
          return { connections: m.connections, cpuMs: (m.cpu.user + m.cpu.system) / 1000, rssMiB: m.rss / 2 ** 20, answered: m.answered, waitedMs: m.waitedMs };
      }
    },
  };
}

// ---- clients ------------------------------------------------------------------------------

/** An Agent whose one connection is an already established CONNECT tunnel. */
class TunnelAgent extends http.Agent {
  constructor(private readonly tunnel: net.Socket) {
    super({ keepAlive: true, maxSockets: 1 });
  }
  override createConnection(): net.Socket {
    return this.tunnel;
  }
}

function openTunnel(proxyPort: number, target: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: proxyPort, method: 'CONNECT', path: target, agent: false });
    req.on('connect', (res: http.IncomingMessage, socket: net.Socket, head: Buffer) => {
      if (res.statusCode !== 200) {
        socket.destroy();
        reject(new Error(`CONNECT ${target}: ${res.statusCode}`));
        return;
      }
      if (head.length > 0) socket.unshift(head);
      resolve(socket);
    });
    req.on('error', reject);
    req.end();
  });
}

interface Target {
  agent(worker: number): http.Agent;
  port: number;
  path: string;
  host: string;
}

function get(t: Target, worker: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const req = http.request({ agent: t.agent(worker), host: '127.0.0.1', port: t.port, path: t.path, headers: { host: t.host } }, (res) => {
      if (res.statusCode !== 200) {
        reject(new Error(`${t.path}: status ${res.statusCode}`));
        res.resume();
        return;
      }
      res.resume();
      res.on('end', resolve);
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

interface Batch {
  rps: number;
  p50: number;
  p99: number;
  /** CPU µs per request of each process (client, proxy, upstream). */
  cpu: Record<string, number>;
  upstreamConnsPerRequest: number;
  proxyConnsPerRequest: number;
  /** Mean ms from a request's end at the upstream to its answer (its timer, as it fired). */
  upstreamWaitMs: number;
}

type Mode = 'direct' | 'proxy' | 'connect' | 'noaudit' | 'bare-new' | 'bare-keepalive';
const MODES: Mode[] = ['direct', 'proxy', 'connect', 'noaudit', 'bare-new', 'bare-keepalive'];
/** The modes of the service-time scenario: the product only. */
const SERVICE_MODES: Mode[] = ['direct', 'proxy', 'connect'];

/**
 * An upstream and the proxies in front of it. `trivial`: the upstream answers at once (about
 * 35 µs of CPU), so the figures are the CPU of client, proxy and upstream on shared cores.
 * `service`: the upstream answers SERVICE_MS ms after the request (a timer, as a registry or
 * API whose answer takes milliseconds); same body, same proxy process.
 */
interface Scenario {
  upstream: Child;
  host: string;
  via: Partial<Record<Mode, Child>>;
}

let proxy: Child;
let trivial: Scenario;

/** Sets up the clients of one batch: fresh agents (and tunnels), connections opened before timing. */
async function clientsFor(sc: Scenario, mode: Mode, clients: number): Promise<{ target: Target; close(): void; proxyChild?: Child }> {
  const { upstream, host: upstreamHost, via } = sc;
  if (mode === 'connect') {
    const tunnels = await Promise.all(Array.from({ length: clients }, () => openTunnel(proxy.port, upstreamHost)));
    const agents = tunnels.map((s) => new TunnelAgent(s));
    return {
      target: { agent: (w) => agents[w]!, port: proxy.port, path: '/', host: upstreamHost },
      close: () => {
        for (const a of agents) a.destroy();
        for (const s of tunnels) s.destroy();
      },
      proxyChild: proxy,
    };
  }
  const agent = new http.Agent({ keepAlive: true, maxSockets: clients });
  const close = () => agent.destroy();
  if (mode === 'direct') return { target: { agent: () => agent, port: upstream.port, path: '/', host: upstreamHost }, close };
  const p = via[mode]!;
  return { target: { agent: () => agent, port: p.port, path: `http://${upstreamHost}/`, host: upstreamHost }, close, proxyChild: p };
}

interface Slice {
  requests: number;
  wallMs: number;
  lat: Float64Array;
  cpuMs: Record<string, number>;
  upstreamConns: number;
  proxyConns: number;
  upstreamAnswered: number;
  upstreamWaitedMs: number;
}

/** One slice of a round: fresh clients, connections opened (not timed), then `total` timed requests. */
async function measure(sc: Scenario, mode: Mode, clients: number, total: number): Promise<Slice> {
  const { upstream } = sc;
  const { target, close, proxyChild } = await clientsFor(sc, mode, clients);
  try {
    // Warm-up: every client's connection is open (and JIT warm) before the clock starts.
    await Promise.all(Array.from({ length: clients }, (_, w) => get(target, w)));
    const before = { up: await upstream.stats(), px: proxyChild ? await proxyChild.stats() : undefined, me: process.cpuUsage() };
    const lat = new Float64Array(total);
    let next = 0;
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: clients }, async (_, w) => {
        for (let i = next++; i < total; i = next++) {
          const s = performance.now();
          await get(target, w);
          lat[i] = performance.now() - s;
        }
      }),
    );
    const wallMs = performance.now() - t0;
    const me = process.cpuUsage(before.me);
    const up = await upstream.stats();
    const px = proxyChild ? await proxyChild.stats() : undefined;
    const cpuMs: Record<string, number> = { client: (me.user + me.system) / 1000, upstream: up.cpuMs - before.up.cpuMs };
    if (px && before.px) cpuMs.proxy = px.cpuMs - before.px.cpuMs;
    return {
      requests: total,
      wallMs,
      lat,
      cpuMs,
      upstreamConns: up.connections - before.up.connections,
      upstreamAnswered: up.answered - before.up.answered,
      upstreamWaitedMs: up.waitedMs - before.up.waitedMs,
      proxyConns: px && before.px ? px.connections - before.px.connections : 0,
    };
  } finally {
    close();
  }
}

/** A round's figures for one mode, from its slices. */
function combine(slices: Slice[]): Batch {
  const requests = slices.reduce((n, s) => n + s.requests, 0);
  const all = new Float64Array(requests);
  let at = 0;
  for (const s of slices) {
    all.set(s.lat, at);
    at += s.lat.length;
  }
  all.sort();
  const perReq = (ms: number) => (ms * 1000) / requests; // µs per request
  const cpu: Record<string, number> = {};
  for (const k of Object.keys(slices[0]!.cpuMs)) cpu[k] = perReq(slices.reduce((n, s) => n + s.cpuMs[k]!, 0));
  return {
    rps: (requests / slices.reduce((n, s) => n + s.wallMs, 0)) * 1000,
    p50: quantile(all, 0.5),
    p99: quantile(all, 0.99),
    cpu,
    upstreamConnsPerRequest: slices.reduce((n, s) => n + s.upstreamConns, 0) / requests,
    proxyConnsPerRequest: slices.reduce((n, s) => n + s.proxyConns, 0) / requests,
    upstreamWaitMs: slices.reduce((n, s) => n + s.upstreamWaitedMs, 0) / slices.reduce((n, s) => n + s.upstreamAnswered, 0),
  };
}

// ---- a request in two writes -----------------------------------------------------------------

type SplitMode = 'direct' | 'proxy' | 'connect';
const SPLIT_MODES: SplitMode[] = ['direct', 'proxy', 'connect'];

/** Waits for one whole response (head + Content-Length body) on a raw socket. */
function response(socket: net.Socket): Promise<void> {
  return new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0);
    const onData = (c: Buffer) => {
      buf = Buffer.concat([buf, c]);
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      const head = buf.subarray(0, end).toString('latin1');
      const length = Number(/\r\ncontent-length:\s*(\d+)/i.exec(head)?.[1] ?? Number.NaN);
      if (!/^HTTP\/1\.1 200 /.test(head) || Number.isNaN(length)) {
        cleanup();
        reject(new Error(`unexpected response: ${head.split('\r\n')[0]}`));
      } else if (buf.length >= end + 4 + length) {
        cleanup();
        resolve();
      }
    };
    const onClose = () => {
      cleanup();
      reject(new Error('closed before the response'));
    };
    const cleanup = () => {
      socket.off('data', onData);
      socket.off('close', onClose);
    };
    socket.on('data', onData);
    socket.on('close', onClose);
  });
}

/**
 * POSTs with the head in one write and the 10-byte body in a second write 1 ms later (as a
 * client streaming a body, or TLS writing two records, does), on one connection, one at a time.
 */
async function splitWrites(mode: SplitMode, total: number): Promise<number[]> {
  const { upstream, host: upstreamHost } = trivial;
  let socket: net.Socket;
  if (mode === 'connect') socket = await openTunnel(proxy.port, upstreamHost);
  else {
    socket = net.connect(mode === 'direct' ? upstream.port : proxy.port, '127.0.0.1');
    await once(socket, 'connect');
  }
  socket.setNoDelay(true); // the client's own writes go out at once
  const path = mode === 'proxy' ? `http://${upstreamHost}/` : '/';
  const lat: number[] = [];
  try {
    for (let i = 0; i < total; i++) {
      const s = performance.now();
      const answered = response(socket);
      socket.write(`POST ${path} HTTP/1.1\r\nHost: ${upstreamHost}\r\nContent-Length: 10\r\n\r\n`);
      await sleep(1);
      socket.write('0123456789');
      await answered;
      lat.push(performance.now() - s);
    }
  } finally {
    socket.destroy();
  }
  return lat;
}

// ---- memory -------------------------------------------------------------------------------

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

function vm(pid: number | string, read: (p: string) => string = (p) => readFileSync(p, 'utf8')) {
  const text = read(`/proc/${pid}/status`);
  const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? Number.NaN);
  return { rssMiB: kb('VmRSS') / 1024, anonMiB: kb('RssAnon') / 1024, fileMiB: kb('RssFile') / 1024, hwmMiB: kb('VmHWM') / 1024 };
}

async function sidecarBundle(): Promise<string> {
  return SIDECAR ?? bundleSidecar(root, 'egress', join(tmp, 'dist'));
}

async function sidecarMemory() {
  const bundle = await sidecarBundle();
  const allowlist = join(tmp, 'allowlist');
  writeFileSync(allowlist, '# egress bench: nothing it is sent is on this list\nallowed.test\n', { mode: 0o644 });
  const auditFile = join(tmp, 'sidecar-audit.jsonl');
  const port = await freePort();
  const proc = spawn(process.execPath, [bundle], {
    env: { PATH: process.env.PATH, BOTTLE_SIDECAR_PORT: String(port), BOTTLE_EGRESS_ALLOWLIST: allowlist, BOTTLE_EGRESS_AUDIT: auditFile },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(proc);
  let stderr = '';
  proc.stderr!.on('data', (c: Buffer) => {
    stderr += c.toString();
  });
  await new Promise<void>((resolve, reject) => {
    let out = '';
    proc.stdout!.on('data', (c: Buffer) => {
      out += c.toString();
      if (out.includes('ready\n')) resolve();
    });
    proc.once('exit', (code) => reject(new Error(`the sidecar exited (${code}): ${stderr}`)));
    setTimeout(() => reject(new Error(`no 'ready' from the sidecar in 10 s: ${stderr}`)), 10_000).unref();
  });
  await sleep(2000);
  const idle = vm(proc.pid!);
  // 1000 requests the allowlist refuses (403 at once, the name is never resolved; a refusal
  // closes the connection, so each is a new connection); 8 clients at a time.
  const agent = new http.Agent({ keepAlive: true, maxSockets: CLIENTS });
  const refused = { agent: () => agent, port, path: 'http://denied.test/', host: 'denied.test' };
  let next = 0;
  let statuses = 0;
  await Promise.all(
    Array.from({ length: CLIENTS }, async () => {
      for (let i = next++; i < MEMORY_REQUESTS; i = next++) {
        await new Promise<void>((resolve, reject) => {
          const req = http.request({ agent: refused.agent(), host: '127.0.0.1', port, path: refused.path, headers: { host: refused.host } }, (res) => {
            if (res.statusCode === 403) statuses += 1;
            res.resume();
            res.on('end', resolve);
          });
          req.on('error', reject);
          req.end();
        });
      }
    }),
  );
  agent.destroy();
  const afterNow = vm(proc.pid!);
  await sleep(2000);
  const after = vm(proc.pid!);
  const auditLines = readFileSync(auditFile, 'utf8').split('\n').filter(Boolean).length;
  proc.kill('SIGTERM');
  await once(proc, 'exit');
  return { bundle: SIDECAR ?? 'fresh esbuild bundle of sidecars/egress/main.ts', node: process.version, idle, afterNow, after, refused403: statuses, auditLines };
}

const IN_CONTAINER_CLIENT = `
const http = require('http');
const agent = new http.Agent({ keepAlive: true, maxSockets: ${CLIENTS} });
let n = 0, refused = 0;
const one = () => new Promise((resolve, reject) => {
  const req = http.request({ agent, host: '127.0.0.1', port: 3128, path: 'http://denied.test/', headers: { host: 'denied.test' } }, (res) => {
    if (res.statusCode === 403) refused++;
    res.resume();
    res.on('end', resolve);
  });
  req.on('error', reject);
  req.end();
});
Promise.all(Array.from({ length: ${CLIENTS} }, async () => { while (n++ < ${MEMORY_REQUESTS}) await one(); }))
  .then(() => { console.log(refused); process.exit(0); }, (e) => { console.error(e); process.exit(1); });
`;

function docker(argv: string[], timeout = 30_000): string {
  return execFileSync('docker', argv, { encoding: 'utf8', timeout, stdio: ['ignore', 'pipe', 'pipe'] }).trim();
}

async function containerMemory(): Promise<Record<string, unknown>> {
  if (NO_DOCKER) return { skipped: '--no-docker' };
  let image: string | undefined;
  try {
    docker(['info', '--format', '{{.ServerVersion}}'], 10_000);
    image = docker(['images', 'bot-bottle/sidecar', '--format', '{{.Repository}}:{{.Tag}}'])
      .split('\n')
      .find((l) => l && !l.endsWith(':<none>'));
  } catch (err) {
    return { skipped: `no Docker daemon (${(err as Error).message.split('\n')[0]})` };
  }
  if (!image) return { skipped: 'no bot-bottle/sidecar image' };
  const name = `bench-egress-${Math.random().toString(36).slice(2, 8)}`;
  const allowlist = join(tmp, 'allowlist');
  try {
    docker([
      'create',
      '--name',
      name,
      '--label',
      'bot-bottle.bench=egress',
      '--network',
      'none',
      '-e',
      'BOTTLE_SIDECAR_PORT=3128',
      '-e',
      'BOTTLE_EGRESS_ALLOWLIST=/tmp/allowlist',
      '-e',
      'BOTTLE_EGRESS_AUDIT=/tmp/audit.jsonl',
      image,
      '/opt/bot-bottle/sidecars/egress.mjs',
    ]);
    docker(['cp', allowlist, `${name}:/tmp/allowlist`]);
    docker(['start', name]);
    const deadline = Date.now() + 15_000;
    while (!docker(['logs', name]).includes('ready')) {
      if (Date.now() > deadline) return { skipped: `the container did not say 'ready': ${docker(['logs', name])}`, image };
      if (docker(['inspect', '--format', '{{.State.Running}}', name]) !== 'true') return { skipped: `the container exited: ${docker(['logs', name])}`, image };
      await sleep(100);
    }
    await sleep(2000);
    const memUsage = () => docker(['stats', '--no-stream', '--format', '{{.MemUsage}}', name]);
    const idleStats = memUsage();
    const idle = vm(1, (p) => docker(['exec', name, 'cat', p]));
    const node = docker(['exec', name, 'node', '--version']);
    // The same 1000 refused requests, from a client run inside the container (its own loopback).
    const refused403 = Number(docker(['exec', name, 'node', '-e', IN_CONTAINER_CLIENT], 120_000));
    await sleep(2000);
    const afterStats = memUsage();
    const after = vm(1, (p) => docker(['exec', name, 'cat', p]));
    return { image, node, idleStats, idle, refused403, afterStats, after };
  } finally {
    try {
      docker(['rm', '-f', name]);
    } catch {
      // never created
    }
  }
}

// ---- main ---------------------------------------------------------------------------------

const f1 = (x: number) => x.toFixed(1);
const f2 = (x: number) => x.toFixed(2);
const f3 = (x: number) => x.toFixed(3);

async function main() {
  const started = performance.now();
  console.log(
    `egress bench: ${ROUNDS} rounds, ${CLIENTS} clients x ${REQUESTS} requests per mode (+ 1 client x ${LAT_REQUESTS}), Node ${process.version}, ${cpus().length} CPUs, load ${loadavg()
      .map((l) => l.toFixed(2))
      .join(' ')}`,
  );
  console.log(
    `service-time scenario: the upstream answers ${SERVICE_MS} ms${SERVICE_JITTER_MS > 0 ? ` + 0-${SERVICE_JITTER_MS} ms` : ''} after each request (a timer), ${SERVICE_CLIENTS.join(' / ')} clients x ${SERVICE_CLIENTS.map(serviceTotal).join(' / ')} requests per mode`,
  );
  const auditFile = join(tmp, 'audit.jsonl');
  const upstream = await startChild(['upstream']);
  const slowUpstream = await startChild(['upstream', String(SERVICE_MS), String(SERVICE_JITTER_MS)]);
  // One proxy for both upstreams (both ports on its allowlist), as one sidecar serves a bottle.
  proxy = await startChild(['proxy', `${upstream.port},${slowUpstream.port}`, auditFile]);
  const proxyStart = await proxy.stats();
  trivial = {
    upstream,
    host: `bench.test:${upstream.port}`,
    via: {
      proxy,
      connect: proxy,
      noaudit: await startChild(['proxy', String(upstream.port), join(tmp, 'unused'), 'noaudit']),
      'bare-new': await startChild(['bare', String(upstream.port), 'new']),
      'bare-keepalive': await startChild(['bare', String(upstream.port), 'keepalive']),
    },
  };
  const service: Scenario = { upstream: slowUpstream, host: `bench.test:${slowUpstream.port}`, via: { proxy, connect: proxy } };
  const via = trivial.via;

  const loaded = Object.fromEntries(MODES.map((m) => [m, [] as Batch[]])) as Record<Mode, Batch[]>;
  const single = Object.fromEntries(MODES.map((m) => [m, [] as Batch[]])) as Record<Mode, Batch[]>;
  const served = SERVICE_CLIENTS.map(() => Object.fromEntries(SERVICE_MODES.map((m) => [m, [] as Batch[]])) as Record<Mode, Batch[]>);
  const split: Record<SplitMode, number[][]> = { direct: [], proxy: [], connect: [] };
  let proxiedRequests = 0;
  let tunnels = 0;
  const count = (mode: Mode, clients: number, total: number) => {
    if (mode === 'proxy') proxiedRequests += clients + total;
    if (mode === 'connect') tunnels += clients;
  };
  // Round 0 is a warm-up, not counted. Each round is cut into SLICES slices per mode, and the
  // modes take turns slice by slice (the order rotating), so a burst of other load on the
  // machine hits every mode alike.
  // Both scenarios are in every round, so a burst of load hits them alike too.
  for (let round = 0; round <= ROUNDS; round++) {
    const scale = round === 0 ? 0.25 : 1;
    for (const [sc, modes, set, clients, total] of [
      [trivial, MODES, loaded, CLIENTS, REQUESTS],
      [trivial, MODES, single, 1, LAT_REQUESTS],
      ...SERVICE_CLIENTS.map((c, i) => [service, SERVICE_MODES, served[i]!, c, serviceTotal(c)] as const),
    ] as const) {
      const slices = Object.fromEntries(modes.map((m) => [m, [] as Slice[]])) as Record<Mode, Slice[]>;
      const n = Math.max(1, Math.round((total * scale) / SLICES));
      for (let k = 0; k < SLICES; k++) {
        const turn = round * SLICES + k;
        for (const mode of modes.map((_, i) => modes[(i + turn) % modes.length]!)) {
          slices[mode].push(await measure(sc, mode, clients, n));
          count(mode, clients, n);
        }
      }
      if (round > 0) for (const mode of modes) set[mode].push(combine(slices[mode]));
    }
    {
      const turn = round;
      for (const mode of SPLIT_MODES.map((_, i) => SPLIT_MODES[(i + turn) % SPLIT_MODES.length]!)) {
        const lat = await splitWrites(mode, round === 0 ? 5 : SPLIT_REQUESTS);
        if (mode === 'proxy') proxiedRequests += lat.length;
        if (mode === 'connect') tunnels += 1;
        if (round > 0) split[mode].push(lat);
      }
    }
    if (round > 0) {
      const d = loaded.direct.at(-1)!;
      const line = MODES.slice(1).map((m) => {
        const b = loaded[m].at(-1)!;
        return `${m} ${b.rps.toFixed(0)}/s (${f2(b.rps / d.rps)}x)`;
      });
      console.log(`round ${round}, ${CLIENTS} clients: direct ${d.rps.toFixed(0)}/s, ${line.join(', ')}`);
      const svc = SERVICE_CLIENTS.map((c, i) => {
        const r = (m: Mode) => served[i]![m].at(-1)!.rps;
        return `${c}: direct ${r('direct').toFixed(0)}/s, proxy ${f2(r('proxy') / r('direct'))}x, connect ${f2(r('connect') / r('direct'))}x`;
      });
      console.log(`round ${round}, ${SERVICE_MS} ms upstream, clients ${svc.join('; ')}`);
    }
  }
  const benchSeconds = (performance.now() - started) / 1000;

  const summary = (bs: Batch[]) => ({
    rps: median(bs.map((b) => b.rps)),
    rpsRange: range(bs.map((b) => b.rps)),
    p50: median(bs.map((b) => b.p50)),
    p99: median(bs.map((b) => b.p99)),
    cpu: Object.fromEntries(Object.keys(bs[0]!.cpu).map((k) => [k, median(bs.map((b) => b.cpu[k]!))])),
    upstreamConnsPerRequest: median(bs.map((b) => b.upstreamConnsPerRequest)),
    proxyConnsPerRequest: median(bs.map((b) => b.proxyConnsPerRequest)),
    upstreamWaitMs: median(bs.map((b) => b.upstreamWaitMs)),
  });
  const versus = (set: Record<Mode, Batch[]>, mode: Mode) => {
    const ratio = set[mode].map((b, i) => b.rps / set.direct[i]!.rps);
    const add50 = set[mode].map((b, i) => b.p50 - set.direct[i]!.p50);
    const add99 = set[mode].map((b, i) => b.p99 - set.direct[i]!.p99);
    return { ratio: median(ratio), ratioRange: range(ratio), addedP50: median(add50), addedP50Range: range(add50), addedP99: median(add99) };
  };

  const report: Record<string, unknown> = {
    date: new Date().toISOString(),
    node: process.version,
    cpus: cpus().length,
    rounds: ROUNDS,
    clients: CLIENTS,
    requests: REQUESTS,
    latencyRequests: LAT_REQUESTS,
    serviceMs: SERVICE_MS,
    serviceJitterMs: SERVICE_JITTER_MS,
    serviceClients: SERVICE_CLIENTS,
  };
  const goals: string[] = [];
  const tables: [string, string, Record<Mode, Batch[]>, number, Mode[]][] = [
    ['loaded', 'trivial upstream', loaded, CLIENTS, MODES],
    ['single', 'trivial upstream', single, 1, MODES],
    ...SERVICE_CLIENTS.map((c, i) => [`service${c}`, `${SERVICE_MS} ms upstream`, served[i]!, c, SERVICE_MODES] as [string, string, Record<Mode, Batch[]>, number, Mode[]]),
  ];
  for (const [label, scenario, set, clients, modes] of tables) {
    console.log(`\n${scenario}, ${clients} client(s), medians of ${ROUNDS} rounds:`);
    console.log('| mode | req/s (range) | p50 ms | p99 ms | added p50 ms | added p99 ms | req/s vs direct (range) | CPU µs/req client / proxy / upstream | new conns/req to proxy / upstream | upstream wait ms |');
    console.log('|---|---|---|---|---|---|---|---|---|---|');
    const out: Record<string, unknown> = {};
    for (const mode of modes) {
      const s = summary(set[mode]);
      const v = mode === 'direct' ? undefined : versus(set, mode);
      out[mode] = { ...s, ...v };
      console.log(
        `| ${mode} | ${s.rps.toFixed(0)} (${s.rpsRange.map((x) => x.toFixed(0)).join('–')}) | ${f3(s.p50)} | ${f3(s.p99)} | ${v ? f3(v.addedP50) : '–'} | ${v ? f3(v.addedP99) : '–'} | ${v ? `${f2(v.ratio)}x (${v.ratioRange.map(f2).join('–')})` : '–'} | ${f1(s.cpu.client!)} / ${s.cpu.proxy !== undefined ? f1(s.cpu.proxy) : '–'} / ${f1(s.cpu.upstream!)} | ${mode === 'direct' ? '–' : f2(s.proxyConnsPerRequest)} / ${f2(s.upstreamConnsPerRequest)} | ${f3(s.upstreamWaitMs)} |`,
      );
      if (v && (mode === 'proxy' || mode === 'connect'))
        goals.push(
          `| ${scenario} | ${clients} | ${mode} | ${f2(v.ratio)}x: ${v.ratio >= 0.7 ? 'met' : 'not met'} | +${f3(v.addedP50)} ms: ${v.addedP50 < 1 ? 'met' : 'not met'} | +${f3(v.addedP99)} ms | ${f1(s.cpu.proxy!)} |`,
        );
    }
    report[label] = out;
  }
  console.log('\ngoals (at least 0.70x of direct req/s; added median under 1 ms), medians of rounds:');
  console.log('| scenario | clients | mode | req/s vs direct | added p50 | added p99 | proxy CPU µs/req |');
  console.log('|---|---|---|---|---|---|---|');
  for (const g of goals) console.log(g);
  {
    console.log(`\na POST in two writes (head, then the body 1 ms later), 1 client, ${SPLIT_REQUESTS} a round, ${ROUNDS} rounds:`);
    console.log('| mode | p50 ms (median of rounds) | p90 ms (all) | added p50 ms |');
    console.log('|---|---|---|---|');
    const p50 = (m: SplitMode) => split[m].map((l) => quantile(sorted(l), 0.5));
    const out: Record<string, unknown> = {};
    for (const m of SPLIT_MODES) {
      const pooled = sorted(split[m].flat());
      const added = m === 'direct' ? undefined : median(p50(m).map((x, i) => x - p50('direct')[i]!));
      out[m] = { p50: median(p50(m)), p90: quantile(pooled, 0.9), addedP50: added };
      console.log(`| ${m} | ${f3(median(p50(m)))} | ${f3(quantile(pooled, 0.9))} | ${added === undefined ? '–' : f3(added)} |`);
    }
    report.split = out;
  }
  await sleep(200);
  const auditLines = readFileSync(auditFile, 'utf8').split('\n').filter(Boolean);
  const auditBytes = auditLines.reduce((n, l) => n + l.length + 1, 0);
  console.log(
    `\naudit: ${auditLines.length} lines for ${proxiedRequests} absolute-URI requests + ${tunnels} tunnels (expected ${proxiedRequests + tunnels}), ${(auditBytes / auditLines.length).toFixed(0)} bytes a line`,
  );
  report.audit = { lines: auditLines.length, expected: proxiedRequests + tunnels, bytesPerLine: auditBytes / auditLines.length };
  console.log(`throughput part: ${benchSeconds.toFixed(1)} s`);
  const proxyEnd = await proxy.stats();
  await sleep(2000);
  const proxyLater = await proxy.stats();
  console.log(
    `the bench's proxy process (createEgressProxy under tsx, both scenarios): RSS ${f1(proxyStart.rssMiB)} MiB after start, ${f1(proxyEnd.rssMiB)} MiB right after the throughput part (${proxiedRequests} forwarded requests, ${tunnels} tunnels), ${f1(proxyLater.rssMiB)} MiB 2 s later`,
  );
  report.proxyProcess = { rssStartMiB: proxyStart.rssMiB, rssEndMiB: proxyEnd.rssMiB, rssLaterMiB: proxyLater.rssMiB };
  for (const c of [upstream, slowUpstream, ...new Set(Object.values(via))]) c.proc.disconnect();

  const mem = await sidecarMemory();
  report.memory = mem;
  const rss = (v: ReturnType<typeof vm>) => `${f1(v.rssMiB)} MiB (anon ${f1(v.anonMiB)}, file ${f1(v.fileMiB)})`;
  console.log(
    `\nsidecar (node ${mem.node}, ${mem.bundle}): VmRSS idle ${rss(mem.idle)}; right after ${MEMORY_REQUESTS} refused requests ${f1(mem.afterNow.rssMiB)} MiB, 2 s later ${rss(mem.after)}, VmHWM ${f1(mem.after.hwmMiB)} MiB; ${mem.refused403} answered 403, ${mem.auditLines} audit lines`,
  );
  const box = await containerMemory();
  report.container = box;
  if ('skipped' in box) console.log(`container: skipped (${box.skipped})`);
  else
    console.log(
      `container (${box.image}, node ${box.node}, --network none): idle 2 s after 'ready': docker stats ${box.idleStats}, VmRSS of node (PID 1) ${rss(box.idle as ReturnType<typeof vm>)}; 2 s after ${MEMORY_REQUESTS} refused requests from inside the container (${box.refused403} answered 403): docker stats ${box.afterStats}, VmRSS ${rss(box.after as ReturnType<typeof vm>)}`,
    );
  console.log(`total: ${((performance.now() - started) / 1000).toFixed(1)} s, load ${loadavg().map((l) => l.toFixed(2)).join(' ')}`);
  if (JSON_OUT) writeFileSync(JSON_OUT, `${JSON.stringify(report, null, 2)}\n`);
}

main()
  .catch((err) => {
    console.error(err);
    process.exitCode = 1;
  })
  .finally(() => {
    for (const c of children) if (c.exitCode === null) c.kill();
    rmSync(tmp, { recursive: true, force: true });
  });
