import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BottleError } from '../../../config/errors.js';
import { type SecretRef, validateManifest } from '../../../config/manifest.js';
import { checkSecrets, describeRef, type FileRef, listSecretRefs, readSecret, type SecretContext } from '../../../config/secrets.js';
import { remote, route } from './fixtures.js';

const VALUE = 'sk-ant-very-secret-value-0123456789';

let root: string;
let ctx: SecretContext;

beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), 'bottle-secrets-'));
  mkdirSync(join(root, 'home', '.ssh'), { recursive: true });
  mkdirSync(join(root, 'project'));
  ctx = { baseDir: join(root, 'project'), homeDir: join(root, 'home'), env: {} };
});

afterEach(() => {
  rmSync(root, { recursive: true, force: true });
});

/** The error readSecret throws, checked to be a SECRET_UNREADABLE that names the ref and not the value. */
function failure(ref: SecretRef | FileRef): BottleError {
  let caught: unknown;
  try {
    readSecret(ref, ctx);
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(BottleError);
  const err = caught as BottleError;
  expect(err.code).toBe('SECRET_UNREADABLE');
  expect(err.message).toContain(describeRef(ref));
  for (const text of [err.message, err.hint ?? '', JSON.stringify(err.toData())]) {
    expect(text).not.toContain(VALUE);
    expect(text).not.toContain('very-secret');
  }
  return err;
}

describe('describeRef', () => {
  it('prints the ref as written', () => {
    expect(describeRef({ env: 'ANTHROPIC_API_KEY' })).toBe('env:ANTHROPIC_API_KEY');
    expect(describeRef({ file: '~/.ssh/key' })).toBe('file:~/.ssh/key');
  });
});

describe('readSecret: env refs', () => {
  it('returns the value when set', () => {
    ctx.env.ANTHROPIC_API_KEY = VALUE;
    expect(readSecret({ env: 'ANTHROPIC_API_KEY' }, ctx)).toBe(VALUE);
  });

  it('fails when unset or empty, naming the variable', () => {
    expect(failure({ env: 'ANTHROPIC_API_KEY' }).message).toMatch(/not set/);
    expect(failure({ env: 'ANTHROPIC_API_KEY' }).hint).toMatch(/export ANTHROPIC_API_KEY/);
    ctx.env.ANTHROPIC_API_KEY = '';
    expect(failure({ env: 'ANTHROPIC_API_KEY' }).message).toMatch(/empty/);
  });
});

describe('readSecret: file refs', () => {
  it('reads a file relative to the manifest folder, trimming one trailing newline', () => {
    writeFileSync(join(root, 'project', 'token'), `${VALUE}\n\n`);
    expect(readSecret({ file: './token' }, ctx)).toBe(`${VALUE}\n`);
    writeFileSync(join(root, 'project', 'crlf'), `${VALUE}\r\n`);
    expect(readSecret({ file: 'crlf' }, ctx)).toBe(VALUE);
    writeFileSync(join(root, 'project', 'bare'), VALUE);
    expect(readSecret({ file: 'bare' }, ctx)).toBe(VALUE);
  });

  it('expands ~ to the home folder and accepts absolute paths', () => {
    writeFileSync(join(root, 'home', '.ssh', 'key'), `${VALUE}\n`);
    expect(readSecret({ file: '~/.ssh/key' }, ctx)).toBe(VALUE);
    expect(readSecret({ file: join(root, 'home', '.ssh', 'key') }, ctx)).toBe(VALUE);
  });

  it('fails on a missing file with the resolved path and the OS reason', () => {
    const err = failure({ file: '~/.ssh/missing' });
    expect(err.message).toContain(join(root, 'home', '.ssh', 'missing'));
    expect(err.message).toContain('ENOENT');
  });

  it('fails on paths that cannot be read as a file', () => {
    writeFileSync(join(root, 'project', 'plain'), VALUE);
    expect(failure({ file: 'plain/inside' }).message).toContain('ENOTDIR');
    expect(failure({ file: '.' }).message).toMatch(/not a regular file/);
    execFileSync('mkfifo', [join(root, 'project', 'fifo')]);
    expect(failure({ file: 'fifo' }).message).toMatch(/not a regular file/);
  });

  it('fails on an empty or oversized file without reading it into the message', () => {
    writeFileSync(join(root, 'project', 'empty'), '\n');
    expect(failure({ file: 'empty' }).message).toMatch(/empty/);
    writeFileSync(join(root, 'project', 'huge'), VALUE);
    truncateSync(join(root, 'project', 'huge'), 2 * 1024 * 1024);
    expect(failure({ file: 'huge' }).message).toMatch(/1 MiB/);
  });
});

describe('checkSecrets', () => {
  function manifestWithRefs() {
    const result = validateManifest({
      version: 1,
      bottles: {
        web: {
          cred_proxy: { routes: [route({ token: { env: 'API_KEY' }, ca: { file: './ca.pem' } })] },
          git: [
            remote({ name: 'https', token: { file: '~/git-token' } }),
            remote({ name: 'ssh', upstream: 'ssh://git@h/r.git', token: undefined, key: { file: '~/.ssh/key' }, known_hosts: { env: 'KNOWN_HOSTS' } }),
          ],
        },
      },
      agents: {},
    });
    if (!result.ok) throw new Error(JSON.stringify(result.issues));
    return result.manifest;
  }

  it('lists every secret ref with its manifest path', () => {
    expect(listSecretRefs(manifestWithRefs())).toEqual([
      { path: 'bottles.web.cred_proxy.routes[0].token', ref: { env: 'API_KEY' } },
      { path: 'bottles.web.cred_proxy.routes[0].ca', ref: { file: './ca.pem' } },
      { path: 'bottles.web.git[0].token', ref: { file: '~/git-token' } },
      { path: 'bottles.web.git[1].key', ref: { file: '~/.ssh/key' } },
      { path: 'bottles.web.git[1].known_hosts', ref: { env: 'KNOWN_HOSTS' } },
    ]);
  });

  it('returns one issue per unreadable ref, none when all are readable', () => {
    const manifest = manifestWithRefs();
    ctx.env.KNOWN_HOSTS = 'github.com ssh-ed25519 AAAA';
    writeFileSync(join(root, 'home', 'git-token'), VALUE);
    const issues = checkSecrets(manifest, ctx);
    expect(issues.map((i) => i.path)).toEqual([
      'bottles.web.cred_proxy.routes[0].token',
      'bottles.web.cred_proxy.routes[0].ca',
      'bottles.web.git[1].key',
    ]);
    expect(issues[0]?.message).toMatch(/env:API_KEY is not set/);
    expect(JSON.stringify(issues)).not.toContain(VALUE);

    ctx.env.API_KEY = VALUE;
    writeFileSync(join(root, 'project', 'ca.pem'), '-----BEGIN CERTIFICATE-----\n');
    writeFileSync(join(root, 'home', '.ssh', 'key'), '-----BEGIN OPENSSH PRIVATE KEY-----\n');
    expect(checkSecrets(manifest, ctx)).toEqual([]);
  });
});
