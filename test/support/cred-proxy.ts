import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { slugify } from '../../machines/names.js';
import { docker, SUITE_ID, subnetOf, suiteLabels } from './docker.js';
import { execAs } from './egress.js';
import { demux } from './images.js';
import { bottleFolder, type Needle, type Runtime, type SecBottle } from './security.js';

/**
 * Helpers for test/security/cred-proxy.test.ts: the cred-proxy sidecar in real bottles,
 * against fake model APIs of the suite's own.
 *
 * Network rule: every upstream is a container started here (Node from the sidecar image) on
 * the suite's own internal network, which leads nowhere. Once a bottle is up, the test
 * connects the upstream to that bottle's egress network under `.test` aliases only these
 * containers answer to; the cred-proxy reaches it there. The TLS certificates are made on
 * the host with openssl at test time and the CA is given to the routes as `ca: {file}`. No
 * test ever sends traffic to a public address.
 *
 * The agent's side of every probe runs in the agent's container (`docker exec` as its user,
 * with its environment, in its network namespace) as `node -e`, and prints one JSON document.
 * No probe carries a real token: the scanner gets only sha256 and length of each.
 */

// ---------------------------------------------------------------------------------------
// A test PKI: a CA and one server certificate for every name the fake APIs answer to

export interface Pki {
  dir: string;
  /** The CA's certificate (PEM file), for the routes' `ca: {file}`. */
  caFile: string;
  key: string;
  cert: string;
}

