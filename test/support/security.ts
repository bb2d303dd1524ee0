import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { expect } from 'vitest';
import type Docker from 'dockerode';
import { slugify } from '../../machines/names.js';
import { LABEL, type Labels } from '../../machines/ports.js';
import { bottle, type CliResult, MAIN } from './cli.js';
import { assertNothingLabelled, docker, listLabelled, removeAllLabelled, SUITE_ID, suiteLabels } from './docker.js';
import { demux } from './images.js';

/**
 * Helpers for test/security: adversarial agent scripts in real bottles, launched through
 * the built CLI against real Docker. An agent script reports what it found as lines
 * `RESULT key=value` (and `DUMP name line` for whole files, analysed here rather than in
 * bash), so every verdict is taken on the host from what the agent itself could see.
 *
 * Network rule: the scripts only ever address the bottle's own sidecars, the bottle's own
 * internal network (its gateway address) and containers this suite starts.
 */

// ---------------------------------------------------------------------------------------
// Manifests and the CLI

export type Runtime = 'auto' | 'runsc' | 'runc';

export interface SecBottle {
  agent: string;
  dir: string;
  home: string;
  manifest: string;
  /** The CLI's whole environment (no inherited variables besides PATH and HOME). */
  env: Record<string, string>;
  /** --cwd project, when the bottle copies one in. */
  cwd?: string;
}

export interface BottleOptions {
  /** Short tag for the agent name; the suite id makes it unique. */
  tag: string;
  runtime: Runtime;
  script: string;
  /** The egress allowlist (default: allowed.test). */
  allow?: string[];
  /** The bottle's `env:` block. */
  manifestEnv?: Record<string, { value: string } | { from_host: string }>;
  /** Extra variables in the CLI's own environment (the "host" environment). */
  hostEnv?: Record<string, string>;
  cwd?: string;
  /** The manifest's private_networks (the subnet of a suite network whose servers the bottle reaches). */
  privateNetworks?: string[];
}

/** Agent names are unique per suite and per test, so identities (and labels) never collide. */
export function agentName(tag: string): string {
  return slugify(`sec-${SUITE_ID}-${tag}`);
}

/**
 * A bottle of a test file: a temp folder with its own BOTTLE_HOME and a manifest (JSON, which is
 * YAML, so a script needs no quoting) of one bottle and one agent that runs `script` under bash.
 */
export function bottleFolder(opts: {
  /** Prefix of the temp folder's name. */
  prefix: string;
  agent: string;
  bottle: string;
  /** The bottle's manifest entry. */
  config: Record<string, unknown>;
  prompt: string;
  script: string;
  hostEnv?: Record<string, string>;
  cwd?: string;
}): SecBottle {
  const dir = mkdtempSync(join(tmpdir(), opts.prefix));
  const home = join(dir, 'home');
  mkdirSync(home);
  const manifest = {
    version: 1,
    bottles: { [opts.bottle]: opts.config },
    agents: { [opts.agent]: { bottle: opts.bottle, prompt: opts.prompt, command: ['bash', '-c', opts.script] } },
  };
  const file = join(dir, 'bottle.json');
  writeFileSync(file, JSON.stringify(manifest, null, 2));
  return {
    agent: opts.agent,
    dir,
    home,
    manifest: file,
    env: { BOTTLE_HOME: home, BOTTLE_BASE_SOURCE: 'bootstrap', ...(opts.hostEnv ?? {}) },
    ...(opts.cwd ? { cwd: opts.cwd } : {}),
  };
}

export function newBottle(opts: BottleOptions): SecBottle {
  return bottleFolder({
    prefix: 'bottle-sec-',
    agent: agentName(opts.tag),
    bottle: 'sec',
    config: {
      runtime: opts.runtime,
      egress: { allow: opts.allow ?? ['allowed.test'] },
      ...(opts.manifestEnv ? { env: opts.manifestEnv } : {}),
      ...(opts.privateNetworks ? { private_networks: opts.privateNetworks } : {}),
    },
    prompt: 'probe the bottle',
    script: opts.script,
    ...(opts.hostEnv ? { hostEnv: opts.hostEnv } : {}),
    ...(opts.cwd ? { cwd: opts.cwd } : {}),
  });
}

function runArgs(b: SecBottle, extra: string[] = []): string[] {
  return ['run', b.agent, '-f', b.manifest, ...(b.cwd ? ['--cwd', b.cwd] : []), ...extra];
}

export function cli(b: SecBottle, args: string[]): Promise<CliResult> {
  return bottle(args, { cwd: b.dir, env: b.env });
}

/** The identity the CLI gives this bottle (with --cwd it carries a hash of the folder). */
export async function identityOf(b: SecBottle): Promise<string> {
  const r = await cli(b, ['plan', b.agent, '-f', b.manifest, ...(b.cwd ? ['--cwd', b.cwd] : []), '--json']);
  if (r.code !== 0) throw new Error(`bottle plan failed (${r.code}): ${r.stderr}`);
  return (JSON.parse(r.stdout) as { identity: string }).identity;
}

