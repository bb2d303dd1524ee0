import { spawn } from 'node:child_process';
import { mkdir, readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import type { BuildProgress } from '../../machines/ports.js';

/**
 * Claude Code for the agent image. Containers cannot reach the npm registry, so the
 * package is fetched on the host with `npm pack` into a cache folder and COPYed into
 * the build. @anthropic-ai/claude-code itself is a thin wrapper (Node >= 22, a
 * postinstall step) around per-platform packages; the image takes the platform
 * package for the daemon's architecture, which holds the native `claude` binary and
 * needs neither npm nor a newer Node in the image.
 */

export interface ClaudeCodeOptions {
  /** Where packed tarballs are kept (reused when npm is unreachable later). */
  cacheDir: string;
  /** The Docker daemon's architecture as `docker info` reports it (x86_64, aarch64, ...). */
  architecture: string;
  /** npm version or dist-tag; default latest. */
  version?: string;
  progress: BuildProgress;
  /** The npm program; default `npm` from PATH. */
  npm?: string;
  signal?: AbortSignal;
}

export type ClaudeCodeResult = { tarball: string; note?: string } | { tarball: null; note: string };

const ARCH: Record<string, string> = { x86_64: 'x64', amd64: 'x64', aarch64: 'arm64', arm64: 'arm64' };

/** The platform package holding the linux (glibc: the image is Debian) binary for `architecture`. */
export function claudeCodePackage(architecture: string): string | null {
  const arch = ARCH[architecture.toLowerCase()];
  return arch ? `@anthropic-ai/claude-code-linux-${arch}` : null;
}

/** What to tell a user whose agent image has no Claude Code. */
export function claudeCodeMissingNote(reason: string): string {
  return (
    `note: Claude Code is not installed in the agent image (${reason}). ` +
    'To add it, run `bottle images build` with the Claude Code option on a host that can reach registry.npmjs.org, ' +
    'or give the bottle an image that has it (image.dockerfile or image.ref in bottle.yaml).'
  );
}

function runNpm(npm: string, args: string[], cwd: string, signal?: AbortSignal): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(npm, args, { cwd, stdio: ['ignore', 'pipe', 'pipe'], ...(signal ? { signal } : {}) });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => {
      stdout += c.toString('utf8');
    });
    child.stderr.on('data', (c: Buffer) => {
      stderr += c.toString('utf8');
    });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code: code ?? 1, stdout, stderr }));
  });
}

async function newestCached(cacheDir: string, pkg: string): Promise<string | null> {
  const prefix = `${pkg.replace(/^@/, '').replace('/', '-')}-`;
  const all = await readdir(cacheDir).catch((err: unknown) => {
    if ((err as { code?: unknown }).code === 'ENOENT') return [] as string[];
    throw err;
  });
  const names = all.filter((n) => n.startsWith(prefix) && n.endsWith('.tgz'));
  let best: { file: string; mtime: number } | null = null;
  for (const name of names) {
    const file = path.join(cacheDir, name);
    const { mtimeMs } = await stat(file);
    if (!best || mtimeMs > best.mtime) best = { file, mtime: mtimeMs };
  }
  return best?.file ?? null;
}

/**
 * The newest tarball an earlier packClaudeCode left in `cacheDir`, or null. Commands
 * other than `bottle images build` pass this to the plan, so they compute the same agent
 * tag as the build that added Claude Code instead of building an image without it.
 */
export async function findCachedClaudeCode(cacheDir: string, architecture: string): Promise<string | null> {
  const pkg = claudeCodePackage(architecture);
  return pkg ? newestCached(cacheDir, pkg) : null;
}

/**
 * Packs the Claude Code binary package on the host. Never throws for an unreachable
 * registry: the result then carries a cached tarball or `tarball: null`, with a note.
 */
export async function packClaudeCode(opts: ClaudeCodeOptions): Promise<ClaudeCodeResult> {
  const pkg = claudeCodePackage(opts.architecture);
  if (!pkg) return { tarball: null, note: claudeCodeMissingNote(`no Claude Code build for the daemon's architecture ${opts.architecture}`) };
  await mkdir(opts.cacheDir, { recursive: true });
  const spec = `${pkg}@${opts.version ?? 'latest'}`;
  opts.progress(`fetching ${spec} with npm on this host`);
  let failure: string;
  try {
    const res = await runNpm(opts.npm ?? 'npm', ['pack', spec, '--json', '--pack-destination', opts.cacheDir], opts.cacheDir, opts.signal);
    if (res.code === 0) {
      const packed = JSON.parse(res.stdout) as { filename?: string; version?: string }[];
      const filename = packed[0]?.filename;
      if (filename) {
        opts.progress(`packed ${pkg} ${packed[0]?.version ?? ''} into ${opts.cacheDir}`);
        return { tarball: path.join(opts.cacheDir, path.basename(filename)) };
      }
      failure = 'npm pack printed no file name';
    } else {
      failure = res.stderr.trim().split('\n').slice(-3).join(' ') || `npm pack exited ${res.code}`;
    }
  } catch (err) {
    if ((err as { code?: unknown }).code !== 'ENOENT') throw err;
    failure = 'npm is not installed on this host';
  }
  const cached = await newestCached(opts.cacheDir, pkg);
  if (cached) return { tarball: cached, note: `npm pack ${spec} failed (${failure}); using the cached ${path.basename(cached)}` };
  return { tarball: null, note: claudeCodeMissingNote(`npm pack ${spec} failed: ${failure}`) };
}
