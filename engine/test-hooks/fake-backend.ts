/**
 * TEST HOOK, not a feature. BOTTLE_BACKEND=fake runs the engine against a file-backed fake
 * Docker (effects/fake-runtime.ts, effects/fakes.ts): the unit and CLI tests drive whole runs
 * without a daemon, and the BOTTLE_FAKE_* variables script its failures. It is loaded only
 * when that variable asks for it; a user's run never touches it.
 */
import { join } from 'node:path';
import { FakeRuntime, type FakeFailure } from '../../effects/fakes/fake-runtime.js';
import { FakeCapabilities, FakeImages } from '../../effects/fakes/fake-images.js';
import type { Backend } from '../backend.js';
import type { EngineContext } from '../context.js';

export function fakeBackend(ctx: EngineContext): Backend {
  const world = ctx.env.BOTTLE_FAKE_WORLD ?? join(ctx.home, 'fake-world.json');
  const fail: FakeFailure[] = (ctx.env.BOTTLE_FAKE_FAIL ?? '')
    .split(',')
    .filter(Boolean)
    .map((spec) => {
      const [op, name] = spec.split(':');
      return name ? { op: op!, name } : { op: op! };
    });
  const runtimes = (ctx.env.BOTTLE_FAKE_RUNTIMES ?? 'runc').split(',');
  const counts = `${world}.counts`;
  return {
    kind: 'fake',
    runtime: new FakeRuntime(world, { runtimes, fail }),
    images: new FakeImages(counts, fail.some((f) => f.op === 'ensureImages')),
    capabilities: new FakeCapabilities(counts, (ctx.env.BOTTLE_FAKE_APPLY_FAIL ?? '').split(',').filter(Boolean)),
    imageTags: async () => ({ agent: 'bot-bottle/agent:fake', sidecar: 'bot-bottle/sidecar:fake' }),
  };
}