export interface AttachedRun extends CliResult {
  /** What `onReady` returned (host-side observations made while the agent ran). */
  observed: unknown;
}

/** Attached runs still in flight, so a failed test can end them (by pid, never by name). */
const children = new Set<ChildProcessWithoutNullStreams>();

/**
 * `bottle run` attached, as a user runs it. When the agent prints `RESULT ready=yes` the
 * agent container is running and blocked on its stdin: `onReady` inspects the live bottle
 * and returns `{ stdin, observed }`; `stdin` is written to the CLI's stdin, which the CLI
 * forwards to the agent.
 */
export function runAttached(
  b: SecBottle,
  onReady?: () => Promise<{ stdin: string; observed?: unknown }>,
  timeoutMs = 110_000,
): Promise<AttachedRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [MAIN, ...runArgs(b)], {
      cwd: b.dir,
      env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/root', ...b.env },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    children.add(child);
    let stdout = '';
    let stderr = '';
    let observed: unknown;
    let readyHandled = false;
    let failure: unknown;
    const timer = setTimeout(() => {
      failure = new Error(`bottle run did not finish within ${timeoutMs} ms\nstdout:\n${stdout}\nstderr:\n${stderr}`);
      child.kill('SIGTERM');
    }, timeoutMs);
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString('utf8');
      if (!readyHandled && /^RESULT ready=yes$/m.test(stdout)) {
        readyHandled = true;
        const answer: Promise<{ stdin: string; observed?: unknown }> = onReady ? onReady() : Promise.resolve({ stdin: '\n' });
        answer.then(
          (a) => {
            observed = a.observed;
            child.stdin.write(a.stdin);
          },
          (err: unknown) => {
            failure = err;
            // Unblock the agent so the bottle tears down; the error is reported after.
            child.stdin.write('\n');
          },
        );
      }
    });
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString('utf8');
    });
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      children.delete(child);
      if (failure) reject(failure);
      else resolve({ code, signal, stdout, stderr, observed });
    });
  });
}

/** Ends attached runs a failed test left behind (they tear their bottle down on SIGTERM). */
export async function endStrayRuns(): Promise<void> {
  const left = [...children];
  for (const child of left) child.kill('SIGTERM');
  await Promise.all(left.map((c) => new Promise((r) => (c.exitCode !== null || c.signalCode !== null ? r(null) : c.once('close', r)))));
}

/** `bottle run --detach --json`: returns once the agent runs. */
export async function runDetached(b: SecBottle): Promise<{ identity: string; run: string }> {
  const r = await cli(b, runArgs(b, ['--detach', '--json']));
  if (r.code !== 0) throw new Error(`bottle run --detach failed (${r.code}): ${r.stderr}`);
  const doc = JSON.parse(r.stdout) as { identity: string; run: string };
  return { identity: doc.identity, run: doc.run };
}

/** Polls `bottle logs` until a line matches. */
export async function waitForLog(b: SecBottle, identity: string, pattern: RegExp, timeoutMs = 60_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  for (;;) {
    const r = await cli(b, ['logs', identity]);
    last = r.stdout + r.stderr;
    if (pattern.test(r.stdout)) return r.stdout;
    if (Date.now() > deadline) throw new Error(`no log line matching ${pattern} within ${timeoutMs} ms; logs:\n${last}`);
    await delay(250);
  }
}

// ---------------------------------------------------------------------------------------
// What the agent printed

/** `RESULT key=value` lines; the key is everything before the first '='. Later lines win. */
export function results(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const m = /^RESULT ([^=]+)=(.*)$/.exec(line);
    if (m) out[m[1]!] = m[2]!;
  }
  return out;
}

/** The lines of the file the agent dumped as `DUMP name line`. */
export function dumped(text: string, name: string): string[] {
  const prefix = `DUMP ${name} `;
  return text
    .split('\n')
    .filter((l) => l.startsWith(prefix))
    .map((l) => l.slice(prefix.length));
}

/** `Key:\tvalue` lines of /proc/PID/status. */
export function procStatus(lines: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of lines) {
    const i = line.indexOf(':');
    if (i > 0) out[line.slice(0, i)] = line.slice(i + 1).trim();
  }
  return out;
}

export interface Route4 {
  iface: string;
  destination: string;
  gateway: string;
  flags: number;
}

/** /proc/net/route without its header. */
export function routes4(lines: string[]): Route4[] {
  return lines
    .slice(1)
    .map((l) => l.trim().split(/\s+/))
    .filter((f) => f.length >= 8)
    .map((f) => ({ iface: f[0]!, destination: f[1]!, gateway: f[2]!, flags: Number.parseInt(f[3]!, 16) }));
}

export interface Route6 {
  destination: string;
  prefix: number;
  nextHop: string;
  flags: number;
  iface: string;
}

