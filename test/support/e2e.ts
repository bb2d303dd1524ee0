import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEFAULT_SOCKET } from '../../effects/docker/client.js';
import { LABEL, type LabelledObject } from '../../machines/ports.js';
import { readLockOwner } from '../../store/lock.js';
import { lockFile } from '../../store/paths.js';
import { listRuns } from '../../store/state-doc.js';
import { bottle, type CliResult, ensureBuilt, MAIN } from './cli.js';
import { docker, runtime } from './docker.js';
import { ensureTestImages, type TestImages } from './images.js';

/**
 * End-to-end helpers: every test drives the built CLI (`node dist/cli/main.js`) as a user
 * would, with its own BOTTLE_HOME and agent names unique to this process, so identities never
 * collide with another file, another run of the suite or another user of the same daemon.
 * Everything a file launched is found again by its identity label and removed, and the file
 * proves at its end that nothing labelled with its identities is left.
 */

export { type CliResult, MAIN };

/** A fresh folder under the system temp dir. */
export function tempDir(what: string): string {
  return mkdtempSync(join(tmpdir(), `bottle-e2e-${what}-`));
}

/** `e2e-<what>-<hex>`: an agent name (and, without --cwd, identity) nobody else uses. */
export function uniqueAgent(what: string): string {
  return `e2e-${what}-${randomBytes(4).toString('hex')}`;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls `probe` until it returns something other than undefined/false, or fails after `ms`. */
export async function waitFor<T>(what: string, probe: () => Promise<T | undefined | false> | T | undefined | false, ms = 30_000, every = 150): Promise<T> {
  const until = Date.now() + ms;
  let lastError: unknown;
  for (;;) {
    try {
      const v = await probe();
      if (v !== undefined && v !== false) return v;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() > until) {
      throw new Error(`timed out after ${ms} ms waiting for ${what}${lastError ? ` (last error: ${(lastError as Error).message})` : ''}`);
    }
    await sleep(every);
  }
}

/** Parses a command's single JSON document, with its output in the message when it is not JSON. */
export function json<T = Record<string, unknown>>(r: CliResult): T {
  try {
    return JSON.parse(r.stdout) as T;
  } catch {
    throw new Error(`expected one JSON document on stdout (exit ${r.code}):\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`);
  }
}

/** A command's exit and both streams, for assertion messages. */
export function show(r: CliResult): string {
  return `exit ${r.code} signal ${r.signal}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;
}

/** A CLI process left running (an attached run, a resume); its output is collected as it comes. */
export interface LiveCli {
  child: ChildProcessWithoutNullStreams;
  readonly stdout: string;
  readonly stderr: string;
  done: Promise<CliResult>;
}

/**
 * The manifest folder, BOTTLE_HOME and environment of one test file. Every identity a test
 * uses is registered with track() so cleanup() can find its Docker objects by label.
 */
export class E2eSuite {
  readonly dir: string;
  readonly home: string;
  readonly identities = new Set<string>();
  /** Docker objects a test made itself (not labelled as ours): removed by id at cleanup. */
  readonly foreignContainers = new Set<string>();
  private readonly live = new Set<LiveCli>();
  images: TestImages | undefined;

  constructor(what: string, manifest: string) {
    this.dir = tempDir(what);
    this.home = join(this.dir, 'home');
    writeFileSync(join(this.dir, 'bottle.yaml'), manifest);
  }

  /** Builds dist/ if missing and the product images once (cached by content tag). */
  async setup(): Promise<void> {
    ensureBuilt();
    this.images = await ensureTestImages();
  }

  env(extra: Record<string, string> = {}): Record<string, string> {
    return { BOTTLE_HOME: this.home, BOTTLE_BASE_SOURCE: 'bootstrap', ...extra };
  }

  track(identity: string): string {
    this.identities.add(identity);
    return identity;
  }

  /** Runs the CLI to completion in the manifest folder. */
  cli(args: string[], opts: { env?: Record<string, string>; cwd?: string } = {}): Promise<CliResult> {
    return bottle(args, { cwd: opts.cwd ?? this.dir, env: this.env(opts.env) });
  }

  /** Starts the CLI and returns at once; the process is killed at cleanup if still running. */
  start(args: string[], opts: { env?: Record<string, string>; cwd?: string } = {}): LiveCli {
    const child = spawn(process.execPath, [MAIN, ...args], {
      cwd: opts.cwd ?? this.dir,
      env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/root', ...this.env(opts.env) },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.stdin.end();
    const live: LiveCli = {
      child,
      get stdout() {
        return stdout;
      },
      get stderr() {
        return stderr;
      },
      done: new Promise<CliResult>((res, rej) => {
        child.on('error', rej);
        child.on('close', (code, signal) => res({ code, signal, stdout, stderr }));
      }),
    };
    this.live.add(live);
    void live.done.finally(() => this.live.delete(live));
    return live;
  }

  /** Every container, network and volume labelled with one of this suite's identities. */
  async labelled(identities: Iterable<string> = this.identities): Promise<LabelledObject[]> {
    const rt = runtime();
    const lists = await Promise.all([...identities].map((id) => rt.listLabelled({ [LABEL.identity]: id })));
    return lists.flat();
  }

  /** `kind name` of what is left for `identities`, for `expect(...).toEqual([])`. */
  async leftovers(identities: Iterable<string> = this.identities): Promise<string[]> {
    return (await this.labelled(identities)).map((o) => `${o.kind} ${o.name}`).sort();
  }

  /**
   * Removes everything the suite may have left: CLI processes it started, owner processes of
   * its runs (SIGTERM asks them to tear down; SIGKILL if they do not), then every object
   * labelled with its identities, the per-identity images, and containers it made itself.
   */
  async cleanup(): Promise<void> {
    for (const l of [...this.live]) l.child.kill('SIGKILL');
    await Promise.all([...this.live].map((l) => l.done.catch(() => undefined)));
    const owners: number[] = [];
    for (const identity of this.identities) {
      for (const runId of safeRuns(this.home, identity)) {
        const owner = readLockOwner(lockFile(this.home, identity, runId));
        if (owner?.alive) owners.push(owner.pid);
      }
    }
    for (const pid of owners) signal(pid, 'SIGTERM');
    const deadline = Date.now() + 15_000;
    while (owners.some(alive) && Date.now() < deadline) await sleep(100);
    for (const pid of owners.filter(alive)) signal(pid, 'SIGKILL');

    const rt = runtime();
    const objects = await this.labelled();
    await Promise.all(objects.filter((o) => o.kind === 'container').map((o) => rt.removeContainer(o.id)));
    await Promise.all(objects.filter((o) => o.kind === 'network').map((o) => rt.removeNetwork(o.name)));
    await Promise.all(objects.filter((o) => o.kind === 'volume').map((o) => rt.removeVolume(o.name)));
    for (const id of this.foreignContainers) {
      await docker().getContainer(id).remove({ force: true }).catch(ignore404);
    }
    this.foreignContainers.clear();
    for (const identity of this.identities) {
      for (const ref of [`bot-bottle/cwd:${identity}`, `bot-bottle/bottle:${identity}`, `bot-bottle/custom:${identity}`]) {
        await docker().getImage(ref).remove().catch(ignoreGone);
      }
    }
  }

  /** Cleans up, then fails if anything labelled with the suite's identities is still there. */
  async finish(): Promise<void> {
    await this.cleanup();
    const left = await this.leftovers();
    rmSync(this.dir, { recursive: true, force: true });
    if (left.length > 0) throw new Error(`Docker objects labelled with this file's identities were left behind: ${left.join(', ')}`);
  }
}

