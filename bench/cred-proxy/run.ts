/**
 * cred-proxy: added latency and time to first byte of a streamed response, against direct.
 *
 * Three processes, as in production (agent, cred-proxy sidecar and model API are separate):
 *   - the upstream, a fake model API (`node -e`, below) on 127.0.0.1 serving plain HTTP and
 *     HTTPS (a certificate for 127.0.0.1 from a CA made with openssl at bench time), keep-alive;
 *     `POST /v1/messages` answers a 436-byte JSON message, `POST /v1/stream` flushes the head
 *     and writes EVENTS server-sent events EVENT_GAP ms apart, the first at once, each stamped
 *     with the time it was written;
 *   - the proxy, the real sidecar bundle `node dist/sidecars/cred-proxy.mjs` (built if missing;
 *     or --sidecar FILE) with a temp routes.json, token file and CA file: route `/plain` to the
 *     HTTP port, route `/tls` to the HTTPS port (CA bundle as `ca_file`), token injected as
 *     `authorization: Bearer {token}`; its stdout (one audit line per request) goes to a temp
 *     file, as Docker keeps a container's stdout;
 *   - this process, the client: keep-alive agents (one connection per mode), one request at a
 *     time, each carrying `authorization: Bearer <placeholder>` as the agent does.
 * Modes, in the same run: `direct-http` and `direct-https` (client to upstream); `proxy-http`
 * and `proxy-https` (client to the proxy over plain HTTP, proxy to upstream over HTTP or TLS:
 * `proxy-https` is the production shape, compared with an agent calling the API over TLS itself).
 * Every round is cut into SLICES slices; in each slice every mode sends its share of REQUESTS
 * messages and STREAMS streams, the modes taking turns in an order that rotates and reverses
 * from slice to slice. One warm-up round is not counted.
 *
 * Reported per mode, medians over rounds (of each round's median and p99): latency of a
 * message (request sent to response end), time to first byte of a stream (request sent to the
 * first body bytes, i.e. the first event; and to the response head), the delay of each event
 * (written by the upstream to read by the client, both clocks `performance.timeOrigin + now()`),
 * and the time to the stream's end. "Added" figures are proxy minus direct of the same scheme,
 * taken per round, median over rounds (range in brackets). Proxy CPU per request is from
 * /proc/PID/stat over the counted rounds.
 *
 * Usage: npx tsx bench/cred-proxy/run.ts [ROUNDS=9] [--requests 400] [--streams 100] [--events 10]
 *          [--event-gap 5] [--slices 4] [--sidecar FILE] [--json FILE]
 *
 * Talks only to 127.0.0.1.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { benchArgs, median, quantile, range, sorted } from '../common.js';

const { option, positional } = benchArgs(['--requests', '--streams', '--events', '--event-gap', '--slices', '--sidecar', '--json']);
const ROUNDS = Number(positional[0] ?? 9);
const REQUESTS = Number(option('--requests') ?? 400);
const STREAMS = Number(option('--streams') ?? 100);
const EVENTS = Number(option('--events') ?? 10);
const EVENT_GAP = Number(option('--event-gap') ?? 5);
const SLICES = Number(option('--slices') ?? 4);
const JSON_OUT = option('--json');

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..', '..');
const SIDECAR = option('--sidecar') ?? join(root, 'dist', 'sidecars', 'cred-proxy.mjs');
const tmp = mkdtempSync(join(tmpdir(), 'bottle-bench-cred-'));

const now = () => performance.timeOrigin + performance.now();

// ---- the upstream: a fake model API ---------------------------------------------------------

const UPSTREAM_JS = String.raw`const http = require('http');
const https = require('https');
const { performance } = require('perf_hooks');
const EVENTS = Number(process.env.EVENTS);
const GAP = Number(process.env.EVENT_GAP);
const stamp = () => (performance.timeOrigin + performance.now()).toFixed(3);
const MESSAGE = JSON.stringify({ id: 'msg_bench', type: 'message', role: 'assistant', model: 'bench', content: [{ type: 'text', text: 'x'.repeat(256) }], stop_reason: 'end_turn', usage: { input_tokens: 12, output_tokens: 64 } });
const handler = (req, res) => {
  req.resume();
  req.on('end', () => {
    if (req.url.endsWith('/v1/stream')) {
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
      res.flushHeaders();
      let i = 0;
      const send = () => {
        res.write('event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"token ' + i + '"},"t":' + stamp() + '}\n\n');
        i += 1;
        if (i === EVENTS) res.end();
        else setTimeout(send, GAP);
      };
      send();
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(MESSAGE) });
    res.end(MESSAGE);
  });
};
const plain = http.createServer({ keepAliveTimeout: 60000 }, handler);
const tls = https.createServer({ key: process.env.TLS_KEY, cert: process.env.TLS_CERT, keepAliveTimeout: 60000 }, handler);
for (const s of [plain, tls]) s.on('connection', (c) => c.setNoDelay(true));
plain.listen(0, '127.0.0.1', () => tls.listen(0, '127.0.0.1', () => console.log(JSON.stringify({ http: plain.address().port, https: tls.address().port }))));
`;

function makePki(): { caFile: string; key: string; cert: string } {
  const openssl = (a: string[]) => execFileSync('openssl', a, { cwd: tmp, stdio: ['ignore', 'ignore', 'pipe'] });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  openssl(['req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '1', '-subj', '/CN=bot-bottle bench CA', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign']);
  writeFileSync(join(tmp, 'leaf.ext'), 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n');
  openssl(['req', '-new', ...ec, '-keyout', 'leaf.key', '-out', 'leaf.csr', '-subj', '/CN=127.0.0.1']);
  openssl(['x509', '-req', '-in', 'leaf.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'leaf.pem', '-days', '1', '-extfile', 'leaf.ext']);
  return { caFile: join(tmp, 'ca.pem'), key: readFileSync(join(tmp, 'leaf.key'), 'utf8'), cert: readFileSync(join(tmp, 'leaf.pem'), 'utf8') };
}

const children: ChildProcess[] = [];

async function firstLine(proc: ChildProcess, what: string): Promise<string> {
  let text = '';
  for await (const chunk of proc.stdout!) {
    text += String(chunk);
    const nl = text.indexOf('\n');
    if (nl >= 0) return text.slice(0, nl);
  }
  throw new Error(`${what} exited before saying it was ready`);
}

// ---- the proxy: the real sidecar bundle ---------------------------------------------------------

const TOKEN = `bench-real-token-${Math.random().toString(16).slice(2)}`;
const PLACEHOLDER = 'bottle-placeholder-bench';

async function freePort(): Promise<number> {
  const s = http.createServer();
  s.listen(0, '127.0.0.1');
  await once(s, 'listening');
  const port = (s.address() as { port: number }).port;
  await new Promise((r) => s.close(r));
  return port;
}

async function startProxy(up: { http: number; https: number }, caFile: string): Promise<{ proc: ChildProcess; port: number; auditFile: string }> {
  if (!option('--sidecar') && !existsSync(SIDECAR)) execFileSync(process.execPath, [join(root, 'scripts', 'build.mjs'), '--sidecars-only'], { cwd: root, stdio: 'inherit' });
  writeFileSync(join(tmp, 'token'), `${TOKEN}\n`, { mode: 0o600 });
  const inject = { header: 'authorization', format: 'Bearer {token}' };
  const routes = [
    { path: '/plain', upstream: `http://127.0.0.1:${up.http}`, inject, roles: [], token_file: 'token' },
    { path: '/tls', upstream: `https://127.0.0.1:${up.https}`, inject, roles: ['anthropic-base-url'], token_file: 'token', ca_file: caFile },
  ];
  writeFileSync(join(tmp, 'routes.json'), JSON.stringify({ routes }));
  const port = await freePort();
  const auditFile = join(tmp, 'audit.jsonl');
  const fd = openSync(auditFile, 'w');
  const proc = spawn(process.execPath, [SIDECAR], {
    env: { PATH: process.env.PATH ?? '', BOTTLE_CRED_ROUTES: join(tmp, 'routes.json'), BOTTLE_SIDECAR_PORT: String(port), BOTTLE_CRED_PLACEHOLDER: PLACEHOLDER, BOTTLE_RUN: 'bench' },
    stdio: ['ignore', fd, 'pipe'],
  });
  closeSync(fd);
  children.push(proc);
  let stderr = '';
  proc.stderr!.on('data', (d) => (stderr += d));
  const deadline = Date.now() + 10_000;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      http.get({ host: '127.0.0.1', port, path: '/healthz' }, (res) => resolve(res.statusCode === 200)).on('error', () => resolve(false));
    });
    if (ok) break;
    if (proc.exitCode !== null || Date.now() > deadline) throw new Error(`the cred-proxy did not become healthy:\n${stderr}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return { proc, port, auditFile };
}

function cpuMs(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  // utime and stime are fields 14 and 15 (1-based); here the list starts at field 3.
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100; // USER_HZ is 100 on Linux
}

// ---- clients ----------------------------------------------------------------------------

type Mode = 'direct-http' | 'proxy-http' | 'direct-https' | 'proxy-https';
const MODES: Mode[] = ['direct-http', 'proxy-http', 'direct-https', 'proxy-https'];

interface Target {
  client: typeof http | typeof https;
  agent: http.Agent;
  port: number;
  prefix: string;
}

const BODY = JSON.stringify({ model: 'bench', max_tokens: 64, messages: [{ role: 'user', content: 'hello' }] });

function message(t: Target): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const req = t.client.request(
      {
        agent: t.agent,
        host: '127.0.0.1',
        port: t.port,
        method: 'POST',
        path: `${t.prefix}/v1/messages`,
        headers: { authorization: `Bearer ${PLACEHOLDER}`, 'content-type': 'application/json', 'content-length': Buffer.byteLength(BODY) },
      },
      (res) => {
        if (res.statusCode !== 200) reject(new Error(`${t.prefix}/v1/messages: ${res.statusCode}`));
        res.resume();
        res.on('end', () => resolve(performance.now() - t0));
      },
    );
    req.on('error', reject);
    req.end(BODY);
  });
}

interface StreamTiming {
  head: number;
  ttfb: number;
  end: number;
  /** upstream write to client read, per event */
  delays: number[];
}