export function routes6(lines: string[]): Route6[] {
  return lines
    .map((l) => l.trim().split(/\s+/))
    .filter((f) => f.length >= 10)
    .map((f) => ({ destination: f[0]!, prefix: Number.parseInt(f[1]!, 16), nextHop: f[4]!, flags: Number.parseInt(f[8]!, 16), iface: f[9]! }));
}

export const RTF_GATEWAY = 0x0002;
export const RTF_REJECT = 0x0200;

/** Routes that lead somewhere: a default route or any route through a gateway (reject routes lead nowhere). */
export function routesOut(v4: Route4[], v6: Route6[]): string[] {
  const bad: string[] = [];
  for (const r of v4) {
    if (r.flags & RTF_REJECT) continue;
    if (r.destination === '00000000') bad.push(`IPv4 default route on ${r.iface} via ${r.gateway}`);
    else if (r.flags & RTF_GATEWAY || r.gateway !== '00000000') bad.push(`IPv4 route ${r.destination} on ${r.iface} via gateway ${r.gateway}`);
  }
  for (const r of v6) {
    if (r.flags & RTF_REJECT) continue;
    if (r.prefix === 0) bad.push(`IPv6 default route on ${r.iface}`);
    else if (r.flags & RTF_GATEWAY) bad.push(`IPv6 route ${r.destination}/${r.prefix} on ${r.iface} via ${r.nextHop}`);
  }
  return bad;
}

export interface Mount {
  root: string;
  mountPoint: string;
  fsType: string;
  source: string;
}

/** /proc/self/mountinfo: id parent maj:min root mountpoint options [optional...] - fstype source superoptions. */
export function mounts(lines: string[]): Mount[] {
  return lines
    .map((l) => l.trim().split(/\s+/))
    .filter((f) => f.length >= 7)
    .map((f) => {
      const dash = f.indexOf('-', 6);
      return { root: unescapeMount(f[3]!), mountPoint: unescapeMount(f[4]!), fsType: f[dash + 1] ?? '', source: f[dash + 2] ?? '' };
    });
}

function unescapeMount(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(Number.parseInt(oct, 8)));
}

/** File systems that hold no host files. */
const PSEUDO_FS = new Set(['proc', 'sysfs', 'tmpfs', 'devpts', 'mqueue', 'cgroup', 'cgroup2', 'devtmpfs', 'securityfs', 'debugfs']);
/** Docker's own per-container files, bound from its container folder. */
const DOCKER_FILES = ['/etc/hosts', '/etc/hostname', '/etc/resolv.conf'];

/**
 * Every mount that could expose host files, other than the container's root file system,
 * Docker's own /etc/hosts, /etc/hostname and /etc/resolv.conf (bound from Docker's container
 * folder) and the bottle's workspace volume. Under runc `root` is the host path of a bind;
 * under gVisor every file mount is 9p with root `/`, so the mount points decide.
 */
export function unexpectedMounts(list: Mount[], workspaceVolume: string): string[] {
  const bad: string[] = [];
  const under = (p: string, dirs: string[]) => dirs.some((d) => p === d || p.startsWith(`${d}/`));
  for (const m of list) {
    const what = `${m.mountPoint} (${m.fsType} ${m.source} root ${m.root})`;
    if (PSEUDO_FS.has(m.fsType)) {
      // Kernel file systems where Docker puts them, a fresh /tmp (gVisor), and Docker's masks
      // (/proc/keys bound from /dev/null). A tmpfs elsewhere, or a bind out of one, may be the
      // host's own /run (where docker.sock lives).
      // The workspace volume is a tmpfs of its own (its size is the disk bound); Docker's side
      // says it is the bottle's volume (the escape test checks the agent's Mounts).
      const fresh = m.root === '/' && (under(m.mountPoint, ['/proc', '/dev', '/sys']) || m.mountPoint === '/tmp' || (m.fsType === 'tmpfs' && m.mountPoint === '/workspace'));
      const mask = m.fsType === 'tmpfs' && m.root === '/null' && under(m.mountPoint, ['/proc']);
      const cgroup = (m.fsType === 'cgroup' || m.fsType === 'cgroup2') && under(m.mountPoint, ['/sys/fs/cgroup']);
      // Docker re-binds parts of /proc (bus, fs, irq, sys) read-only onto themselves.
      const self = (m.fsType === 'proc' && under(m.mountPoint, ['/proc'])) || (m.fsType === 'sysfs' && under(m.mountPoint, ['/sys']));
      if (!fresh && !mask && !cgroup && !self) bad.push(`unexpected ${m.fsType} mount ${what}`);
      continue;
    }
    if (m.mountPoint === '/') {
      if (m.root !== '/') bad.push(`root file system is a bind of ${what}`);
    } else if (DOCKER_FILES.includes(m.mountPoint)) {
      const file = m.mountPoint.slice('/etc/'.length);
      if (m.root !== '/' && !new RegExp(`/containers/[0-9a-f]{64}/${file.replace('.', '\\.')}$`).test(m.root)) bad.push(`Docker file bound from an unexpected place: ${what}`);
    } else if (m.mountPoint === '/workspace') {
      if (m.root !== '/' && !m.root.endsWith(`/volumes/${workspaceVolume}/_data`)) bad.push(`workspace is not the bottle's volume: ${what}`);
    } else {
      bad.push(`unexpected mount ${what}`);
    }
  }
  return bad;
}

