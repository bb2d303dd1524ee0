/**
 * Git gate: what cloning, fetching and pushing through the gate costs an agent, against the
 * same operations done directly against the upstream, in the same run.
 *
 * Three kinds of process, as in production (the agent's git, the gate sidecar, the git host):
 *   - the upstream, bench/git-gate/upstream.ts (forked): `git http-backend` behind a Node HTTP
 *     server on 127.0.0.1 serving a bare repository whose history this bench generates,
 *     deterministically (`git fast-import` of --commits commits touching --files text files
 *     and a few binary assets, fixed dates; then `git repack -adf` with a bitmap index, as a
 *     hosting service keeps its repositories). It wants HTTP Basic `x-access-token:TOKEN`
 *     (401 with a challenge otherwise), as a private repository on a host does; --no-token
 *     serves it without.
 *   - the gate, the real sidecar program bundled as scripts/build.mjs does (esbuild, node18,
 *     ESM) into a temp dir (or --sidecar FILE, e.g. dist/sidecars/git-gate.mjs), run with
 *     `node` on a free loopback port with a temp remotes.json: remote `origin` -> the upstream,
 *     push ["agent/*"], token_file. Its mirror is the gate's own (made and first fetched at start).
 *   - this process, the agent: it runs `git` (the host's) against http://127.0.0.1:GATE/origin.git
 *     (`gate`) or http://127.0.0.1:UPSTREAM/app.git with a credential helper giving the token
 *     (`direct`).
 *
 * Operations, each timed from spawning `git` to its exit:
 *   clone      `git clone --quiet URL DIR` (full history, checkout of main);
 *   fetch-none `git fetch --quiet origin` in that clone, the upstream unchanged;
 *   fetch-new  the same after the upstream got one new commit on main (pushed there directly by
 *              a third party, untimed, before both modes fetch it);
 *   push       `git push --quiet origin HEAD:refs/heads/agent/bench-MODE-ROUND` of one new
 *              commit (one new 2 KB file) made in the clone (untimed); through the gate the
 *              push succeeds only once the gate's hook has forwarded it to the upstream.
 * Every round does the four operations in that order; for each operation the two modes take
 * turns, the order alternating from operation to operation and from round to round. Round 0
 * is a warm-up and not counted. Every result is checked (the clone's HEAD, the fetched tip and
 * the pushed ref against the upstream).
 *
 * Reported per operation and mode: median and p90 over the counted rounds; the added time
 * (gate minus direct, taken per round) median and p90; the ratio gate/direct (per round,
 * median); the requests the upstream served per operation (401 challenges among them); the
 * CPU of the gate's process tree per operation (utime+stime+cutime+cstime of the gate's PID:
 * http-backend, upload-pack/receive-pack, the hook and the gate's own git commands, once
 * reaped; 10 ms ticks) and of the upstream's. Then the parts of the added time measured apart
 * (--reps times each, interleaved): the mirror refresh with nothing new (the gate's exact
 * `git fetch` from the upstream, same environment, into an up-to-date bare repository) and
 * the start of the pre-receive hook (`node BUNDLE pre-receive`, no ref to decide). Memory:
 * VmRSS of the gate's process 2 s after its first refresh (idle), right after the rounds and
 * 2 s later, and VmHWM.
 *
 * Usage: npx tsx bench/git-gate/run.ts [ROUNDS=20] [--commits 500] [--files 150] [--reps 10]
 *          [--no-token] [--sidecar FILE] [--json FILE]
 *
 * Talks only to 127.0.0.1.
 */