function safeRuns(home: string, identity: string): string[] {
  try {
    return listRuns(home, identity);
  } catch {
    return [];
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // Already gone.
  }
}

function ignore404(err: unknown): void {
  if ((err as { statusCode?: number }).statusCode !== 404) throw err;
}

/** An image still used by a container (409) is someone else's business; gone (404) is fine. */
function ignoreGone(err: unknown): void {
  const code = (err as { statusCode?: number }).statusCode;
  if (code !== 404 && code !== 409) throw err;
}

/** `docker inspect` of a container, or null when it does not exist. */
export async function inspectContainer(name: string): Promise<{ id: string; name: string; running: boolean; status: string } | null> {
  try {
    const c = await docker().getContainer(name).inspect();
    return { id: c.Id, name: c.Name.replace(/^\//, ''), running: c.State.Running, status: c.State.Status };
  } catch (err) {
    ignore404(err);
    return null;
  }
}

/**
 * A Docker API endpoint on a unix socket of our own that forwards to the local daemon but
 * hides, in the container/network/volume listings, every object labelled with an identity
 * outside `identities` (objects without our identity label pass through untouched).
 *
 * Why: `bottle cleanup` is daemon-wide and only knows the live runs of its own BOTTLE_HOME,
 * so on a daemon shared with other users or test runs it would remove their live bottles.
 * Pointing the CLI's DOCKER_HOST here keeps a test's cleanup to its own identities, while it
 * still sees every unlabelled container (which it must never touch).
 */
export async function scopedDockerHost(identities: string[]): Promise<{ dockerHost: string; close(): Promise<void> }> {
  const dir = tempDir('docker-proxy');
  mkdirSync(dir, { recursive: true });
  const socket = join(dir, 'docker.sock');
  if (existsSync(socket)) unlinkSync(socket);
  const allowed = new Set(identities);
  const LIST = /^(?:\/v[0-9.]+)?\/(containers\/json|networks|volumes)\/?(?:\?|$)/;

  const keep = (o: { Labels?: Record<string, string> | null }) => {
    const id = o.Labels?.[LABEL.identity];
    return id === undefined || allowed.has(id);
  };

  const server = http.createServer((req, res) => {
    const upstream = http.request(
      { socketPath: DEFAULT_SOCKET, path: req.url, method: req.method, headers: req.headers },
      (up) => {
        const list = req.method === 'GET' && LIST.exec(req.url ?? '');
        if (!list || (up.statusCode ?? 500) >= 300) {
          res.writeHead(up.statusCode ?? 502, up.headers);
          up.pipe(res);
          return;
        }
        const chunks: Buffer[] = [];
        up.on('data', (c: Buffer) => chunks.push(c));
        up.on('end', () => {
          let body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown;
          if (list[1] === 'volumes') {
            const v = body as { Volumes?: { Labels?: Record<string, string> | null }[] | null };
            body = { ...v, Volumes: (v.Volumes ?? []).filter(keep) };
          } else {
            body = (body as { Labels?: Record<string, string> | null }[]).filter(keep);
          }
          const text = Buffer.from(JSON.stringify(body));
          const headers = { ...up.headers, 'content-length': String(text.length) };
          delete headers['transfer-encoding'];
          res.writeHead(up.statusCode ?? 200, headers);
          res.end(text);
        });
      },
    );
    upstream.on('error', (err) => {
      res.writeHead(502, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ message: `e2e docker proxy: ${err.message}` }));
    });
    req.pipe(upstream);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socket, resolve);
  });
  return {
    dockerHost: `unix://${socket}`,
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