// ---------------------------------------------------------------------------------------
// Secrets: the scripts never carry a secret value, only its hash and length

/** A fresh secret value; the fixed prefix lets the in-bottle scanner find candidates fast. */
export function newSecret(label: string): string {
  return `bbsec-${label}-${randomBytes(12).toString('hex')}`;
}

export interface Needle {
  sha: string;
  len: number;
}

export function needle(value: string): Needle {
  return { sha: createHash('sha256').update(value).digest('hex'), len: value.length };
}

/** Files under `dir` whose bytes contain any of `values`: "file: value-label" lines. */
export function filesContaining(dir: string, values: Record<string, string>): string[] {
  const hits: string[] = [];
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) {
        const body = readFileSync(p);
        for (const [label, value] of Object.entries(values)) if (body.includes(value)) hits.push(`${p}: ${label}`);
      }
    }
  };
  walk(dir);
  return hits;
}

/** Files and folders under `dir` that its group or others may use (mode & 077). */
export function notPrivate(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      const mode = statSync(p).mode & 0o777;
      if (mode & 0o077) out.push(`${p} ${mode.toString(8)}`);
      if (e.isDirectory()) walk(p);
    }
  };
  walk(dir);
  return out;
}

/** Every file under `dir` (relative paths), to show a scan was not vacuous. */
export function listFiles(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string, rel: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      if (e.isDirectory()) walk(join(d, e.name), join(rel, e.name));
      else out.push(join(rel, e.name));
    }
  };
  walk(dir, '');
  return out;
}

/** Host processes whose argv contains any of `values` (read from /proc/PID/cmdline). */
export function hostArgvContaining(values: Record<string, string>): string[] {
  const hits: string[] = [];
  for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    let argv: Buffer;
    try {
      argv = readFileSync(`/proc/${pid}/cmdline`);
    } catch {
      continue; // exited meanwhile
    }
    for (const [label, value] of Object.entries(values)) {
      if (argv.includes(value)) hits.push(`pid ${pid} (${argv.toString('utf8').replace(/\0/g, ' ').slice(0, 80)}): ${label}`);
    }
  }
  return hits;
}

// ---------------------------------------------------------------------------------------
// Docker: the bottle's objects, and the suite's own forbidden server

export function identityLabels(identity: string): Labels {
  return { [LABEL.identity]: identity };
}

/** Inspect of every container of the bottle, by label. */
export async function bottleContainers(identity: string): Promise<Docker.ContainerInspectInfo[]> {
  const list = await docker().listContainers({ all: true, filters: { label: [`${LABEL.identity}=${identity}`] } });
  return Promise.all(list.map((c) => docker().getContainer(c.Id).inspect()));
}

export async function bottleNetworks(identity: string): Promise<Docker.NetworkInspectInfo[]> {
  const list = await docker().listNetworks({ filters: { label: [`${LABEL.identity}=${identity}`] } });
  return Promise.all(list.map((n) => docker().getNetwork(n.Id).inspect() as Promise<Docker.NetworkInspectInfo>));
}

export function roleOf(c: Docker.ContainerInspectInfo): string {
  return c.Config.Labels?.[LABEL.role] ?? '';
}

/** Removes what the bottle left (after the assertions that it left nothing). */
export async function removeBottleObjects(identity: string): Promise<void> {
  await removeAllLabelled(identityLabels(identity));
}

export async function leftovers(identity: string): Promise<string[]> {
  return (await listLabelled(identityLabels(identity))).map((o) => `${o.kind} ${o.name}`);
}

export { assertNothingLabelled, suiteLabels };

/**
 * The end of a file of bottle tests: ends attached runs it left, notes what its bottles left
 * behind (a product failure), sweeps that and everything of the suite, removes its temp
 * folders, then fails if anything was left or the sweep itself did not work.
 */
export async function finishBottleSuite(identities: Iterable<string>): Promise<void> {
  await endStrayRuns();
  const ids = [...identities];
  const left: string[] = [];
  for (const identity of ids) left.push(...(await leftovers(identity)));
  for (const identity of ids) await removeBottleObjects(identity);
  await removeAllLabelled(suiteLabels);
  removeTempDirs();
  expect(left, 'objects the bottles of this file left behind').toEqual([]);
  for (const identity of ids) await assertNothingLabelled(identityLabels(identity));
  await assertNothingLabelled(suiteLabels);
}

