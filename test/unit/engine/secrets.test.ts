import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { validateManifest } from '../../../config/manifest.js';
import { FakeRuntime } from '../../../effects/fakes/fake-runtime.js';
import { postCommand } from '../../../store/mailbox.js';
import { commandsDir } from '../../../store/paths.js';
import { fakeContext, startFakeRun, testInput, until, worldFile } from '../../support/engine.js';

const TOKEN = 'sk-real-0123456789abcdef';

function filesUnder(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    return statSync(p).isDirectory() ? filesUnder(p) : [p];
  });
}

describe('route secrets', () => {
  it('reach the cred-proxy container through the runtime only, never the log or the home', async () => {
    const ctx = fakeContext({ MODEL_TOKEN: TOKEN });
    const m = validateManifest({
      version: 1,
      bottles: {
        box: {
          cred_proxy: {
            routes: [
              { path: '/anthropic', upstream: 'https://api.model.test', token: { env: 'MODEL_TOKEN' }, inject: { header: 'x-api-key', format: '{token}' }, roles: ['anthropic-base-url'] },
            ],
          },
        },
      },
      agents: { coder: { bottle: 'box', command: ['fake-agent', '--ms', 'forever'] } },
    });
    if (!m.ok) throw new Error(JSON.stringify(m.issues));
    const input = testInput(ctx, m.manifest);
    let state = '';
    const host = await startFakeRun(ctx, input, { onState: (s) => (state = s) });
    await until(() => state === 'running', 'running');

    const proxy = FakeRuntime.read(worldFile(ctx)).containers['bottle-coder-cred-proxy'];
    expect(proxy?.files?.['/run/bottle/cred-proxy/secrets/0']).toBe(TOKEN);
    const routes = JSON.parse(proxy?.files?.['/run/bottle/cred-proxy/routes.json'] ?? '{}');
    expect(routes.routes[0]).toMatchObject({ path: '/anthropic', upstream: 'https://api.model.test', token_file: '/run/bottle/cred-proxy/secrets/0' });
    expect(JSON.stringify(routes)).not.toContain(TOKEN);
    const agent = FakeRuntime.read(worldFile(ctx)).containers['bottle-coder'];
    expect(agent?.envNames).toContain('CLAUDE_CODE_OAUTH_TOKEN');

    postCommand(commandsDir(ctx.home, input.identity, input.runId), { id: 's1', type: 'stop' });
    expect((await host.done).state).toBe('done');
    for (const file of filesUnder(ctx.home)) {
      expect(readFileSync(file, 'utf8').includes(TOKEN), file).toBe(false);
    }
  });
});