function stream(t: Target): Promise<StreamTiming> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const req = t.client.request(
      {
        agent: t.agent,
        host: '127.0.0.1',
        port: t.port,
        method: 'POST',
        path: `${t.prefix}/v1/stream`,
        headers: { authorization: `Bearer ${PLACEHOLDER}`, accept: 'text/event-stream', 'content-type': 'application/json', 'content-length': Buffer.byteLength(BODY) },
      },
      (res) => {
        const head = performance.now() - t0;
        if (res.statusCode !== 200) reject(new Error(`${t.prefix}/v1/stream: ${res.statusCode}`));
        let ttfb = -1;
        let events = 0;
        const delays: number[] = [];
        let pending = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => {
          const at = now();
          if (ttfb < 0) ttfb = performance.now() - t0;
          pending += d;
          for (let i = pending.indexOf('\n\n'); i >= 0; i = pending.indexOf('\n\n')) {
            const m = /"t":([\d.]+)\}/.exec(pending.slice(0, i));
            if (m) delays.push(at - Number(m[1]));
            events += 1;
            pending = pending.slice(i + 2);
          }
        });
        res.on('end', () => {
          if (events !== EVENTS) reject(new Error(`${t.prefix}/v1/stream: ${events} events, expected ${EVENTS}`));
          resolve({ head, ttfb, end: performance.now() - t0, delays });
        });
      },
    );
    req.on('error', reject);
    req.end(BODY);
  });
}