export interface TestServer {
  /** The suite's own network the server starts on; no bottle is ever attached to it. */
  network: string;
  container: string;
  alias: string;
  /** Its address on `network`. */
  ip: string;
  port: number;
  /** One entry per TCP connection the server accepted (its own log): `CONN <peer address>`. */
  connections(): Promise<string[]>;
}

/** The suite's network for its servers: internal, so it leads nowhere either. */
export async function createSuiteNetwork(): Promise<string> {
  const network = `bbt-${SUITE_ID}-servers`;
  await docker().createNetwork({ Name: network, Driver: 'bridge', Internal: true, Labels: { ...suiteLabels }, CheckDuplicate: true });
  return network;
}

/**
 * A TCP server of the suite's own (node from the sidecar image) that logs one line per
 * connection, which is the ground truth for "nobody got through" (or, for a control, "the
 * path works"). `role` names it; the alias is `<role>-<suite>.test`.
 */
export async function startServer(image: string, network: string, role: string): Promise<TestServer> {
  const container = `bbt-${SUITE_ID}-${role}-server`;
  const alias = `${role}-${SUITE_ID}.test`;
  const port = 7777;
  const code = `require('net').createServer((s) => { console.log('CONN ' + s.remoteAddress); s.on('error', () => {}); s.end('pong\\n'); }).listen(${port}, () => console.log('LISTENING'))`;
  const c = await docker().createContainer({
    name: container,
    Image: image,
    Entrypoint: ['node', '-e', code],
    Labels: { ...suiteLabels },
    HostConfig: { NetworkMode: network, CapDrop: ['ALL'], SecurityOpt: ['no-new-privileges'] },
    NetworkingConfig: { EndpointsConfig: { [network]: { Aliases: [alias] } } },
  });
  await c.start();
  const logs = async () => {
    const buf = (await c.logs({ stdout: true, stderr: true, follow: false })) as unknown as Buffer;
    return demux(buf).stdout.split('\n');
  };
  const deadline = Date.now() + 20_000;
  while (!(await logs()).includes('LISTENING')) {
    if (Date.now() > deadline) throw new Error(`${role} server did not start: ${(await logs()).join('\n')}`);
    await delay(100);
  }
  const info = await c.inspect();
  const ip = info.NetworkSettings.Networks[network]?.IPAddress;
  if (!ip) throw new Error(`${role} server has no address on ${network}`);
  return { network, container, alias, ip, port, connections: async () => (await logs()).filter((l) => l.startsWith('CONN ')) };
}

/**
 * Puts a server on a bottle's egress network under its alias, where the egress sidecar could
 * reach it: then only the allowlist stands between the agent and the server. Returns its
 * address there. Teardown of the bottle disconnects it again with the network.
 */
export async function attachServer(server: TestServer, network: string): Promise<string> {
  await docker()
    .getNetwork(network)
    .connect({ Container: server.container, EndpointConfig: { Aliases: [server.alias] } });
  const info = await docker().getContainer(server.container).inspect();
  const ip = info.NetworkSettings.Networks[network]?.IPAddress;
  if (!ip) throw new Error(`${server.container} has no address on ${network}`);
  return ip;
}

/**
 * The positive control: a peer on the server's network reaches it by alias and by IP, so
 * "unreachable from the bottle" means the bottle, not a broken server.
 */
export async function controlReach(server: TestServer, image: string): Promise<string> {
  const code = `const net = require('net');
const one = (host) => new Promise((res) => { const s = net.connect(${server.port}, host); let d = ''; s.on('data', (x) => (d += x)); s.on('close', () => res(host + ':' + d.trim())); s.on('error', (e) => res(host + ':' + e.code)); });
(async () => { console.log(await one('${server.alias}')); console.log(await one('${server.ip}')); })();`;
  const c = await docker().createContainer({
    name: `bbt-${SUITE_ID}-control-${randomBytes(3).toString('hex')}`,
    Image: image,
    Entrypoint: ['node', '-e', code],
    Labels: { ...suiteLabels },
    HostConfig: { NetworkMode: server.network, CapDrop: ['ALL'], SecurityOpt: ['no-new-privileges'] },
  });
  try {
    await c.start();
    await c.wait();
    const buf = (await c.logs({ stdout: true, stderr: true, follow: false })) as unknown as Buffer;
    const out = demux(buf);
    return out.stdout + out.stderr;
  } finally {
    await c.remove({ force: true });
  }
}

// ---------------------------------------------------------------------------------------
// Temp folders

const tempDirs: string[] = [];

export function tempProject(files: Record<string, string>): string {
  const dir = mkdtempSync(join(tmpdir(), 'bottle-sec-project-'));
  for (const [name, body] of Object.entries(files)) writeFileSync(join(dir, name), body);
  tempDirs.push(dir);
  return dir;
}

export function track(dir: string): string {
  tempDirs.push(dir);
  return dir;
}