export function makePki(names: string[]): Pki {
  const dir = mkdtempSync(join(tmpdir(), 'bottle-cred-pki-'));
  const openssl = (args: string[]) =>
    execFileSync('openssl', args, {
      cwd: dir,
      stdio: ['ignore', 'ignore', 'pipe'],
    });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  openssl([
    'req',
    '-x509',
    ...ec,
    '-keyout',
    'ca.key',
    '-out',
    'ca.pem',
    '-days',
    '2',
    '-subj',
    '/CN=bot-bottle cred-proxy test CA',
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
  ]);
  writeFileSync(join(dir, 'server.ext'), `subjectAltName=${names.map((n) => `DNS:${n}`).join(',')}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n`);
  openssl(['req', '-new', ...ec, '-keyout', 'server.key', '-out', 'server.csr', '-subj', `/CN=${names[0]}`]);
  openssl(['x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'server.pem', '-days', '2', '-extfile', 'server.ext']);
  return {
    dir,
    caFile: join(dir, 'ca.pem'),
    key: readFileSync(join(dir, 'server.key'), 'utf8'),
    cert: readFileSync(join(dir, 'server.pem'), 'utf8'),
  };
}

// ---------------------------------------------------------------------------------------
// Fake model APIs

/**
 * A fake model API over TLS on 443 (Node 18 of the sidecar image). It prints one JSON line
 * per TCP connection (`{"kind":"conn"}`) and per request (`{"kind":"request", method, url,
 * headers: rawHeaders, body}`): the ground truth of what it received. Paths ending in
 * `/stream` answer ten server-sent events 200 ms apart (the first 200 ms after the head);
 * `/echo` answers the request's raw headers as JSON (an upstream that echoes a credential);
 * anything else a small message.
 */
const MODEL_API_JS = String.raw`const https = require('https');
const NAME = process.env.NAME;
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
let seq = 0;
const server = https.createServer({ key: process.env.TLS_KEY, cert: process.env.TLS_CERT }, (req, res) => {
  const chunks = [];
  req.on('data', (d) => chunks.push(d));
  req.on('end', () => {
    seq += 1;
    const n = seq;
    out({ kind: 'request', seq: n, at: Date.now(), method: req.method, url: req.url, headers: req.rawHeaders, body: Buffer.concat(chunks).toString('utf8') });
    const path = new URL(req.url, 'https://upstream').pathname;
    if (path.endsWith('/stream')) {
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
      res.flushHeaders();
      let i = 0;
      const timer = setInterval(() => {
        res.write('event: tick\ndata: {"i":' + i + ',"at":' + Date.now() + '}\n\n');
        i += 1;
        if (i === 10) { clearInterval(timer); res.end(); }
      }, 200);
      res.on('close', () => clearInterval(timer));
      return;
    }
    if (path.endsWith('/echo')) {
      const text = JSON.stringify({ name: NAME, headers: req.rawHeaders });
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
      res.end(text);
      return;
    }
    const text = JSON.stringify({ type: 'message', id: 'msg_' + n, model: NAME, content: [{ type: 'text', text: 'hello from ' + NAME }] });
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
    res.end(text);
  });
});
server.on('connection', (s) => out({ kind: 'conn', at: Date.now(), remote: String(s.remoteAddress) }));
server.on('tlsClientError', () => {});
server.listen(443, () => out({ kind: 'listening' }));
`;

export interface SeenRequest {
  kind: 'request';
  seq: number;
  at: number;
  method: string;
  url: string;
  /** Raw headers as received: name, value, name, value... */
  headers: string[];
  body: string;
}

export interface ModelApi {
  name: string;
  container: string;
  /** Every request it received so far, in order. */
  requests(): Promise<SeenRequest[]>;
  /** TCP connections it accepted so far. */
  connections(): Promise<number>;
}

/** Values of a raw header list for `name` (case-insensitive). */
export function headerValues(raw: string[], name: string): string[] {
  const out: string[] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) if (raw[i]!.toLowerCase() === name) out.push(raw[i + 1]!);
  return out;
}

/** The suite's network for its fake APIs: internal, so it leads nowhere. */
export const API_NETWORK = `bbt-${SUITE_ID}-cred-apis`;

async function stdoutOf(container: string): Promise<string> {
  const buf = (await docker().getContainer(container).logs({ stdout: true, stderr: true, follow: false })) as unknown as Buffer;
  return demux(buf).stdout;
}

async function linesOf(container: string): Promise<Record<string, unknown>[]> {
  return (await stdoutOf(container))
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

export async function createApiNetwork(): Promise<string> {
  await docker().createNetwork({
    Name: API_NETWORK,
    Driver: 'bridge',
    Internal: true,
    Labels: { ...suiteLabels },
    CheckDuplicate: true,
  });
  return API_NETWORK;
}

/** Starts a fake model API on the suite's network (alias `name`) and waits until it listens. */
export async function startModelApi(image: string, name: string, pki: Pki): Promise<ModelApi> {
  const container = `bbt-${SUITE_ID}-api-${name}`;
  const c = await docker().createContainer({
    name: container,
    Image: image,
    Entrypoint: ['node', '-e', MODEL_API_JS],
    Env: [`NAME=${name}`, `TLS_KEY=${pki.key}`, `TLS_CERT=${pki.cert}`],
    Labels: { ...suiteLabels },
    HostConfig: {
      NetworkMode: API_NETWORK,
      CapDrop: ['ALL'],
      SecurityOpt: ['no-new-privileges'],
      // Port 443 without root or a capability.
      Sysctls: { 'net.ipv4.ip_unprivileged_port_start': '0' },
    },
    NetworkingConfig: {
      EndpointsConfig: { [API_NETWORK]: { Aliases: [name] } },
    },
  });
  await c.start();
  const deadline = Date.now() + 30_000;
  while (!(await linesOf(container)).some((l) => l.kind === 'listening')) {
    if (Date.now() > deadline) throw new Error(`fake API ${name} did not start listening:\n${await stdoutOf(container)}`);
    await delay(100);
  }
  return {
    name,
    container,
    requests: async () => (await linesOf(container)).filter((l) => l.kind === 'request') as unknown as SeenRequest[],
    connections: async () => (await linesOf(container)).filter((l) => l.kind === 'conn').length,
  };
}

/**
 * Makes a fake API answer to `aliases` on the suite's network and puts a bottle's cred-proxy
 * there, where it can reach it (the bottle opts the network's subnet in with private_networks).
 */
export async function attachApi(api: ModelApi, proxy: string, aliases: string[]): Promise<void> {
  const net = docker().getNetwork(API_NETWORK);
  const info = (await net.inspect()) as { Containers?: Record<string, { Name?: string }> };
  const inspected = await docker().getContainer(api.container).inspect();
  const had = inspected.NetworkSettings.Networks[API_NETWORK]?.Aliases ?? [];
  const want = [...new Set([api.name, ...had, ...aliases])];
  if (!aliases.every((a) => had.includes(a))) {
    await net.disconnect({ Container: api.container, Force: true });
    await net.connect({ Container: api.container, EndpointConfig: { Aliases: want } });
  }
  if (!Object.values(info.Containers ?? {}).some((c) => c.Name === proxy)) await net.connect({ Container: proxy });
}

/** The suite API network's IPv4 subnet: what a cred bottle opts in (private_networks). */
export const apiSubnet = () => subnetOf(API_NETWORK);

/**
 * The positive control: from inside a container (the bottle's cred-proxy, as its own user), an
 * HTTPS GET to `host` that trusts any certificate. Returns `status body` or `error CODE`.
 */
export async function controlGet(container: string, host: string, path: string): Promise<string> {
  const code = `require('https').get({ host: process.argv[1], port: 443, path: process.argv[2], rejectUnauthorized: false, timeout: 5000 }, (res) => {
  let b = ''; res.on('data', (d) => (b += d)); res.on('end', () => console.log(res.statusCode + ' ' + b));
}).on('error', (e) => console.log('error ' + (e.code || e.message))).on('timeout', function () { this.destroy(new Error('timeout')); });`;
  const r = await execAs(container, '', ['node', '-e', code, host, path]);
  return r.stdout.trim() || `exit ${r.code}: ${r.stderr.trim()}`;
}

// ---------------------------------------------------------------------------------------
// Bottles

export interface RouteSpec {
  path: string;
  upstream: string;
  token: { env: string } | { file: string };
  inject: { header: string; format: string };
  roles?: string[];
  ca?: { file: string };
}

export const BOTTLE_NAME = 'cred';

export function credAgentName(tag: string): string {
  return slugify(`cred-${SUITE_ID}-${tag}`);
}

/**
 * The agent's main process: says what it holds (the agent-side variables are not secrets) and
 * that it is up, then waits to be stopped. The probes run beside it with `docker exec`.
 */
export const AGENT_SCRIPT = String.raw`printf 'RESULT uid=%s\n' "$(id -u)"
printf 'RESULT base_url=%s\n' "$ANTHROPIC_BASE_URL"
printf 'RESULT oauth_token=%s\n' "$CLAUDE_CODE_OAUTH_TOKEN"
echo 'RESULT ready=yes'
trap 'exit 0' TERM
sleep 3600 &
wait
`;

/** A bottle with its own folder, BOTTLE_HOME and manifest, with `routes` for its cred-proxy. */
export function newCredBottle(opts: { tag: string; routes: RouteSpec[]; hostEnv?: Record<string, string>; runtime?: Runtime; privateNetworks?: string[] }): SecBottle {
  return bottleFolder({
    prefix: 'bottle-cred-',
    agent: credAgentName(opts.tag),
    bottle: BOTTLE_NAME,
    config: { runtime: opts.runtime ?? 'runc', cred_proxy: { routes: opts.routes }, ...(opts.privateNetworks ? { private_networks: opts.privateNetworks } : {}) },
    prompt: 'probe the cred-proxy',
    script: AGENT_SCRIPT,
    ...(opts.hostEnv ? { hostEnv: opts.hostEnv } : {}),
  });
}

/** Writes a token file the way a user would keep one: 0600, trailing newline. */
export function writeToken(file: string, token: string): void {
  writeFileSync(file, `${token}\n`, { mode: 0o600 });
}

/** Rotates a token file: a new file beside it, renamed over the old path. */
export function rotateToken(file: string, token: string): void {
  writeToken(`${file}.next`, token);
  renameSync(`${file}.next`, file);
}

/** What the cred-proxy shows instead of a token: the first 8 hex digits of its sha256. */
export function fingerprint(token: string): string {
  return createHash('sha256').update(token).digest('hex').slice(0, 8);
}

/** The bottle's agent container (by its role label). */
export async function agentContainer(identity: string): Promise<string> {
  const list = await docker().listContainers({
    filters: {
      label: [`bot-bottle.identity=${identity}`, 'bot-bottle.role=agent'],
    },
  });
  if (list.length !== 1) throw new Error(`expected one running agent container of ${identity}, found ${list.length}`);
  return list[0]!.Id;
}

/**
 * Runs a probe in the agent's container as the agent and parses the one JSON document it
 * prints; `env` is added to the probe's environment (through `env`, which then runs node).
 */
export async function agentProbe<T>(container: string, code: string, args: string[] = [], env: Record<string, string> = {}): Promise<T> {
  const vars = Object.entries(env).map(([k, v]) => `${k}=${v}`);
  const r = await execAs(container, '', [...(vars.length > 0 ? ['env', ...vars] : []), 'node', '-e', code, ...args]);
  try {
    return JSON.parse(r.stdout) as T;
  } catch {
    throw new Error(`agent probe printed no JSON (exit ${r.code}):\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`);
  }
}

// ---------------------------------------------------------------------------------------
// Agent-side probes (Node in the agent image; `node -e CODE ARG`: ARG is process.argv[1])

/** What the agent holds: its uid, and the variables CONTRACT.md gives it. */
export const ENV_PROBE = `console.log(JSON.stringify({
  uid: process.getuid(),
  base_url: process.env.ANTHROPIC_BASE_URL ?? null,
  oauth_token: process.env.CLAUDE_CODE_OAUTH_TOKEN ?? null,
  api_key: process.env.ANTHROPIC_API_KEY ?? null,
  nonessential: process.env.CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC ?? null,
}));`;

export interface AgentRequest {
  key: string;
  /** An HTTP request to cred-proxy:9099. `{base}` in the path is ANTHROPIC_BASE_URL's path, `{placeholder}` anywhere is CLAUDE_CODE_OAUTH_TOKEN. */
  method?: string;
  path?: string;
  headers?: Record<string, string>;
  body?: string;
  /** Or raw bytes written to cred-proxy:9099 (absolute-form, CONNECT), answered up to the connection's end. */
  raw?: string;
}

export interface AgentReply {
  key: string;
  status: number;
  headers: Record<string, string | string[]>;
  body: string;
  error?: string;
}

/** Sends each request of argv[1] (JSON AgentRequest[]) in turn; prints the replies. */
export const REQUESTS_PROBE = String.raw`const http = require('http');
const net = require('net');
const specs = JSON.parse(process.argv[1]);
const placeholder = process.env.CLAUDE_CODE_OAUTH_TOKEN || '';
const basePath = new URL(process.env.ANTHROPIC_BASE_URL || 'http://cred-proxy:9099').pathname.replace(/\/$/, '');
const fill = (s) => String(s).split('{placeholder}').join(placeholder).split('{base}').join(basePath);
const one = (spec) => new Promise((resolve) => {
  if (spec.raw !== undefined) {
    const s = net.connect(9099, 'cred-proxy');
    let data = '';
    s.setTimeout(5000, () => s.destroy());
    s.on('connect', () => s.write(fill(spec.raw)));
    s.on('data', (d) => (data += d));
    s.on('close', () => {
      const m = /^HTTP\/1\.[01] (\d{3})/.exec(data);
      resolve({ key: spec.key, status: m ? Number(m[1]) : 0, headers: {}, body: data.slice(data.indexOf('\r\n\r\n') + 4) });
    });
    s.on('error', (e) => resolve({ key: spec.key, status: 0, headers: {}, body: '', error: e.code || e.message }));
    return;
  }
  const headers = {};
  for (const [k, v] of Object.entries(spec.headers || {})) headers[k] = fill(v);
  const req = http.request({ host: 'cred-proxy', port: 9099, method: spec.method || 'GET', path: fill(spec.path), headers, timeout: 10000 }, (res) => {
    let body = '';
    res.on('data', (d) => (body += d));
    res.on('end', () => resolve({ key: spec.key, status: res.statusCode, headers: res.headers, body }));
  });
  req.on('timeout', () => req.destroy(new Error('timeout')));
  req.on('error', (e) => resolve({ key: spec.key, status: 0, headers: {}, body: '', error: e.code || e.message }));
  req.end(spec.body === undefined ? undefined : fill(spec.body));
});
(async () => {
  const out = [];
  for (const spec of specs) out.push(await one(spec));
  console.log(JSON.stringify(out));
})();
`;

export interface StreamRead {
  /** ms since the request was sent */
  ms: number;
  text: string;
}

export interface StreamResult {
  status: number;
  contentType: string;
  /** ms from the request to the response head */
  headMs: number;
  reads: StreamRead[];
  endMs: number;
}

/** A streamed POST to ANTHROPIC_BASE_URL + argv[1], as an SDK sends one; every body read timestamped. */
export const STREAM_PROBE = `const http = require('http');
const { performance } = require('perf_hooks');
const base = new URL(process.env.ANTHROPIC_BASE_URL);
const body = JSON.stringify({ model: 'test', stream: true, messages: [{ role: 'user', content: 'count to ten' }] });
const t0 = performance.now();
const req = http.request({
  host: base.hostname, port: Number(base.port), method: 'POST', path: base.pathname + process.argv[1],
  headers: { 'x-probe': 'stream', authorization: 'Bearer ' + process.env.CLAUDE_CODE_OAUTH_TOKEN, 'content-type': 'application/json', accept: 'text/event-stream', 'content-length': Buffer.byteLength(body) },
}, (res) => {
  const headMs = performance.now() - t0;
  const reads = [];
  res.on('data', (d) => reads.push({ ms: performance.now() - t0, text: d.toString('utf8') }));
  res.on('end', () => console.log(JSON.stringify({ status: res.statusCode, contentType: res.headers['content-type'] || '', headMs, reads, endMs: performance.now() - t0 })));
});
req.on('error', (e) => console.log(JSON.stringify({ status: 0, contentType: '', headMs: 0, reads: [], endMs: 0, error: e.code || e.message })));
req.end(body);
`;

export interface ScanResult {
  /** Every place a needle was found, per label. */
  found: Record<string, string[]>;
  files_read: number;
  bytes_read: number;
  files_unreadable: number;
  environ_read: number;
  cmdline_read: number;
  pids: number;
  env_vars: number;
}

/**
 * Looks for secrets by hash (argv[1]: {label: {sha, len}}; every secret starts with `bbsec-`):
 * in the agent's own environment, every /proc/PID/environ and /proc/PID/cmdline it can read,
 * and every regular file it can read anywhere under / except /proc and /sys (what `grep -r /`
 * with those excluded would read). Files are read in 16 MiB pieces that overlap by a needle's length.
 */
export const SCAN_PROBE = String.raw`const fs = require('fs');
const path = require('path');
const crypto = require('crypto');
const needles = JSON.parse(process.argv[1]);
const PREFIX = Buffer.from('bbsec-');
const maxLen = Math.max(...Object.values(needles).map((n) => n.len));
const found = {};
for (const k of Object.keys(needles)) found[k] = new Set();
const sha = (b) => crypto.createHash('sha256').update(b).digest('hex');
function scan(where, buf) {
  for (let i = buf.indexOf(PREFIX); i !== -1; i = buf.indexOf(PREFIX, i + 1)) {
    for (const [k, n] of Object.entries(needles)) {
      if (i + n.len <= buf.length && sha(buf.subarray(i, i + n.len)) === n.sha) found[k].add(where);
    }
  }
}
let envVars = 0;
for (const [k, v] of Object.entries(process.env)) { envVars++; scan('env:' + k, Buffer.from(k + '=' + v)); }
let environs = 0;
let cmdlines = 0;
const pids = fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d));
for (const pid of pids) {
  try { scan('environ:' + pid, fs.readFileSync('/proc/' + pid + '/environ')); environs++; } catch (e) { /* not ours or gone */ }
  try { scan('cmdline:' + pid, fs.readFileSync('/proc/' + pid + '/cmdline')); cmdlines++; } catch (e) { /* gone */ }
}
let files = 0;
let bytes = 0;
let unreadable = 0;
const PIECE = 16 * 1024 * 1024;
const piece = Buffer.alloc(PIECE + maxLen);
function readFile(p) {
  let fd;
  try { fd = fs.openSync(p, 'r'); } catch (e) { unreadable++; return; }
  try {
    let pos = 0;
    for (;;) {
      const n = fs.readSync(fd, piece, 0, piece.length, pos);
      if (n <= 0) break;
      scan('file:' + p, piece.subarray(0, n));
      bytes += n;
      if (n < piece.length) break;
      pos += PIECE;
    }
    files++;
  } catch (e) {
    unreadable++;
  } finally {
    fs.closeSync(fd);
  }
}
function walk(dir) {
  let names;
  try { names = fs.readdirSync(dir); } catch (e) { unreadable++; return; }
  for (const name of names) {
    const p = path.join(dir, name);
    if (p === '/proc' || p === '/sys') continue;
    let st;
    try { st = fs.lstatSync(p); } catch (e) { continue; }
    if (st.isDirectory()) walk(p);
    else if (st.isFile()) readFile(p);
  }
}
walk('/');
const out = {};
for (const k of Object.keys(needles)) out[k] = [...found[k]];
console.log(JSON.stringify({ found: out, files_read: files, bytes_read: bytes, files_unreadable: unreadable, environ_read: environs, cmdline_read: cmdlines, pids: pids.length, env_vars: envVars }));
`;

export type { Needle };