interface Samples {
  lat: number[];
  head: number[];
  ttfb: number[];
  end: number[];
  delay: number[];
}

const emptySamples = (): Samples => ({ lat: [], head: [], ttfb: [], end: [], delay: [] });

interface RoundStats {
  p50: number;
  p99: number;
  head50: number;
  ttfb50: number;
  ttfb99: number;
  delay50: number;
  delay99: number;
  end50: number;
}

function stats(s: Samples): RoundStats {
  const [lat, ttfb, delay] = [sorted(s.lat), sorted(s.ttfb), sorted(s.delay)];
  return {
    p50: quantile(lat, 0.5),
    p99: quantile(lat, 0.99),
    head50: median(s.head),
    ttfb50: quantile(ttfb, 0.5),
    ttfb99: quantile(ttfb, 0.99),
    delay50: quantile(delay, 0.5),
    delay99: quantile(delay, 0.99),
    end50: median(s.end),
  };
}

// ---- main -----------------------------------------------------------------------------------

async function main() {
  const pki = makePki();
  const upstream = spawn(process.execPath, ['-e', UPSTREAM_JS], {
    env: { PATH: process.env.PATH ?? '', TLS_KEY: pki.key, TLS_CERT: pki.cert, EVENTS: String(EVENTS), EVENT_GAP: String(EVENT_GAP) },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  children.push(upstream);
  const up = JSON.parse(await firstLine(upstream, 'the upstream')) as { http: number; https: number };
  const proxy = await startProxy(up, pki.caFile);
  const ca = readFileSync(pki.caFile, 'utf8');

  const targetOf = (mode: Mode): Target => {
    switch (mode) {
      case 'direct-http':
        return { client: http, agent: new http.Agent({ keepAlive: true, maxSockets: 1 }), port: up.http, prefix: '' };
      case 'direct-https':
        return { client: https, agent: new https.Agent({ keepAlive: true, maxSockets: 1, ca }), port: up.https, prefix: '' };
      case 'proxy-http':
        return { client: http, agent: new http.Agent({ keepAlive: true, maxSockets: 1 }), port: proxy.port, prefix: '/plain' };
      case 'proxy-https':
        return { client: http, agent: new http.Agent({ keepAlive: true, maxSockets: 1 }), port: proxy.port, prefix: '/tls' };
    }
  };
  const targets = Object.fromEntries(MODES.map((m) => [m, targetOf(m)])) as Record<Mode, Target>;

  console.log(
    `cred-proxy bench: ${ROUNDS} rounds (+1 warm-up) x ${SLICES} slices; per mode and round ${REQUESTS} messages and ${STREAMS} streams of ${EVENTS} events ${EVENT_GAP} ms apart; one request at a time`,
  );
  console.log(`node ${process.version} (client, upstream, proxy ${SIDECAR}); ${cpus().length} CPUs; load ${loadavg().map((l) => l.toFixed(2)).join(' ')}`);

  const rounds: Record<Mode, RoundStats>[] = [];
  /** Proxy CPU over the proxy modes' message blocks and stream blocks, and how many of each it served. */
  const proxyCpu = { messagesMs: 0, messages: 0, streamsMs: 0, streams: 0 };
  const pid = proxy.proc.pid!;
  for (let round = 0; round <= ROUNDS; round++) {
    const samples = Object.fromEntries(MODES.map((m) => [m, emptySamples()])) as Record<Mode, Samples>;
    for (let slice = 0; slice < SLICES; slice++) {
      const k = round * SLICES + slice;
      const rotated = MODES.map((_, i) => MODES[(i + k) % MODES.length]!);
      const order = k % 2 === 0 ? rotated : rotated.reverse();
      for (const mode of order) {
        const t = targets[mode];
        const s = samples[mode];
        const viaProxy = mode.startsWith('proxy') && round > 0;
        let cpu = cpuMs(pid);
        for (let i = 0; i < REQUESTS / SLICES; i++) s.lat.push(await message(t));
        if (viaProxy) {
          const c = cpuMs(pid);
          proxyCpu.messagesMs += c - cpu;
          proxyCpu.messages += REQUESTS / SLICES;
          cpu = c;
        }
        for (let i = 0; i < STREAMS / SLICES; i++) {
          const r = await stream(t);
          s.head.push(r.head);
          s.ttfb.push(r.ttfb);
          s.end.push(r.end);
          s.delay.push(...r.delays);
        }
        if (viaProxy) {
          proxyCpu.streamsMs += cpuMs(pid) - cpu;
          proxyCpu.streams += STREAMS / SLICES;
        }
      }
    }
    if (round === 0) continue; // warm-up
    const r = Object.fromEntries(MODES.map((m) => [m, stats(samples[m])])) as Record<Mode, RoundStats>;
    rounds.push(r);
    const ph = r['proxy-https'];
    const dh = r['direct-https'];
    console.log(
      `round ${round}: https p50 ${dh.p50.toFixed(3)} -> ${ph.p50.toFixed(3)} ms, ttfb ${dh.ttfb50.toFixed(3)} -> ${ph.ttfb50.toFixed(3)} ms; http p50 ${r['direct-http'].p50.toFixed(3)} -> ${r['proxy-http'].p50.toFixed(3)} ms`,
    );
  }

  await new Promise((r) => setTimeout(r, 300)); // the last audit line is written when its response has closed
  const auditLines = readFileSync(proxy.auditFile, 'utf8').split('\n').filter((l) => l.startsWith('{'));
  const fmt = (x: number) => x.toFixed(3);
  const fmtRange = (xs: number[]) => {
    const [lo, hi] = range(xs);
    return `${fmt(median(xs))} (${fmt(lo)}–${fmt(hi)})`;
  };
  const per = (mode: Mode, key: keyof RoundStats) => rounds.map((r) => r[mode][key]);
  const added = (mode: Mode, base: Mode, key: keyof RoundStats) => rounds.map((r) => r[mode][key] - r[base][key]);

  const rows: string[] = [];
  rows.push('| mode | message p50 ms | message p99 ms | stream head p50 ms | TTFB p50 ms | TTFB p99 ms | event delay p50 ms | event delay p99 ms | stream end p50 ms |');
  rows.push('|---|---|---|---|---|---|---|---|---|');
  for (const m of MODES) {
    rows.push(
      `| ${m} | ${fmt(median(per(m, 'p50')))} | ${fmt(median(per(m, 'p99')))} | ${fmt(median(per(m, 'head50')))} | ${fmt(median(per(m, 'ttfb50')))} | ${fmt(median(per(m, 'ttfb99')))} | ${fmt(median(per(m, 'delay50')))} | ${fmt(median(per(m, 'delay99')))} | ${fmt(median(per(m, 'end50')))} |`,
    );
  }
  const addedRows: string[] = [];
  addedRows.push('| through the proxy vs direct | added message p50 ms | added message p99 ms | added TTFB p50 ms | added TTFB p99 ms | added event delay p50 ms | added stream end p50 ms |');
  addedRows.push('|---|---|---|---|---|---|---|');
  for (const [m, base] of [
    ['proxy-http', 'direct-http'],
    ['proxy-https', 'direct-https'],
  ] as const) {
    addedRows.push(
      `| ${m} vs ${base} | ${fmtRange(added(m, base, 'p50'))} | ${fmtRange(added(m, base, 'p99'))} | ${fmtRange(added(m, base, 'ttfb50'))} | ${fmtRange(added(m, base, 'ttfb99'))} | ${fmtRange(added(m, base, 'delay50'))} | ${fmtRange(added(m, base, 'end50'))} |`,
    );
  }
  console.log(`\nmedians of ${ROUNDS} rounds:\n${rows.join('\n')}\n\nadded, per round, median (range) of ${ROUNDS} rounds:\n${addedRows.join('\n')}`);
  const proxied = 2 * (REQUESTS + STREAMS) * (ROUNDS + 1);
  const perUs = (ms: number, n: number) => (n > 0 ? ((ms * 1000) / n).toFixed(0) : '-');
  console.log(
    `\nproxy CPU (/proc/PID/stat, 10 ms ticks, counted rounds): ${perUs(proxyCpu.messagesMs, proxyCpu.messages)} µs per message, ${perUs(proxyCpu.streamsMs, proxyCpu.streams)} µs per stream of ${EVENTS} events; audit lines ${auditLines.length} for ${proxied} proxied requests (warm-up included)`,
  );
  if (auditLines.some((l) => l.includes(TOKEN))) throw new Error('a token in the audit');
  if (JSON_OUT) writeFileSync(JSON_OUT, JSON.stringify({ rounds, proxyCpu, proxied, auditLines: auditLines.length }, null, 2));
}

main()
  .catch((err: unknown) => {
    console.error(err);
    process.exitCode = 1;
  })
  .finally(() => {
    for (const c of children) c.kill('SIGTERM');
    rmSync(tmp, { recursive: true, force: true });
  });
