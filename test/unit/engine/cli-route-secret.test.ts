import { renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { beforeAll, describe, expect, it } from 'vitest';
import { FakeRuntime } from '../../../effects/fakes/fake-runtime.js';
import { approvedTokenPath } from '../../../machines/proposals.js';
import { ensureBuilt, fakeProject } from '../../support/cli.js';

/**
 * The secret a human names on `bottle approve --token-env/--token-file` passes the one token
 * rule before anything reaches the cred-proxy (the fake backend, a detached run): a token the
 * egress canary could not recognise is refused with SECRET_INVALID naming the ref, exit 2.
 */

const MANIFEST = `version: 1
bottles:
  box:
    egress: { allow: [allowed.test] }
    supervise: true
    cred_proxy:
      routes:
        - path: /api
          upstream: https://api.test
          token: { file: api-token }
          inject: { header: x-api-key, format: "{token}" }
agents:
  coder:
    bottle: box
    prompt: do the thing
    command: [fake-agent, --ms, forever]
`;

beforeAll(() => ensureBuilt());

describe('approving a route with a secret that breaks the token rule', () => {
  it('--token-env and --token-file of a bad token: SECRET_INVALID naming the ref, exit 2, nothing in the proxy; a good one is approved', async () => {
    const BAD = 'bad token with spaces 12345';
    const { p, cli } = fakeProject(MANIFEST, { BAD_TOKEN: BAD, GOOD_TOKEN: 'good-token-0123456789' });
    writeFileSync(join(p.dir, 'api-token'), 'api-token-one-123456\n');
    writeFileSync(join(p.dir, 'bad-token'), 'bad\ttoken-in-a-file\n');
    const started = await cli('run', 'coder', '--detach', '--json');
    expect(started.code, started.stderr).toBe(0);
    const world = join(p.home, 'fake-world.json');
    const proxyFiles = () => FakeRuntime.read(world).containers['bottle-coder-cred-proxy']?.files ?? {};
    const id = 'proute000001';
    try {
      const route = { path: '/later', upstream: 'https://later.test', inject: { header: 'x-api-key', format: '{token}' }, roles: [] };
      const stdout = `${JSON.stringify({ source: 'supervise', type: 'proposal', at: new Date().toISOString(), proposal: { id, kind: 'route', reason: 'later api', change: { route } } })}\n`;
      // The owner, another process, rewrites the world file too: the line is written again until it has it.
      let list: { id: string; status: string }[] = [];
      for (let i = 0; i < 300 && !list.some((x) => x.id === id); i++) {
        const w = FakeRuntime.read(world);
        if (w.containers['bottle-coder-supervise']!.stdout !== stdout) {
          w.containers['bottle-coder-supervise']!.stdout = stdout;
          writeFileSync(`${world}.tmp`, JSON.stringify(w));
          renameSync(`${world}.tmp`, world);
        }
        const r = await cli('proposals', 'coder', '--json');
        list = r.code === 0 ? JSON.parse(r.stdout) : [];
        await delay(50);
      }
      expect(list.map((x) => [x.id, x.status])).toEqual([[id, 'pending']]);

      const fromEnv = await cli('approve', 'coder', id, '--token-env', 'BAD_TOKEN', '--json');
      expect(fromEnv.code, fromEnv.stderr).toBe(2);
      const err = JSON.parse(fromEnv.stdout).error as { code: string; message: string; hint: string };
      expect(err.code).toBe('SECRET_INVALID');
      expect(err.message).toContain('env:BAD_TOKEN');
      expect(err.message).toContain(id);
      expect(err.message).toContain('whitespace');
      expect(`${fromEnv.stdout}${fromEnv.stderr}`).not.toContain(BAD);

      const fromFile = await cli('approve', 'coder', id, '--token-file', 'bad-token');
      expect(fromFile.code).toBe(2);
      expect(fromFile.stderr).toContain('SECRET_INVALID');
      expect(fromFile.stderr).toContain(`file:${join(p.dir, 'bad-token')}`);
      expect(fromFile.stderr).not.toContain('token-in-a-file');

      // Nothing reached the proxy, and the proposal still waits for a decision.
      expect(proxyFiles()[approvedTokenPath(id)]).toBeUndefined();
      const after = JSON.parse((await cli('proposals', 'coder', '--json')).stdout) as { id: string; status: string }[];
      expect(after.map((x) => [x.id, x.status])).toEqual([[id, 'pending']]);

      const good = await cli('approve', 'coder', id, '--token-env', 'GOOD_TOKEN');
      expect(good.code, good.stderr).toBe(0);
      expect(proxyFiles()[approvedTokenPath(id)]).toBe('good-token-0123456789');
    } finally {
      const stop = await cli('stop', 'coder');
      expect(stop.code, stop.stderr).toBe(0);
    }
    const replay = await cli('replay', 'coder');
    expect(replay.code, replay.stderr).toBe(0);
  });
});
