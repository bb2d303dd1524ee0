import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

/** Runs the built CLI (dist/) as a user would; `npm test` builds it first. */
export const ROOT = resolve(import.meta.dirname, '../..');
export const MAIN = join(ROOT, 'dist/cli/main.js');

export function ensureBuilt() {
  if (!existsSync(MAIN)) {
    const r = spawnSync(process.execPath, [join(ROOT, 'scripts/build.mjs')], { stdio: 'inherit' });
    if (r.status !== 0) throw new Error('build failed');
  }
}

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export function bottle(args: string[], opts: { cwd: string; env: Record<string, string>; input?: string }): Promise<CliResult> {
  return new Promise((res, rej) => {
    const child = spawn(process.execPath, [MAIN, ...args], {
      cwd: opts.cwd,
      env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/root', ...opts.env },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', rej);
    child.on('close', (code, signal) => res({ code, signal, stdout, stderr }));
    child.stdin.end(opts.input ?? '');
  });
}

/** A temp project folder with a manifest, and a BOTTLE_HOME inside it. */
export function project(manifest: string): { dir: string; home: string } {
  const dir = mkdtempSync(join(tmpdir(), 'bottle-cli-'));
  writeFileSync(join(dir, 'bottle.yaml'), manifest);
  return { dir, home: join(dir, 'home') };
}

/**
 * A project on the fake backend (BOTTLE_BACKEND=fake) and a `cli(...args)` that runs the built
 * CLI in it as user alice, with `env` added to its environment.
 */
export function fakeProject(manifest: string, env: Record<string, string> = {}) {
  const p = project(manifest);
  const fullEnv = { BOTTLE_BACKEND: 'fake', BOTTLE_HOME: p.home, USER: 'alice', ...env };
  const cli = (...args: string[]) => bottle(args, { cwd: p.dir, env: fullEnv });
  return { p, env: fullEnv, cli };
}