import { type ChildProcess, execFileSync, fork, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { cpus, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { upstreamEnv } from '../../sidecars/git-gate/config.js';
import { benchArgs, bundleSidecar, sorted } from '../common.js';

const { option, positional, flag } = benchArgs(['--commits', '--files', '--reps', '--sidecar', '--json']);
const ROUNDS = Number(positional[0] ?? 20);
const COMMITS = Number(option('--commits') ?? 500);
const FILES = Number(option('--files') ?? 150);
const REPS = Number(option('--reps') ?? 10);
const USE_TOKEN = !flag('--no-token');
const SIDECAR = option('--sidecar');
const JSON_OUT = option('--json');

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..', '..');
const tmp = mkdtempSync(join(tmpdir(), 'bottle-bench-git-gate-'));
const TOKEN = `bench-token-${Math.random().toString(16).slice(2)}`;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Nearest rank: the smallest value with at least q of the samples at or below it. */
const quantile = (xs: number[], q: number) => {
  const s = sorted(xs);
  return s.length === 0 ? Number.NaN : s[Math.max(0, Math.ceil(q * s.length) - 1)]!;
};
const median = (xs: number[]) => quantile(xs, 0.5);
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

// ---- git -------------------------------------------------------------------------------

const baseEnv: Record<string, string> = {
  PATH: process.env.PATH ?? '',
  HOME: join(tmp, 'home'),
  LANG: 'C',
  GIT_CONFIG_NOSYSTEM: '1',
  GIT_TERMINAL_PROMPT: '0',
  GIT_AUTHOR_NAME: 'Bench Agent',
  GIT_AUTHOR_EMAIL: 'agent@example.invalid',
  GIT_COMMITTER_NAME: 'Bench Agent',
  GIT_COMMITTER_EMAIL: 'agent@example.invalid',
};
/** The agent's environment: a credential helper gives the token when the upstream asks (direct only). */
const agentEnv: Record<string, string> = USE_TOKEN
  ? {
      ...baseEnv,
      GIT_CONFIG_COUNT: '1',
      GIT_CONFIG_KEY_0: 'credential.helper',
      GIT_CONFIG_VALUE_0: `!f() { test "$1" = get || exit 0; echo username=x-access-token; echo password=${TOKEN}; }; f`,
    }
  : baseEnv;

/** Synchronous git for setup and checks (never while something is timed). */
const gitSync = (cwd: string, a: string[], input?: Buffer) =>
  execFileSync('git', a, {
    cwd,
    env: baseEnv,
    input,
    encoding: 'utf8',
    stdio: [input ? 'pipe' : 'ignore', 'pipe', 'pipe'],
    maxBuffer: 64 << 20,
  }).trim();

/** Runs a program to its end and times it (spawn to exit); throws if it fails unless `allowFail`. */
function timed(
  cmd: string,
  a: string[],
  opts: {
    cwd: string;
    env: Record<string, string | undefined>;
    allowFail?: boolean;
  },
): Promise<number> {
  return new Promise((resolve, reject) => {
    let out = '';
    const t0 = performance.now();
    const child = spawn(cmd, a, {
      cwd: opts.cwd,
      env: opts.env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => {
      out += d.toString();
    });
    child.on('error', reject);
    child.on('close', (code) => {
      const ms = performance.now() - t0;
      clearTimeout(timer);
      if (code !== 0 && !opts.allowFail) reject(new Error(`${cmd} ${a.join(' ')} (in ${opts.cwd}) exited ${code}:\n${out}`));
      else resolve(ms);
    });
  });
}

// ---- the upstream's history ----------------------------------------------------------------

/** mulberry32: a small seeded PRNG, so every run generates the same repository. */
function prng(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * A `git fast-import` stream of `commits` commits on main: the first adds `files` source-like
 * text files (80–400 lines of words from a fixed vocabulary) in 12 folders and 4 binary assets
 * of 256 KB (random bytes: they do not compress); each later one rewrites a few lines in 1–4
 * files and inserts some, every 25th adds a file and every 100th replaces an asset.
 */
function historyStream(commits: number, files: number): Buffer {
  const rnd = prng(20261127);
  const int = (lo: number, hi: number) => lo + Math.floor(rnd() * (hi - lo + 1));
  const syl = ['ka', 'lo', 'mi', 'ne', 'ru', 'ta', 'po', 'si', 'de', 'fa', 'gu', 'ho', 'ji', 'be', 'co', 'va', 'xe', 'zu', 'qi', 'wy', 'an', 'el', 'or'];
  const vocab = Array.from({ length: 800 }, () => Array.from({ length: int(2, 4) }, () => syl[int(0, syl.length - 1)]).join(''));
  const punct = ['const', 'return', 'if', 'await', 'let', 'export', 'function', '=', '+', '=>', '(', ')', '{', '}', ';', '.', ','];
  const line = () => `${'  '.repeat(int(0, 3))}${Array.from({ length: int(2, 9) }, () => (rnd() < 0.3 ? punct[int(0, punct.length - 1)] : vocab[int(0, vocab.length - 1)])).join(' ')}`;
  const bytes = (n: number) => {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i += 4) b.writeUInt32LE(Math.floor(rnd() * 4294967296), i);
    return b;
  };
  const text = new Map<string, string[]>();
  const newFile = (i: number) => {
    const path = `src/mod${i % 12}/file${i}.ts`;
    text.set(path, Array.from({ length: int(80, 400) }, line));
    return path;
  };
  for (let i = 0; i < files; i++) newFile(i);
  const assets = new Map<string, Buffer>([0, 1, 2, 3].map((i) => [`assets/blob${i}.bin`, bytes(256 * 1024)]));

  const parts: Buffer[] = [];
  const put = (s: string | Buffer) => parts.push(typeof s === 'string' ? Buffer.from(s) : s);
  const modify = (path: string, data: Buffer) => {
    put(`M 100644 inline ${path}\ndata ${data.length}\n`);
    put(data);
    put('\n');
  };
  const T0 = 1_700_000_000;
  let added = files;
  for (let c = 0; c < commits; c++) {
    const changed = new Set<string>();
    const binary = new Set<string>();
    if (c === 0) {
      for (const p of text.keys()) changed.add(p);
      for (const p of assets.keys()) binary.add(p);
    } else {
      const paths = [...text.keys()];
      for (let k = int(1, 4); k > 0; k--) {
        const p = paths[int(0, paths.length - 1)]!;
        const lines = text.get(p)!;
        for (let r = int(1, 15); r > 0; r--) lines[int(0, lines.length - 1)] = line();
        lines.splice(int(0, lines.length), 0, ...Array.from({ length: int(0, 20) }, line));
        changed.add(p);
      }
      if (c % 25 === 0) changed.add(newFile(added++));
      if (c % 100 === 0) {
        const p = `assets/blob${(c / 100) % 4}.bin`;
        assets.set(p, bytes(256 * 1024));
        binary.add(p);
      }
    }
    const msg = `change ${c}: ${[...changed, ...binary].slice(0, 3).join(', ')}\n`;
    const who = `Bench Dev <dev@example.invalid> ${T0 + c * 3571} +0000`;
    put(`commit refs/heads/main\nmark :${c + 1}\nauthor ${who}\ncommitter ${who}\ndata ${Buffer.byteLength(msg)}\n${msg}`);
    for (const p of changed) modify(p, Buffer.from(`${text.get(p)!.join('\n')}\n`));
    for (const p of binary) modify(p, assets.get(p)!);
    put('\n');
  }
  return Buffer.concat(parts);
}

// ---- processes ------------------------------------------------------------------------------

const children: ChildProcess[] = [];

async function freePort(): Promise<number> {
  const s = http.createServer();
  s.listen(0, '127.0.0.1');
  await once(s, 'listening');
  const port = (s.address() as AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

/** CPU ms of a process and its reaped descendants (utime, stime, cutime, cstime; 10 ms ticks). */
function treeCpuMs(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  // Fields 14–17 (1-based); this list starts at field 3.
  return ((Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])) * 1000) / 100;
}

function vm(pid: number) {
  const text = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? Number.NaN) / 1024;
  return {
    rssMiB: kb('VmRSS'),
    anonMiB: kb('RssAnon'),
    fileMiB: kb('RssFile'),
    hwmMiB: kb('VmHWM'),
  };
}

async function sidecarBundle(): Promise<string> {
  return SIDECAR ?? bundleSidecar(root, 'git-gate', join(tmp, 'dist'));
}

interface Upstream {
  proc: ChildProcess;
  port: number;
  stats(): Promise<{ requests: number; challenged: number }>;
}

async function startUpstream(projectRoot: string): Promise<Upstream> {
  const proc = fork(join(here, 'upstream.ts'), [projectRoot, ...(USE_TOKEN ? [TOKEN] : [])], {
    env: { PATH: baseEnv.PATH, HOME: baseEnv.HOME },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  children.push(proc);
  const [msg] = (await once(proc, 'message')) as [{ type: string; port: number }];
  if (msg.type !== 'listening') throw new Error(`upstream.ts: unexpected ${JSON.stringify(msg)}`);
  return {
    proc,
    port: msg.port,
    async stats() {
      proc.send({ type: 'stats' });
      for (;;) {
        const [m] = (await once(proc, 'message')) as [{ type: string; requests: number; challenged: number }];
        if (m.type === 'stats') return { requests: m.requests, challenged: m.challenged };
      }
    },
  };
}

interface Gate {
  proc: ChildProcess;
  port: number;
  out: { stdout: string; stderr: string };
}

async function startGate(bundle: string, remotesFile: string, state: string): Promise<Gate> {
  const port = await freePort();
  mkdirSync(join(tmp, 'gatehome'), { recursive: true });
  const proc = spawn(process.execPath, [bundle], {
    env: {
      PATH: baseEnv.PATH,
      HOME: join(tmp, 'gatehome'),
      GIT_CONFIG_NOSYSTEM: '1',
      BOTTLE_SIDECAR_PORT: String(port),
      BOTTLE_GIT_GATE_CONFIG: remotesFile,
      BOTTLE_GIT_GATE_STATE: state,
      BOTTLE_RUN: 'bench',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(proc);
  const out = { stdout: '', stderr: '' };
  proc.stdout!.on('data', (d: Buffer) => {
    out.stdout += d.toString();
  });
  proc.stderr!.on('data', (d: Buffer) => {
    out.stderr += d.toString();
  });
  const deadline = Date.now() + 60_000;
  // Ready, and the first look at the upstream done (the mirror holds the history).
  while (!(out.stdout.includes('ready\n') && /mirror refreshed|not reachable/.test(out.stderr))) {
    if (Date.now() > deadline || proc.exitCode !== null) throw new Error(`the gate did not start:\n${out.stderr}`);
    await sleep(25);
  }
  if (/not reachable/.test(out.stderr)) throw new Error(`the gate cannot read the upstream:\n${out.stderr}`);
  return { proc, port, out };
}

// ---- main -------------------------------------------------------------------------------------

type Mode = 'direct' | 'gate';
const MODES: Mode[] = ['direct', 'gate'];
type Op = 'clone' | 'fetch-none' | 'fetch-new' | 'push';
const OPS: Op[] = ['clone', 'fetch-none', 'fetch-new', 'push'];

interface Sample {
  ms: number;
  upRequests: number;
  upChallenged: number;
  upCpuMs: number;
  gateCpuMs: number;
}

async function main() {
  mkdirSync(baseEnv.HOME!, { recursive: true });
  const commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], {
    cwd: root,
    encoding: 'utf8',
  }).trim();
  const gitVersion = execFileSync('git', ['--version'], {
    encoding: 'utf8',
  }).trim();
  const uptimeStart = execFileSync('uptime', { encoding: 'utf8' }).trim();

  // The upstream repository.
  const upRoot = join(tmp, 'upstream');
  const upRepo = join(upRoot, 'app.git');
  mkdirSync(upRoot);
  let t = performance.now();
  gitSync(upRoot, ['init', '--bare', '--quiet', '-b', 'main', 'app.git']);
  gitSync(upRepo, ['fast-import', '--quiet'], historyStream(COMMITS, FILES));
  gitSync(upRepo, ['repack', '-a', '-d', '-f', '-q', '--write-bitmap-index']);
  gitSync(upRepo, ['pack-refs', '--all']);
  gitSync(upRepo, ['config', 'http.receivepack', 'true']);
  const mainTip = gitSync(upRepo, ['rev-parse', 'refs/heads/main']);
  const sizePack = Number(/^size-pack: (\d+)/m.exec(gitSync(upRepo, ['count-objects', '-v']))?.[1]);
  const objects = Number(/^in-pack: (\d+)/m.exec(gitSync(upRepo, ['count-objects', '-v']))?.[1]);
  const treeBytes = gitSync(upRepo, ['ls-tree', '-r', '-l', 'main'])
    .split('\n')
    .reduce((a, l) => a + (Number(l.split(/\s+/)[3]) || 0), 0);
  const repoDesc = `${COMMITS} commits (main ${mainTip.slice(0, 12)}), ${objects} objects, pack ${(sizePack / 1024).toFixed(1)} MiB, checkout ${(treeBytes / 2 ** 20).toFixed(1)} MiB in ${gitSync(upRepo, ['ls-tree', '-r', '--name-only', 'main']).split('\n').length} files`;
  console.log(`upstream repository: ${repoDesc} (generated in ${((performance.now() - t) / 1000).toFixed(1)} s)`);

  // A third party's clone, to make the upstream's new commits (pushed over the file system).
  const dev = join(tmp, 'dev');
  gitSync(tmp, ['clone', '--quiet', upRepo, dev]);

  const upstream = await startUpstream(upRoot);
  const upstreamUrl = `http://127.0.0.1:${upstream.port}/app.git`;

  // The gate.
  const conf = join(tmp, 'conf');
  mkdirSync(conf);
  writeFileSync(join(conf, 'token'), TOKEN, { mode: 0o600 });
  const remote = {
    name: 'origin',
    upstream: upstreamUrl,
    push: ['agent/*'],
    ...(USE_TOKEN ? { tokenFile: join(conf, 'token') } : {}),
  };
  writeFileSync(
    join(conf, 'remotes.json'),
    JSON.stringify({
      remotes: [
        {
          name: remote.name,
          upstream: remote.upstream,
          push: remote.push,
          ...(USE_TOKEN ? { token_file: remote.tokenFile } : {}),
        },
      ],
    }),
  );
  t = performance.now();
  const bundle = await sidecarBundle();
  const state = join(tmp, 'gate');
  const gate = await startGate(bundle, join(conf, 'remotes.json'), state);
  console.log(`gate ${SIDECAR ?? 'fresh esbuild bundle of sidecars/git-gate/main.ts'} up with its mirror in ${((performance.now() - t) / 1000).toFixed(1)} s`);
  await sleep(2000);
  const idle = vm(gate.proc.pid!);

  const url: Record<Mode, string> = {
    direct: upstreamUrl,
    gate: `http://127.0.0.1:${gate.port}/origin.git`,
  };
  console.log(`git-gate bench: ${ROUNDS} rounds (+1 warm-up); ${OPS.join(', ')}; direct ${url.direct}${USE_TOKEN ? ' (token by a credential helper)' : ''}, gate ${url.gate}`);
  console.log(`commit ${commit}; node ${process.version} (gate, upstream server, bench); ${gitVersion}; ${cpus().length} CPUs; uptime: ${uptimeStart}`);

  const samples: Record<Op, Record<Mode, Sample[]>> = Object.fromEntries(OPS.map((o) => [o, { direct: [], gate: [] }])) as unknown as Record<Op, Record<Mode, Sample[]>>;
  const gatePid = gate.proc.pid!;
  const upPid = upstream.proc.pid!;
  const work = join(tmp, 'work');
  mkdirSync(work);

  const measure = async (op: Op, mode: Mode, counted: boolean, run: () => Promise<number>) => {
    const before = await upstream.stats();
    const up0 = treeCpuMs(upPid);
    const gate0 = treeCpuMs(gatePid);
    const ms = await run();
    await sleep(30); // the servers' last child processes reaped
    const after = await upstream.stats();
    const s: Sample = {
      ms,
      upRequests: after.requests - before.requests,
      upChallenged: after.challenged - before.challenged,
      upCpuMs: treeCpuMs(upPid) - up0,
      gateCpuMs: treeCpuMs(gatePid) - gate0,
    };
    if (counted) samples[op][mode].push(s);
    return s;
  };

  for (let round = 0; round <= ROUNDS; round++) {
    const counted = round > 0;
    const dir = (m: Mode) => join(work, `${m}-${round}`);
    const line: string[] = [];
    for (let k = 0; k < OPS.length; k++) {
      const op = OPS[k]!;
      const order: Mode[] = (round + k) % 2 === 0 ? ['direct', 'gate'] : ['gate', 'direct'];
      if (op === 'fetch-new') {
        const f = join(dev, 'CHANGES.md');
        writeFileSync(f, `${readFileSync(f, { encoding: 'utf8', flag: 'a+' })}round ${round}: one more line\n`);
        gitSync(dev, ['add', 'CHANGES.md']);
        gitSync(dev, ['commit', '--quiet', '-m', `upstream change in round ${round}`]);
        gitSync(dev, ['push', '--quiet', 'origin', 'main']);
      }
      if (op === 'push') {
        for (const m of MODES) {
          writeFileSync(join(dir(m), `agent-${m}-${round}.txt`), `${`${m} round ${round} `.repeat(128)}\n`);
          gitSync(dir(m), ['add', '.']);
          gitSync(dir(m), ['commit', '--quiet', '-m', `agent change ${m} ${round}`]);
        }
      }
      for (const m of order) {
        const s = await measure(op, m, counted, () => {
          switch (op) {
            case 'clone':
              return timed('git', ['clone', '--quiet', url[m], dir(m)], {
                cwd: work,
                env: agentEnv,
              });
            case 'fetch-none':
            case 'fetch-new':
              return timed('git', ['fetch', '--quiet', 'origin'], {
                cwd: dir(m),
                env: agentEnv,
              });
            case 'push':
              return timed('git', ['push', '--quiet', 'origin', `HEAD:refs/heads/agent/bench-${m}-${round}`], { cwd: dir(m), env: agentEnv });
          }
        });
        // Checks, untimed.
        if (op === 'clone' && gitSync(dir(m), ['rev-parse', 'HEAD']) !== gitSync(upRepo, ['rev-parse', 'main'])) throw new Error(`${m} clone: HEAD is not the upstream's main`);
        if (op.startsWith('fetch') && gitSync(dir(m), ['rev-parse', 'refs/remotes/origin/main']) !== gitSync(upRepo, ['rev-parse', 'main']))
          throw new Error(`${m} ${op}: origin/main is not the upstream's main`);
        if (op === 'push' && gitSync(upRepo, ['rev-parse', `refs/heads/agent/bench-${m}-${round}`]) !== gitSync(dir(m), ['rev-parse', 'HEAD'])) throw new Error(`${m} push: not on the upstream`);
        line.push(`${op} ${m} ${s.ms.toFixed(0)}`);
      }
    }
    for (const m of MODES) rmSync(dir(m), { recursive: true, force: true });
    console.log(`round ${round}${counted ? '' : ' (warm-up)'}: ${line.join(', ')} ms`);
  }
  const afterNow = vm(gatePid);

  // The parts of the added time, measured apart.
  const probe = join(tmp, 'probe.git');
  gitSync(tmp, ['init', '--bare', '--quiet', probe]);
  const refreshEnv = {
    ...baseEnv,
    HOME: join(tmp, 'gatehome'),
    ...upstreamEnv(remote),
  };
  const refreshArgs = ['fetch', '--quiet', '--prune', '--no-write-fetch-head', upstreamUrl, '+refs/heads/*:refs/heads/*', '+refs/tags/*:refs/tags/*'];
  await timed('git', refreshArgs, { cwd: probe, env: refreshEnv });
  const hookEnv = {
    PATH: baseEnv.PATH,
    HOME: join(tmp, 'gatehome'),
    BOTTLE_GIT_GATE_CONFIG: join(conf, 'remotes.json'),
    BOTTLE_GIT_GATE_STATE: join(tmp, 'probe-state'),
    BOTTLE_GIT_GATE_REMOTE: 'origin',
    BOTTLE_GIT_GATE_AUDIT_FILE: join(tmp, 'probe-audit.jsonl'),
  };
  const parts = {
    refresh: [] as number[],
    hookStart: [] as number[],
    nodeStart: [] as number[],
  };
  for (let i = 0; i < REPS; i++) {
    parts.refresh.push(await timed('git', refreshArgs, { cwd: probe, env: refreshEnv }));
    parts.hookStart.push(
      await timed(process.execPath, [bundle, 'pre-receive'], {
        cwd: tmp,
        env: hookEnv,
        allowFail: true,
      }),
    );
    parts.nodeStart.push(await timed(process.execPath, ['-e', '0'], { cwd: tmp, env: hookEnv }));
  }
  await sleep(2000);
  const after = vm(gatePid);
  const uptimeEnd = execFileSync('uptime', { encoding: 'utf8' }).trim();

  const auditLines = gate.out.stdout.split('\n').filter((l) => l.startsWith('{'));
  const audit = auditLines.map((l) => JSON.parse(l) as { type: string; decision: string });
  const allowedPushes = audit.filter((a) => a.type === 'push' && a.decision === 'allow').length;
  if (allowedPushes !== ROUNDS + 1) throw new Error(`${allowedPushes} allowed pushes in the gate's audit, expected ${ROUNDS + 1}`);
  if ((gate.out.stdout + gate.out.stderr).includes(TOKEN)) throw new Error("the token in the gate's output");

  // ---- report ----
  const f0 = (x: number) => x.toFixed(0);
  const f1 = (x: number) => x.toFixed(1);
  const f2 = (x: number) => x.toFixed(2);
  const rows: string[] = ['| operation | direct p50 ms | direct p90 ms | gate p50 ms | gate p90 ms | added p50 ms | added p90 ms | ratio p50 | ratio p90 |', '|---|---|---|---|---|---|---|---|---|'];
  const summary: Record<string, unknown> = {};
  for (const op of OPS) {
    const d = samples[op].direct.map((s) => s.ms);
    const g = samples[op].gate.map((s) => s.ms);
    const added = g.map((x, i) => x - d[i]!);
    const ratio = g.map((x, i) => x / d[i]!);
    summary[op] = {
      direct: { p50: median(d), p90: quantile(d, 0.9) },
      gate: { p50: median(g), p90: quantile(g, 0.9) },
      added: { p50: median(added), p90: quantile(added, 0.9) },
      ratio: { p50: median(ratio), p90: quantile(ratio, 0.9) },
    };
    rows.push(
      `| ${op} | ${f0(median(d))} | ${f0(quantile(d, 0.9))} | ${f0(median(g))} | ${f0(quantile(g, 0.9))} | **${f0(median(added))}** | ${f0(quantile(added, 0.9))} | **${f2(median(ratio))}x** | ${f2(quantile(ratio, 0.9))}x |`,
    );
  }
  const work2: string[] = ['| operation | upstream requests direct / gate (401s) | upstream CPU ms direct / gate | gate tree CPU ms |', '|---|---|---|---|'];
  for (const op of OPS) {
    const d = samples[op].direct;
    const g = samples[op].gate;
    const req = (xs: Sample[]) => `${f1(mean(xs.map((s) => s.upRequests)))} (${f1(mean(xs.map((s) => s.upChallenged)))})`;
    work2.push(`| ${op} | ${req(d)} / ${req(g)} | ${f0(mean(d.map((s) => s.upCpuMs)))} / ${f0(mean(g.map((s) => s.upCpuMs)))} | ${f0(mean(g.map((s) => s.gateCpuMs)))} |`);
  }
  console.log(`\n${ROUNDS} counted rounds; times from spawning git to its exit:\n${rows.join('\n')}`);
  console.log(`\nwork per operation (means over the counted rounds; CPU in 10 ms ticks, process trees):\n${work2.join('\n')}`);
  const partLine = (name: string, xs: number[]) => `${name} p50 ${f1(median(xs))} ms, p90 ${f1(quantile(xs, 0.9))} ms`;
  console.log(
    `\nparts, ${REPS} times each: ${partLine("the mirror refresh with nothing new (the gate's git fetch from the upstream)", parts.refresh)}; ${partLine('the pre-receive hook starting (node BUNDLE pre-receive, nothing to decide)', parts.hookStart)}; ${partLine('node -e 0', parts.nodeStart)}`,
  );
  const mem = (v: ReturnType<typeof vm>) => `${f1(v.rssMiB)} MiB (anon ${f1(v.anonMiB)}, file ${f1(v.fileMiB)})`;
  console.log(`\ngate VmRSS: idle ${mem(idle)}; right after the rounds ${mem(afterNow)}; 2 s after the parts ${mem(after)}; VmHWM ${f1(after.hwmMiB)} MiB`);
  console.log(`gate audit: ${auditLines.length} lines, ${allowedPushes} pushes allowed and forwarded`);
  console.log(`uptime at the end: ${uptimeEnd}`);
  if (JSON_OUT) {
    writeFileSync(
      JSON_OUT,
      JSON.stringify(
        {
          commit,
          node: process.version,
          git: gitVersion,
          repo: repoDesc,
          uptimeStart,
          uptimeEnd,
          summary,
          samples,
          parts,
          memory: { idle, afterNow, after },
        },
        null,
        2,
      ),
    );
  }
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