export function removeTempDirs(): void {
  for (const d of tempDirs.splice(0)) rmSync(d, { recursive: true, force: true });
}

// ---------------------------------------------------------------------------------------
// Agent scripts (bash run by the agent image's bash, with its node, perl and coreutils)

/** Helpers every script starts with: RESULT/DUMP lines and a timed TCP connect. */
export const PRELUDE = String.raw`set -u
result() { printf 'RESULT %s=%s\n' "$1" "$2"; }
dump() {
  if [ -r "$2" ]; then
    while IFS= read -r line || [ -n "$line" ]; do printf 'DUMP %s %s\n' "$1" "$line"; done < "$2"
  else
    result "unreadable_$1" "$2"
  fi
}
# tcp_probe KEY HOST PORT SECONDS: rc=0 means a TCP connection was established
tcp_probe() {
  local start rc
  start=$(date +%s%N)
  timeout "$4" bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$2" "$3" 2>/dev/null
  rc=$?
  result "$1" "rc=$rc,ms=$(( ($(date +%s%N) - start) / 1000000 ))"
}
`;

/**
 * Finds every unix socket the agent can see and asks each (and the well-known engine paths)
 * for HTTP, with a control: an HTTP server of its own on /tmp/bottle-control.sock.
 */
const SOCKETS_JS = String.raw`const fs = require('fs');
const net = require('net');
const path = require('path');
const out = (k, v) => console.log('RESULT ' + k + '=' + v);
const WELL_KNOWN = ['/var/run/docker.sock', '/run/docker.sock', '/run/containerd/containerd.sock', '/var/run/containerd/containerd.sock',
  '/run/podman/podman.sock', '/run/buildkit/buildkitd.sock', '/run/user/1000/docker.sock', '/tmp/docker.sock', '/home/agent/.docker/run/docker.sock'];
const CONTROL = '/tmp/bottle-control.sock';
const ROOTS = ['/run', '/var/run', '/var', '/tmp', '/home', '/etc', '/workspace', '/opt', '/srv', '/mnt', '/media', '/dev', '/root', '/usr/local'];
const found = new Set();
const unreadable = [];
let visited = 0;
function walk(dir, depth) {
  let names;
  try { names = fs.readdirSync(dir); } catch (e) { unreadable.push(dir + ':' + e.code); return; }
  for (const name of names) {
    const p = path.join(dir, name);
    let st;
    try { st = fs.lstatSync(p); } catch (e) { continue; }
    visited++;
    if (st.isSocket()) found.add(p);
    else if (st.isDirectory() && depth < 16) walk(p, depth + 1);
  }
}
function probe(p) {
  return new Promise((resolve) => {
    let data = '';
    let settled = false;
    const s = net.connect(p);
    const done = (v) => { if (!settled) { settled = true; s.destroy(); resolve(v); } };
    s.setTimeout(2000, () => done(data ? 'answered' : 'silent'));
    s.on('connect', () => s.write('GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n'));
    s.on('data', (d) => { data += d; if (data.startsWith('HTTP/')) done('http'); });
    s.on('error', (e) => done('error:' + e.code));
    s.on('close', () => done(data ? (data.startsWith('HTTP/') ? 'http' : 'answered') : 'closed'));
  });
}
// The control: a socket of the agent's own that answers HTTP must be found and answer.
const control = require('http').createServer((q, r) => r.end('ok'));
control.listen(CONTROL, async () => {
  for (const r of ROOTS) walk(r, 0);
  out('sockets_found', [...found].join(',') || 'none');
  out('socket_walk_visited', visited);
  out('socket_walk_unreadable', unreadable.join(',') || 'none');
  const targets = [...new Set([...WELL_KNOWN, ...found])];
  const outcomes = await Promise.all(targets.map(probe));
  targets.forEach((t, i) => out('socket[' + t + ']', outcomes[i]));
  control.close();
});
`;

/**
 * Looks for secret values by hash in the agent's environment, every /proc/PID/environ and
 * /proc/PID/cmdline it can read, and the files it can read: argv[2] is {label: {sha, len}},
 * argv[3] is {ENV_NAME: label} for variables whose value should be exactly that secret.
 */
