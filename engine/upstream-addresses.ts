import { promises as dns } from 'node:dns';
import { type AddressRefusal, checkAddress, literalHost, parseBlockList, privateBlocks, refusalText } from '../config/address-policy.js';
import { BottleError } from '../config/errors.js';
import type { LoadedManifest } from '../config/load.js';

/**
 * The host's judgement of an upstream (a route's or a git remote's) under the address policy
 * its sidecar will apply (config/address-policy.ts), so that a private upstream the manifest
 * did not opt in fails at plan time and at approval time with a clear error rather than at
 * every request. A literal address is judged as it is (validateManifest does that too); a
 * name is resolved once on the host. A name the host cannot resolve is left to the sidecar,
 * which resolves it itself and refuses it there (the host's and the bottle's DNS can differ,
 * e.g. a name only Docker's DNS answers).
 */

export type HostResolve = (host: string) => Promise<string[]>;

const LOOKUP_TIMEOUT_MS = 2_000;

/**
 * Special-use names (RFC 6761: .test, .example, .invalid, .localhost) have no answer in the
 * public DNS, so asking the host's resolver about them only sends a query out for nothing:
 * they are left to the sidecar, which resolves them through Docker's DNS and judges them there.
 */
const SPECIAL_USE = /(^|\.)(test|example|invalid|localhost)\.?$/i;

/** dns.lookup(all) with a deadline; any failure is "could not judge", never an error. */
export const hostResolve: HostResolve = async (host) => {
  if (SPECIAL_USE.test(host)) return [];
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<string[]>((resolve) => {
    timer = setTimeout(() => resolve([]), LOOKUP_TIMEOUT_MS);
    timer.unref();
  });
  try {
    const found = dns.lookup(host, { all: true, verbatim: true }).then(
      (list) => list.map((a) => a.address),
      () => [] as string[],
    );
    return await Promise.race([found, deadline]);
  } finally {
    if (timer) clearTimeout(timer);
  }
};

function hostOf(url: string): string | undefined {
  try {
    const host = new URL(url).hostname;
    return host.startsWith('[') ? host.slice(1, -1) : host;
  } catch {
    return undefined;
  }
}

/** The refusal text for `upstream`, or undefined when it may be dialled (or cannot be judged here). */
export async function upstreamRefusal(
  upstream: string,
  opts: { privateNetworks: readonly string[]; deny?: readonly string[]; bottle: string; who: string; resolve?: HostResolve },
): Promise<{ text: string; refusal: AddressRefusal } | undefined> {
  const config = { allow: privateBlocks(opts.privateNetworks), deny: parseBlockList((opts.deny ?? []).join(',')).blocks };
  const literal = literalHost(upstream);
  const host = literal ?? hostOf(upstream);
  if (host === undefined) return undefined;
  const addresses = literal !== undefined ? [literal] : await (opts.resolve ?? hostResolve)(host);
  for (const address of addresses) {
    const v = checkAddress(address, config);
    if (!v.ok) return { text: refusalText(v, opts.who, opts.bottle, host), refusal: v };
  }
  return undefined;
}

/**
 * Plan time (`bottle plan`, `bottle run`): every route and git remote of the agent's bottle.
 * Throws MANIFEST_INVALID listing each refused upstream with its path.
 */
export async function checkManifestUpstreams(loaded: LoadedManifest, agent: string, resolve?: HostResolve): Promise<void> {
  const bottleName = loaded.manifest.agents[agent]?.bottle;
  const bottle = bottleName === undefined ? undefined : loaded.manifest.bottles[bottleName];
  if (bottle === undefined || bottleName === undefined) return;
  const privateNetworks = bottle.private_networks ?? [];
  const targets = [
    ...bottle.cred_proxy.routes.map((r, i) => ({ path: `bottles.${bottleName}.cred_proxy.routes[${i}].upstream`, upstream: r.upstream, who: 'the cred-proxy' })),
    ...bottle.git.map((g, i) => ({ path: `bottles.${bottleName}.git[${i}].upstream`, upstream: g.upstream, who: 'the git gate' })),
  ];
  const found = await Promise.all(
    targets.map(async (t) => {
      const r = await upstreamRefusal(t.upstream, { privateNetworks, bottle: bottleName, who: t.who, ...(resolve ? { resolve } : {}) });
      return r === undefined ? undefined : `${t.path}: ${r.text}`;
    }),
  );
  const problems = found.filter((p): p is string => p !== undefined);
  if (problems.length > 0) {
    throw new BottleError(
      'MANIFEST_INVALID',
      `${loaded.file}: ${problems.length === 1 ? 'an upstream is' : 'upstreams are'} refused by the address policy:\n  ${problems.join('\n  ')}`,
      `add the upstream's block to bottles.${bottleName}.private_networks (e.g. "10.20.0.0/16") if the bottle may reach it, then \`bottle validate\``,
    );
  }
}

/** Approval time: a route proposal's upstream, against the run's private_networks and the addresses its sidecars never dial. */
export async function checkProposedUpstream(
  upstream: string,
  opts: { privateNetworks: readonly string[]; deny: readonly string[]; bottle: string; identity: string; proposal: string; resolve?: HostResolve },
): Promise<void> {
  const r = await upstreamRefusal(upstream, { ...opts, who: 'the cred-proxy' });
  if (r === undefined) return;
  const hint =
    r.refusal.kind === 'private'
      ? `deny it (bottle deny ${opts.identity} ${opts.proposal}), or add the block to bottles.${opts.bottle}.private_networks and start the bottle again`
      : `deny it: bottle deny ${opts.identity} ${opts.proposal} --reason "upstream address refused"`;
  throw new BottleError('ADDRESS_REFUSED', `proposal '${opts.proposal}' cannot be approved: its upstream ${upstream}: ${r.text}`, hint);
}
