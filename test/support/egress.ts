import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { DEFAULT_SOCKET } from '../../effects/docker/client.js';
import { slugify } from '../../machines/names.js';
import { docker, execIn, SUITE_ID, subnetOf, suiteLabels } from './docker.js';
import { demux } from './images.js';
import { bottleFolder, type Runtime, type SecBottle } from './security.js';

/**
 * Helpers for test/security/egress*.test.ts: the egress sidecar against upstream servers of
 * the suite's own, from adversarial agents in real bottles.
 *
 * Network rule: every upstream is a container started here on the suite's own internal
 * network (it leads nowhere), reached by `.test` aliases that only these containers answer
 * to. The egress sidecar of a bottle joins that network; no test ever sends traffic to a
 * public address or to a private address that is not one of the suite's containers.
 */

// ---------------------------------------------------------------------------------------
// Bottles

export interface EgressBottleOptions {
  /** Short tag for the agent name; the suite id makes it unique. */
  tag: string;
  /** The manifest's bottles.<bottle>.egress.allow. */
  allow: string[];
  script: string;
  runtime?: Runtime;
  /** Extra variables in the CLI's environment (DOCKER_HOST for a fault-injecting endpoint). */
  hostEnv?: Record<string, string>;
  /** The manifest's private_networks: the subnet of the suite's upstream network when the bottle reaches it. */
  privateNetworks?: string[];
}

/** The bottle's name in the manifest (the 403 hint names bottles.<this>.egress.allow). */
export const BOTTLE_NAME = 'probe';

export function egressAgentName(tag: string): string {
  return slugify(`egress-${SUITE_ID}-${tag}`);
}

/** A bottle with its own folder, BOTTLE_HOME and manifest; the agent runs `script` under bash. */
export function newEgressBottle(opts: EgressBottleOptions): SecBottle {
  return bottleFolder({
    prefix: 'bottle-egress-',
    agent: egressAgentName(opts.tag),
    bottle: BOTTLE_NAME,
    config: { runtime: opts.runtime ?? 'runc', egress: { allow: opts.allow }, ...(opts.privateNetworks ? { private_networks: opts.privateNetworks } : {}) },
    prompt: 'probe the egress proxy',
    script: opts.script,
    ...(opts.hostEnv ? { hostEnv: opts.hostEnv } : {}),
  });
}

// ---------------------------------------------------------------------------------------
// Upstream servers

/**
 * One upstream: a Node server (the sidecar image's node) on each of PORTS (`80`, `443/tls`),
 * answering `hello from NAME port P host H` to any request, and on `/slow?n=N` N KiB, one
 * every 100 ms. It prints `CONN port remote-address` for every TCP connection it accepts
 * (before any TLS handshake): the ground truth of who reached it.
 */
const UPSTREAM_JS = String.raw`const http = require('http');
const https = require('https');
const NAME = process.env.NAME;
const out = (line) => process.stdout.write(line + '\n');
const plain = (a) => String(a).replace(/^::ffff:(?=\d+\.\d+\.\d+\.\d+$)/, '');
const handler = (port) => (req, res) => {
  out('REQ ' + port + ' ' + req.method + ' ' + req.url + ' host=' + req.headers.host);
  const url = new URL(req.url, 'http://upstream');
  if (url.pathname === '/slow') {
    const n = Number(url.searchParams.get('n') || 80);
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(n * 1024) });
    let i = 0;
    const send = () => {
      res.write(Buffer.alloc(1024, 97 + (i % 26)));
      i += 1;
      if (i >= n) { clearInterval(timer); res.end(); }
    };
    const timer = setInterval(send, 100);
    send();
    res.on('close', () => clearInterval(timer));
    return;
  }
  const body = 'hello from ' + NAME + ' port ' + port + ' host ' + req.headers.host + '\n';
  res.writeHead(200, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body) });
  res.end(body);
};
for (const spec of process.env.PORTS.split(',')) {
  const [port, tls] = spec.split('/');
  const server = tls === 'tls'
    ? https.createServer({ key: process.env.TLS_KEY, cert: process.env.TLS_CERT }, handler(port))
    : http.createServer(handler(port));
  server.on('connection', (s) => out('CONN ' + port + ' ' + plain(s.remoteAddress)));
  server.on('tlsClientError', () => {});
  server.listen(Number(port), () => out('LISTENING ' + port));
}
`;

export interface UpstreamSpec {
  /** Short name, also the NAME the server answers with. */
  name: string;
  /** Network aliases on the suite's upstream network. */
  aliases: string[];
  /** Ports, `443/tls` for TLS (needs `tls`). */
  ports: string[];
  tls?: { key: string; cert: string };
}

export interface Connection {
  port: number;
  remote: string;
}