const SCAN_JS = String.raw`const fs = require('fs');
const path = require('path');
const crypto = require('crypto');
const out = (k, v) => console.log('RESULT ' + k + '=' + v);
const needles = JSON.parse(process.argv[2]);
const expectEnv = JSON.parse(process.argv[3]);
const PREFIX = 'bbsec-';
const hits = {};
for (const k of Object.keys(needles)) hits[k] = [];
const sha = (s) => crypto.createHash('sha256').update(s).digest('hex');
function scan(where, text) {
  for (let i = text.indexOf(PREFIX); i !== -1; i = text.indexOf(PREFIX, i + 1)) {
    for (const k of Object.keys(needles)) {
      const n = needles[k];
      if (i + n.len <= text.length && sha(text.slice(i, i + n.len)) === n.sha) hits[k].push(where);
    }
  }
}
for (const k of Object.keys(process.env)) scan('env:' + k, k + '=' + process.env[k]);
let environs = 0;
let cmdlines = 0;
for (const pid of fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
  try { scan('environ:' + pid, fs.readFileSync('/proc/' + pid + '/environ', 'latin1')); environs++; } catch (e) { /* not readable */ }
  try { scan('cmdline:' + pid, fs.readFileSync('/proc/' + pid + '/cmdline', 'latin1')); cmdlines++; } catch (e) { /* gone */ }
}
let files = 0;
function walk(dir, depth) {
  let names;
  try { names = fs.readdirSync(dir); } catch (e) { return; }
  for (const name of names) {
    const p = path.join(dir, name);
    let st;
    try { st = fs.lstatSync(p); } catch (e) { continue; }
    if (st.isDirectory() && depth < 16) walk(p, depth + 1);
    else if (st.isFile() && st.size < 4 * 1024 * 1024) {
      try { scan('file:' + p, fs.readFileSync(p, 'latin1')); files++; } catch (e) { /* not readable */ }
    }
  }
}
for (const d of ['/run', '/etc', '/home', '/workspace', '/tmp', '/opt', '/var/tmp', '/var/lib', '/root', '/usr/local']) walk(d, 0);
out('scan_environ_read', environs);
out('scan_cmdline_read', cmdlines);
out('scan_files_read', files);
for (const k of Object.keys(needles)) out('found[' + k + ']', [...new Set(hits[k])].join(',') || 'none');
for (const name of Object.keys(expectEnv)) {
  const v = process.env[name];
  out('env_value[' + name + ']', v === undefined ? 'absent' : sha(v) === needles[expectEnv[name]].sha ? 'matches' : 'differs');
}
`;

/** A quoted heredoc: bash writes `body` to `file` untouched. */
function writeFile(file: string, body: string): string {
  return `cat > ${file} <<'BOTTLE_SEC_EOF'\n${body}BOTTLE_SEC_EOF\n`;
}

/** What the agent is, what it holds and what it can see of the host (test 1 and 5). */
export const POSTURE_PROBE = `result uid "$(id -u)"
result gid "$(id -g)"
result groups "$(id -G | tr ' ' ,)"
dump status /proc/self/status
dump route4 /proc/net/route
dump route6 /proc/net/ipv6_route
dump mountinfo /proc/self/mountinfo
dump unix /proc/net/unix
case "$(uname -m)" in x86_64) nr=157 ;; aarch64) nr=167 ;; *) nr= ;; esac
# prctl(PR_GET_NO_NEW_PRIVS): gVisor's /proc/self/status has no NoNewPrivs line
if [ -n "$nr" ]; then result nnp_prctl "$(perl -e "print syscall($nr, 39, 0, 0, 0, 0)")"; fi
result raw_socket "$(perl -MSocket -e 'if (socket(my $s, PF_INET, SOCK_RAW, 255)) { print "opened" } else { print "refused" }')"
result userns "$(unshare -Ur true 2>/dev/null && echo created || echo refused)"
mkdir -p /tmp/mnt-probe
result mount_tmpfs "$(mount -t tmpfs none /tmp/mnt-probe 2>/dev/null && echo mounted || echo refused)"
result docker_sock_var "$(if [ -e /var/run/docker.sock ]; then echo present; else echo absent; fi)"
result docker_sock_run "$(if [ -e /run/docker.sock ]; then echo present; else echo absent; fi)"
# Docker's name files are bound from the host: the agent must not be able to redirect names.
result write_etc_hosts "$( (echo '127.0.0.1 egress' >> /etc/hosts) 2>/dev/null && echo written || echo refused)"
result write_resolv_conf "$( (echo 'nameserver 127.0.0.1' >> /etc/resolv.conf) 2>/dev/null && echo written || echo refused)"
# (a glob, not ls: this gVisor answers coreutils' statx on /proc with EINVAL)
result procs_visible "$(set -- /proc/[0-9]*; echo $#)"
# Only the bottle's own processes are visible: the names (argv[0]) of every process it can see.
result proc_names "$(for f in /proc/[0-9]*/cmdline; do tr '\\0' '\\n' < "$f" | head -n1; done 2>/dev/null | sed 's|.*/||' | sort -u | tr '\\n' ,)"
`;

export const KERNEL_PROBE = String.raw`result kernel "$(uname -r)"
result proc_version "$(tr -d '\n' < /proc/version)"
result dmesg "$(dmesg 2>&1 | head -3 | tr '\n' '|')"
`;

export const SOCKET_PROBE = `${writeFile('/tmp/sockets.js', SOCKETS_JS)}node /tmp/sockets.js\n`;

export function secretScan(needles: Record<string, Needle>, expectEnv: Record<string, string>): string {
  return `${writeFile('/tmp/scan.js', SCAN_JS)}node /tmp/scan.js '${JSON.stringify(needles)}' '${JSON.stringify(expectEnv)}'\n`;
}

