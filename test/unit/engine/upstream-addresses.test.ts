import { describe, expect, it } from 'vitest';
import { BottleError } from '../../../config/errors.js';
import type { LoadedManifest } from '../../../config/load.js';
import { validateManifest } from '../../../config/manifest.js';
import { checkManifestUpstreams, checkProposedUpstream, hostResolve } from '../../../engine/upstream-addresses.js';

/** Plan time and approval time: the host judges an upstream's name as its sidecar will. */

const resolve = async (h: string) => ({ 'api.internal': ['10.20.0.5'], 'git.internal': ['fd00::7'], 'public.example': ['8.8.8.8'] } as Record<string, string[]>)[h] ?? [];

function loaded(bottle: Record<string, unknown>): LoadedManifest {
  const r = validateManifest({ version: 1, bottles: { web: bottle }, agents: { coder: { bottle: 'web' } } });
  if (!r.ok) throw new Error(JSON.stringify(r.issues));
  return { manifest: r.manifest, file: '/p/bottle.yaml', dir: '/p' } as LoadedManifest;
}

const route = (upstream: string) => ({ path: '/a', upstream, token: { env: 'T' }, inject: { header: 'x-api-key', format: '{token}' } });

describe('plan time', () => {
  it('a route or git remote whose name resolves to a private address not opted in fails with MANIFEST_INVALID naming each path', async () => {
    const m = loaded({ cred_proxy: { routes: [route('http://api.internal:8080')] }, git: [{ name: 'o', upstream: 'https://git.internal/r.git', push: [] }] });
    const err = await checkManifestUpstreams(m, 'coder', resolve).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BottleError);
    expect((err as BottleError).code).toBe('MANIFEST_INVALID');
    expect((err as BottleError).message).toContain('bottles.web.cred_proxy.routes[0].upstream: api.internal resolves to 10.20.0.5, a private address (RFC 1918); allow it with bottles.web.private_networks');
    expect((err as BottleError).message).toContain('bottles.web.git[0].upstream: git.internal resolves to fd00::7, a unique local address');
  });

  it('opted in, a global name, or a name the host cannot resolve passes', async () => {
    await checkManifestUpstreams(loaded({ private_networks: ['10.20.0.0/16'], cred_proxy: { routes: [route('http://api.internal:8080')] } }), 'coder', resolve);
    await checkManifestUpstreams(loaded({ cred_proxy: { routes: [route('https://public.example')] } }), 'coder', resolve);
    await checkManifestUpstreams(loaded({ cred_proxy: { routes: [route('http://only-docker-knows.test')] } }), 'coder', resolve);
  });
});

describe('approval time', () => {
  const opts = { privateNetworks: [] as string[], deny: ['172.18.0.1'], bottle: 'web', identity: 'coder', proposal: 'p123456', resolve };
  it('a route proposal to a private upstream not opted in is refused with ADDRESS_REFUSED and a hint', async () => {
    const err = await checkProposedUpstream('http://api.internal:8080', opts).catch((e: unknown) => e);
    expect((err as BottleError).code).toBe('ADDRESS_REFUSED');
    expect((err as BottleError).message).toContain("proposal 'p123456' cannot be approved");
    expect((err as BottleError).message).toContain('allow it with bottles.web.private_networks');
    expect((err as BottleError).hint).toContain('bottle deny coder p123456');
  });

  it('the Docker host is refused even inside private_networks; an opted-in address passes', async () => {
    const err = await checkProposedUpstream('http://172.18.0.1:80', { ...opts, privateNetworks: ['172.18.0.0/16'] }).catch((e: unknown) => e);
    expect((err as BottleError).message).toContain('an address of the Docker host');
    await checkProposedUpstream('http://172.18.0.5:80', { ...opts, privateNetworks: ['172.18.0.0/16'] });
  });
});

describe('the host resolver', () => {
  it('leaves special-use names (RFC 6761) to the sidecar without asking the host DNS', async () => {
    for (const name of ['api.model.test', 'git.death.test.', 'x.example', 'y.invalid', 'localhost', 'svc.LOCALHOST']) expect(await hostResolve(name)).toEqual([]);
  });
});
