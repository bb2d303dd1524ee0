import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort, runMain } from '../main-process.js';
import { afterEach, describe, expect, it } from 'vitest';
import { until } from './harness.js';

/** The sidecar's entry point, run as the container runs it (env only), on loopback. */
const MAIN = fileURLToPath(new URL('../../../../sidecars/egress/main.ts', import.meta.url));

let dir: string | undefined;
afterEach(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
  dir = undefined;
});
const tempDir = () => {
  dir ??= mkdtempSync(join(tmpdir(), 'bottle-egress-main-'));
  return dir;
};

function get(port: number, request: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1', () => s.write(request));
    let text = '';
    s.on('data', (c: Buffer) => {
      text += c.toString();
    });
    s.on('close', () => resolve(text));
    s.on('error', reject);
  });
}

const healthz = (port: number) => get(port, 'GET /healthz HTTP/1.1\r\nHost: egress\r\nConnection: close\r\n\r\n');

describe('egress main', () => {
  it('refuses to start without a readable allowlist', async () => {
    const { out, exited } = runMain(MAIN, { BOTTLE_SIDECAR_PORT: String(await freePort()), BOTTLE_EGRESS_ALLOWLIST: join(tempDir(), 'missing') });
    expect(await exited).toBe(1);
    expect(out.stderr).toContain('cannot read the allowlist');
    expect(out.stdout).not.toContain('ready');
  });

  it('refuses to start with a deny list it cannot read, or a bad port', async () => {
    const file = join(tempDir(), 'allowlist');
    writeFileSync(file, 'allowed.test\n');
    const bad = runMain(MAIN, { BOTTLE_SIDECAR_PORT: String(await freePort()), BOTTLE_EGRESS_ALLOWLIST: file, BOTTLE_EGRESS_DENY: '172.18.0.1,gateway' });
    expect(await bad.exited).toBe(2);
    expect(bad.out.stderr).toContain('BOTTLE_EGRESS_DENY');
    const port = runMain(MAIN, { BOTTLE_SIDECAR_PORT: 'egress', BOTTLE_EGRESS_ALLOWLIST: file });
    expect(await port.exited).toBe(2);
  });

  it('refuses to start with a placeholder or a hash list it cannot read, never printing either', async () => {
    const file = join(tempDir(), 'allowlist');
    writeFileSync(file, 'allowed.test\n');
    const short = runMain(MAIN, { BOTTLE_SIDECAR_PORT: String(await freePort()), BOTTLE_EGRESS_ALLOWLIST: file, BOTTLE_EGRESS_CANARY: 'shhh' });
    expect(await short.exited).toBe(2);
    expect(short.out.stderr).toContain('BOTTLE_EGRESS_CANARY');
    expect(short.out.stderr).not.toContain('shhh');
    const token = 'sk-test-a-real-token-pasted-by-mistake';
    const bad = runMain(MAIN, { BOTTLE_SIDECAR_PORT: String(await freePort()), BOTTLE_EGRESS_ALLOWLIST: file, BOTTLE_EGRESS_SECRET_HASHES: `${token}` });
    expect(await bad.exited).toBe(2);
    expect(bad.out.stderr).toContain('BOTTLE_EGRESS_SECRET_HASHES: entry 1 is not <length>:<sha256 hex>');
    expect(bad.out.stderr).not.toContain(token);
  });

  it('takes the placeholder and the token hashes from its env: a request carrying either is refused with the alarm', async () => {
    const d = tempDir();
    const file = join(d, 'allowlist');
    const auditFile = join(d, 'egress.jsonl');
    writeFileSync(file, 'allowed.test\n');
    const canary = 'bottle-placeholder-r1';
    const token = 'sk-test-0123456789abcdefghij';
    const port = await freePort();
    const { out } = runMain(MAIN, {
      BOTTLE_SIDECAR_PORT: String(port),
      BOTTLE_EGRESS_ALLOWLIST: file,
      BOTTLE_EGRESS_AUDIT: auditFile,
      BOTTLE_EGRESS_CANARY: canary,
      BOTTLE_EGRESS_SECRET_HASHES: `${token.length}:${createHash('sha256').update(token).digest('hex')}`,
    });
    await until(() => out.stdout.includes('ready'), 'ready', 20_000);
    expect(out.stderr).toContain('egress: canary: the placeholder and 1 token hash(es)');
    // Denied hosts both (nothing is resolved or dialled): the canary is checked first.
    const a = await get(port, `GET http://denied.test/?k=${canary} HTTP/1.1\r\nHost: denied.test\r\nConnection: close\r\n\r\n`);
    expect(a).toMatch(/^HTTP\/1\.1 403 [\s\S]*a credential/);
    const b = await get(port, `GET http://denied.test/ HTTP/1.1\r\nHost: denied.test\r\nX-Api-Key: ${token}\r\nConnection: close\r\n\r\n`);
    expect(b).toMatch(/^HTTP\/1\.1 403 [\s\S]*X-Api-Key header/);
    await until(() => readFileSync(auditFile, 'utf8').split('\n').length === 3, 'two audit lines');
    const lines = readFileSync(auditFile, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines.map((l) => [l.decision, l.alarm])).toEqual([
      ['deny', 'canary'],
      ['deny', 'token'],
    ]);
    for (const text of [a, b, out.stderr, out.stdout, readFileSync(auditFile, 'utf8')]) {
      expect(text).not.toContain(canary);
      expect(text).not.toContain(token);
    }
    expect(out.stderr).toContain('ALARM (token)');
  });

  it('learns more token hashes from its hashes file while it runs (a rotated token, a route approved later)', async () => {
    const d = tempDir();
    const file = join(d, 'allowlist');
    const hashesFile = join(d, 'secret-hashes');
    const auditFile = join(d, 'egress.jsonl');
    writeFileSync(file, 'allowed.test\n');
    const first = 'sk-first-0123456789abcdef';
    const later = 'sk-later-fedcba9876543210';
    const hash = (t: string) => `${t.length}:${createHash('sha256').update(t).digest('hex')}`;
    const port = await freePort();
    const { out } = runMain(MAIN, {
      BOTTLE_SIDECAR_PORT: String(port),
      BOTTLE_EGRESS_ALLOWLIST: file,
      BOTTLE_EGRESS_AUDIT: auditFile,
      BOTTLE_EGRESS_SECRET_HASHES: hash(first),
      BOTTLE_EGRESS_SECRET_HASHES_FILE: hashesFile,
    });
    await until(() => out.stdout.includes('ready'), 'ready', 20_000);
    const ask = (t: string) => get(port, `GET http://denied.test/ HTTP/1.1\r\nHost: denied.test\r\nX-Leak: ${t}\r\nConnection: close\r\n\r\n`);
    // Without the file only the env's hash is known: the later token is an ordinary denial.
    expect(await ask(first)).toMatch(/X-Leak header/);
    expect(await ask(later)).not.toMatch(/X-Leak header/);
    writeFileSync(`${hashesFile}.tmp`, `${hash(later)}\nnot a hash\n`);
    renameSync(`${hashesFile}.tmp`, hashesFile);
    await until(() => out.stderr.includes('canary reloaded: 2 token hash(es)'), 'the hashes file read');
    expect(await ask(later)).toMatch(/^HTTP\/1\.1 403 [\s\S]*X-Leak header/);
    expect(await ask(first)).toMatch(/X-Leak header/);
    expect(out.stderr).toContain('line is ignored');
    for (const text of [out.stderr, out.stdout, readFileSync(auditFile, 'utf8')]) {
      expect(text).not.toContain(first);
      expect(text).not.toContain(later);
    }
  });

  it('says ready, answers /healthz, denies with the bottle name, audits to the file, and fails its health check when the allowlist goes away', async () => {
    const d = tempDir();
    const file = join(d, 'allowlist');
    const auditFile = join(d, 'audit', 'egress.jsonl');
    writeFileSync(file, 'allowed.test\n');
    const port = await freePort();
    const { out } = runMain(MAIN, {
      BOTTLE_SIDECAR_PORT: String(port),
      BOTTLE_EGRESS_ALLOWLIST: file,
      BOTTLE_EGRESS_AUDIT: auditFile,
      BOTTLE_EGRESS_DENY: '172.18.0.1',
      BOTTLE_BOTTLE: 'web',
      BOTTLE_RUN: 'r1',
    });
    await until(() => out.stdout.includes('ready'), 'ready', 20_000);
    expect(out.stdout).toBe('ready\n');
    expect(await healthz(port)).toMatch(/^HTTP\/1\.1 200 [\s\S]*1 allowlist entries/);

    // A denied host: 403 with the manifest key; nothing is resolved or dialled for it.
    const denied = await get(port, 'GET http://denied.test/ HTTP/1.1\r\nHost: denied.test\r\n\r\n');
    expect(denied).toMatch(/^HTTP\/1\.1 403 [\s\S]*bottles\.web\.egress\.allow/);
    await until(() => readFileSync(auditFile, 'utf8').includes('denied.test'), 'the audit line');
    expect(JSON.parse(readFileSync(auditFile, 'utf8').trim())).toMatchObject({ host: 'denied.test', decision: 'deny', run: 'r1' });

    // The allowlist disappears: the proxy keeps its last policy but reports itself unhealthy.
    rmSync(file);
    await until(() => out.stderr.includes('keeping the previous one'), 'the read error', 5000);
    expect(await healthz(port)).toMatch(/^HTTP\/1\.1 503 [\s\S]*cannot read the allowlist/);

    // It comes back (renamed into place) with a new entry.
    writeFileSync(`${file}.tmp`, 'allowed.test\nother.test\n');
    renameSync(`${file}.tmp`, file);
    await until(() => out.stderr.includes('allowlist reloaded: 2 entries'), 'the reload', 5000);
    expect(await healthz(port)).toMatch(/^HTTP\/1\.1 200 [\s\S]*2 allowlist entries/);
  });
});