export interface Upstream {
  name: string;
  container: string;
  id: string;
  /** Its address on the suite's upstream network. */
  ip: string;
  /** Every TCP connection it accepted so far, in order. */
  connections(): Promise<Connection[]>;
  /** Its whole stdout. */
  output(): Promise<string>;
}

export interface UpstreamNet {
  network: string;
  /** Its IPv4 subnet, which a bottle that reaches these upstreams opts in (private_networks). */
  subnet: string;
  upstreams: Record<string, Upstream>;
}

/** The network every upstream of this suite is on; internal, so it leads nowhere. */
export const UPSTREAM_NETWORK = `bbt-${SUITE_ID}-egress-up`;

async function containerStdout(id: string): Promise<string> {
  const buf = (await docker().getContainer(id).logs({ stdout: true, stderr: true, follow: false })) as unknown as Buffer;
  return demux(buf).stdout;
}

/** Starts every upstream on the suite's network and waits until each listens on all its ports. */
export async function startUpstreams(image: string, specs: UpstreamSpec[]): Promise<UpstreamNet> {
  await docker().createNetwork({ Name: UPSTREAM_NETWORK, Driver: 'bridge', Internal: true, Labels: { ...suiteLabels }, CheckDuplicate: true });
  const started = await Promise.all(
    specs.map(async (spec): Promise<Upstream> => {
      const container = `bbt-${SUITE_ID}-up-${spec.name}`;
      const env = [`NAME=${spec.name}`, `PORTS=${spec.ports.join(',')}`];
      if (spec.tls) env.push(`TLS_KEY=${spec.tls.key}`, `TLS_CERT=${spec.tls.cert}`);
      const c = await docker().createContainer({
        name: container,
        Image: image,
        Entrypoint: ['node', '-e', UPSTREAM_JS],
        Env: env,
        Labels: { ...suiteLabels },
        HostConfig: {
          NetworkMode: UPSTREAM_NETWORK,
          CapDrop: ['ALL'],
          SecurityOpt: ['no-new-privileges'],
          // Ports 80 and 443 without root or a capability.
          Sysctls: { 'net.ipv4.ip_unprivileged_port_start': '0' },
        },
        NetworkingConfig: { EndpointsConfig: { [UPSTREAM_NETWORK]: { Aliases: spec.aliases } } },
      });
      await c.start();
      const output = () => containerStdout(c.id);
      const deadline = Date.now() + 30_000;
      for (;;) {
        const text = await output();
        if (spec.ports.every((p) => text.includes(`LISTENING ${p.split('/')[0]}\n`))) break;
        if (Date.now() > deadline) throw new Error(`upstream ${spec.name} did not start listening:\n${text}`);
        await delay(100);
      }
      const info = await c.inspect();
      const ip = info.NetworkSettings.Networks[UPSTREAM_NETWORK]?.IPAddress;
      if (!ip) throw new Error(`upstream ${spec.name} has no address on ${UPSTREAM_NETWORK}`);
      const connections = async () =>
        (await output())
          .split('\n')
          .filter((l) => l.startsWith('CONN '))
          .map((l) => {
            const [, port, remote] = l.split(' ');
            return { port: Number(port), remote: remote ?? '' };
          });
      return { name: spec.name, container, id: c.id, ip, connections, output };
    }),
  );
  return { network: UPSTREAM_NETWORK, subnet: await subnetOf(UPSTREAM_NETWORK), upstreams: Object.fromEntries(started.map((u) => [u.name, u])) };
}

/**
 * The positive control: a peer of the suite's own on the upstream network asks every
 * `host:port[/tls]` target, so "the server saw nothing" later means the proxy stopped the
 * request, not that the server was deaf. Returns one line per target: `target answer|error`.
 */
export async function controlRequests(image: string, network: string, targets: string[]): Promise<string[]> {
  const code = `const http = require('http');
const https = require('https');
const one = (t) => new Promise((resolve) => {
  const [hostPort, tls] = t.split('/');
  const [host, port] = hostPort.split(':');
  const mod = tls === 'tls' ? https : http;
  const req = mod.get({ host, port: Number(port), path: '/', rejectUnauthorized: false, timeout: 5000 }, (res) => {
    let body = '';
    res.on('data', (d) => (body += d));
    res.on('end', () => resolve(t + ' ' + res.statusCode + ' ' + body.trim()));
  });
  req.on('timeout', () => req.destroy(new Error('timeout')));
  req.on('error', (e) => resolve(t + ' error ' + (e.code || e.message)));
});
(async () => { for (const t of process.argv.slice(1)) console.log(await one(t)); })();`;
  const c = await docker().createContainer({
    name: `bbt-${SUITE_ID}-control-${Math.random().toString(16).slice(2, 8)}`,
    Image: image,
    Entrypoint: ['node', '-e', code],
    Cmd: targets,
    Labels: { ...suiteLabels },
    HostConfig: { NetworkMode: network, CapDrop: ['ALL'], SecurityOpt: ['no-new-privileges'] },
  });
  try {
    await c.start();
    await c.wait();
    return (await containerStdout(c.id)).split('\n').filter(Boolean);
  } finally {
    await c.remove({ force: true });
  }
}