/** Signals the host that the bottle is up, then waits for a line on stdin into the named variables. */
export function readyThenRead(vars: string[]): string {
  return `result ready yes
if read -r -t 100 ${vars.join(' ')}; then result stdin received; else result stdin none; fi
`;
}

export interface NetworkTargets {
  /** The forbidden server (never allowlisted) and the allowed one (allowlisted on its port). */
  server: { ip: string; alias: string; name: string; port: number };
  allowed: { alias: string; port: number };
  /**
   * Shell expressions (variables read from stdin) for the internal network's gateway, the
   * egress sidecar's address on the egress network, and the forbidden server's address there.
   */
  gatewayVar: string;
  egressNetVar: string;
  forbiddenEgressNetVar: string;
  gatewayPorts: number[];
}

/** TCP connects from one process: argv is `key:host:port:timeoutMs`...; prints the same `rc=..,ms=..` as tcp_probe. */
const TCP_JS = `const net = require('net');
const out = (k, v) => console.log('RESULT ' + k + '=' + v);
for (const spec of process.argv.slice(2)) {
  const [key, host, port, ms] = spec.split(':');
  const start = Date.now();
  const s = net.connect({ host, port: Number(port) });
  let done = false;
  const finish = (rc, why) => {
    if (done) return;
    done = true;
    clearTimeout(timer);
    s.destroy();
    out(key, 'rc=' + rc + ',ms=' + (Date.now() - start) + (why ? ',' + why : ''));
  };
  const timer = setTimeout(() => finish(124, 'timeout'), Number(ms));
  s.on('connect', () => finish(0));
  s.on('error', (e) => finish(1, e.code));
}
`;

/**
 * Everything the agent might try to reach (tests 2, 3, 4). The gateway ports are tried
 * together from one node process; the rest run in groups of at most three: under gVisor
 * every process of the agent costs host pids against the container's pids limit, for the
 * sandbox's life, and a sandbox over it dies (see the many-processes test).
 */
export function networkProbe(t: NetworkTargets): string {
  const { ip, alias, name, port } = t.server;
  const gw = t.gatewayPorts.map((p) => `"gateway_${p}:${t.gatewayVar}:${p}:5000"`).join(' ');
  return `${writeFile('/tmp/tcp.js', TCP_JS)}${String.raw`result proxy_env "$(printenv HTTPS_PROXY)"
# Short resolver timeouts: Docker's embedded DNS never answers a name it cannot forward.
export RES_OPTIONS='timeout:1 attempts:1'
# proxy_probe KEY CURL-ARGS: the proxy's answer to a GET (code) and to a CONNECT (connect)
proxy_probe() { local key=$1; shift; result "$key" "$(curl -s -m 5 -o /dev/null -w 'code=%{http_code},connect=%{http_connect}' "$@")"; }
resolve() {
  local out rc
  out=$(unset HTTP_PROXY HTTPS_PROXY http_proxy https_proxy NO_PROXY no_proxy ALL_PROXY all_proxy; getent hosts "$2")
  rc=$?
  if [ "$rc" = 0 ]; then result "$1" "resolved:$(echo "$out" | awk '{print $1}' | tr '\n' ' ')"; else result "$1" "unresolved:$rc"; fi
}
`}node /tmp/tcp.js ${gw} "egress_net_sidecar:${t.egressNetVar}:3128:3000" "forbidden_egress_net_ip:${t.forbiddenEgressNetVar}:${port}:3000"
tcp_probe egress_sidecar egress 3128 3 &
tcp_probe forbidden_ip ${ip} ${port} 3 &
tcp_probe forbidden_alias ${alias} ${port} 3 &
wait
tcp_probe forbidden_name ${name} ${port} 3 &
proxy_probe proxy_get_ip -x http://egress:3128 http://${ip}:${port}/ &
proxy_probe proxy_get_alias -x http://egress:3128 http://${alias}:${port}/ &
wait
proxy_probe proxy_get_name -x http://egress:3128 http://${name}:${port}/ &
proxy_probe proxy_get_egress_net_ip -x http://egress:3128 "http://${t.forbiddenEgressNetVar}:${port}/" &
proxy_probe proxy_connect_ip -p -x http://egress:3128 http://${ip}:${port}/ &
wait
proxy_probe proxy_connect_alias -p -x http://egress:3128 http://${alias}:${port}/ &
proxy_probe proxy_connect_egress_net_ip -p -x http://egress:3128 "http://${t.forbiddenEgressNetVar}:${port}/" &
# The control: the allowlisted server on the same network, through the same proxy.
proxy_probe proxy_get_allowed -x http://egress:3128 http://${t.allowed.alias}:${t.allowed.port}/ &
wait
resolve dns_alias ${alias} &
resolve dns_name ${name} &
resolve dns_egress egress &
wait
`;
}