/** A self-signed certificate for `cn` (with it as subjectAltName), made on the host with openssl. */
export function selfSignedCert(cn: string): { key: string; cert: string } {
  const dir = mkdtempSync(join(tmpdir(), 'bottle-egress-cert-'));
  try {
    execFileSync(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'rsa:2048',
        '-nodes',
        '-days',
        '2',
        '-subj',
        `/CN=${cn}`,
        '-addext',
        `subjectAltName=DNS:${cn}`,
        '-keyout',
        join(dir, 'key.pem'),
        '-out',
        join(dir, 'cert.pem'),
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    return { key: readFileSync(join(dir, 'key.pem'), 'utf8'), cert: readFileSync(join(dir, 'cert.pem'), 'utf8') };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------------------
// Docker: wiring a bottle to the upstreams, and reaching into its egress sidecar

export async function connectNetwork(network: string, container: string, aliases: string[] = []): Promise<void> {
  await docker()
    .getNetwork(network)
    .connect({ Container: container, ...(aliases.length ? { EndpointConfig: { Aliases: aliases } } : {}) });
}

/** A container's address on `network`. */
export async function addressOn(container: string, network: string): Promise<string> {
  const info = await docker().getContainer(container).inspect();
  const ip = info.NetworkSettings.Networks[network]?.IPAddress;
  if (!ip) throw new Error(`${container} has no address on ${network}`);
  return ip;
}

/** The gateway address Docker gives `network` (the host's side of its bridge). */
export async function gatewayOf(network: string): Promise<string> {
  const info = (await docker().getNetwork(network).inspect()) as { IPAM?: { Config?: { Gateway?: string }[] } };
  const gateway = info.IPAM?.Config?.find((c) => c.Gateway)?.Gateway;
  if (!gateway) throw new Error(`network ${network} has no gateway`);
  return gateway;
}

/** Every IPv4 address a container has, on any network. */
export async function addressesOf(container: string): Promise<string[]> {
  const info = await docker().getContainer(container).inspect();
  return Object.values(info.NetworkSettings.Networks)
    .map((n) => n.IPAddress)
    .filter(Boolean);
}

export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `cmd` in a running container as `user`. */
export function execAs(container: string, user: string, cmd: string[]): Promise<ExecResult> {
  return execIn(container, cmd, { user });
}

/** Appends `address name` lines to a container's /etc/hosts (as root: the file is root's). */
export async function addHostsEntries(container: string, entries: Record<string, string>): Promise<void> {
  const lines = Object.entries(entries).map(([name, address]) => `${address} ${name}\n`);
  const r = await execAs(container, '0', ['sh', '-c', 'printf "%s" "$1" >> /etc/hosts', 'sh', lines.join('')]);
  if (r.code !== 0) throw new Error(`could not add hosts entries to ${container}: ${r.stderr}`);
}

/**
 * A safety net for the network rule: a blackhole route for `cidr` in the container's network
 * namespace, set by a one-shot helper with NET_ADMIN that joins it (the way the product's own
 * route fixer works). A proxy that wrongly dialled such an address gets an error at once, and
 * nothing leaves the machine.
 */
export async function blackholeRoute(container: string, image: string, cidr: string): Promise<void> {
  const c = await docker().createContainer({
    name: `bbt-${SUITE_ID}-blackhole-${Math.random().toString(16).slice(2, 8)}`,
    Image: image,
    User: '0:0',
    Entrypoint: ['sh', '-c', 'ip route add blackhole "$1" && ip route show type blackhole', 'sh', cidr],
    Labels: { ...suiteLabels },
    HostConfig: { NetworkMode: `container:${container}`, CapDrop: ['ALL'], CapAdd: ['NET_ADMIN'], SecurityOpt: ['no-new-privileges'] },
  });
  try {
    await c.start();
    const { StatusCode } = (await c.wait()) as { StatusCode: number };
    const text = await containerStdout(c.id);
    if (StatusCode !== 0 || !text.includes(cidr.split('/')[0]!)) throw new Error(`could not add a blackhole route for ${cidr} in ${container} (exit ${StatusCode}): ${text}`);
  } finally {
    await c.remove({ force: true });
  }
}

export interface ContainerState {
  id: string;
  startedAt: string;
  restartCount: number;
  running: boolean;
}

export async function containerState(container: string): Promise<ContainerState> {
  const info = await docker().getContainer(container).inspect();
  return { id: info.Id, startedAt: info.State.StartedAt, restartCount: info.RestartCount, running: info.State.Running };
}

/** A container's stderr (the egress sidecar's diagnostics; its stdout carries the audit lines). */
export async function containerStderr(container: string): Promise<string> {
  const buf = (await docker().getContainer(container).logs({ stdout: false, stderr: true, follow: false })) as unknown as Buffer;
  return demux(buf).stderr;
}

// ---------------------------------------------------------------------------------------
// The audit

export interface EgressAuditEntry {
  at: number;
  source: string;
  type: string;
  method: string | null;
  host: string | null;
  port: number | null;
  decision: 'allow' | 'deny';
  rule: string | null;
  reason: string;
  status?: number;
  bytes_up: number;
  bytes_down: number;
  run?: string;
  error?: string;
  client: string;
}

/** The egress entries of a `bottle audit --json` timeline. */
export function egressEntries(timeline: Record<string, unknown>[]): EgressAuditEntry[] {
  return timeline.filter((e) => e.source === 'egress') as unknown as EgressAuditEntry[];
}

/** `METHOD host:port decision status`: what identifies one decision of the probes. */
export function decisionKey(e: Pick<EgressAuditEntry, 'method' | 'host' | 'port' | 'decision' | 'status'>): string {
  return `${e.method} ${e.host}:${e.port} ${e.decision} ${e.status ?? '-'}`;
}

// ---------------------------------------------------------------------------------------
// A Docker endpoint that breaks the egress sidecar (fault injection without product hooks)

export interface TamperingDockerHost {
  /** For the CLI's DOCKER_HOST. */
  dockerHost: string;
  /** `METHOD path?query` of every request the CLI (and its owner process) made. */
  readonly requests: string[];
  close(): Promise<void>;
}

type CreateBody = { Env?: string[]; Cmd?: string[]; [k: string]: unknown };

/**
 * A Docker API endpoint on a unix socket of our own that forwards everything to the local
 * daemon, except that the body of `POST /containers/create?name=<container>` goes through
 * `rewrite` first. The CLI honours DOCKER_HOST (CONTRACT.md), so a test can make one
 * container of a bottle start differently without any hook in the product.
 */
export async function tamperingDockerHost(container: string, rewrite: (body: CreateBody) => CreateBody): Promise<TamperingDockerHost> {
  const dir = mkdtempSync(join(tmpdir(), 'bottle-egress-docker-'));
  const socket = join(dir, 'docker.sock');
  const requests: string[] = [];
  const CREATE = /^(?:\/v[0-9.]+)?\/containers\/create\?(.*)$/;

  const server = http.createServer((req, res) => {
    requests.push(`${req.method} ${req.url}`);
    const m = req.method === 'POST' ? CREATE.exec(req.url ?? '') : null;
    const tamper = m !== null && new URLSearchParams(m[1]).get('name') === container;
    const forward = (body?: Buffer) => {
      const headers = { ...req.headers };
      if (body) {
        headers['content-length'] = String(body.length);
        delete headers['transfer-encoding'];
      }
      const upstream = http.request({ socketPath: DEFAULT_SOCKET, path: req.url, method: req.method, headers }, (up) => {
        res.writeHead(up.statusCode ?? 502, up.headers);
        up.pipe(res);
      });
      upstream.on('error', (err) => {
        if (!res.headersSent) res.writeHead(502, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ message: `egress test docker endpoint: ${err.message}` }));
      });
      if (body) upstream.end(body);
      else req.pipe(upstream);
    };
    if (!tamper) {
      forward();
      return;
    }
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = rewrite(JSON.parse(Buffer.concat(chunks).toString('utf8')) as CreateBody);
      forward(Buffer.from(JSON.stringify(body)));
    });
  });
  // Attach and exec streams that ask for a protocol upgrade are passed through as raw bytes.
  server.on('upgrade', (req: http.IncomingMessage, client: net.Socket, head: Buffer) => {
    requests.push(`${req.method} ${req.url}`);
    const upstream = net.connect(DEFAULT_SOCKET);
    const lines = [`${req.method} ${req.url} HTTP/${req.httpVersion}`];
    for (let i = 0; i < req.rawHeaders.length; i += 2) lines.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}`);
    upstream.write(`${lines.join('\r\n')}\r\n\r\n`);
    if (head.length) upstream.write(head);
    client.pipe(upstream).pipe(client);
    upstream.on('error', () => client.destroy());
    client.on('error', () => upstream.destroy());
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socket, resolve);
  });
  return {
    dockerHost: `unix://${socket}`,
    requests,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => {
          rmSync(dir, { recursive: true, force: true });
          resolve();
        });
      }),
  };
}
