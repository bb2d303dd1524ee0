import { promises as dnsPromises } from 'node:dns';
import net from 'node:net';
import {
  type AddressBlock,
  type AddressRefusal,
  checkAddress,
  parseBlockList,
  privateNetworkProblem,
  refusalText,
} from '../../config/address-policy.js';

/**
 * The address policy as the sidecars that dial upstreams apply it (the egress proxy, the
 * cred-proxy, the git gate): read once from the environment the engine gives each of them,
 * applied to every address they dial, after their own resolution, and never followed by a
 * second lookup (the caller dials exactly the addresses vetted here, so a rebinding resolver
 * has no window). The classes and the verdict are config/address-policy.ts, shared with the
 * host's checks of a manifest, a plan and an approval.
 *
 * env:
 *   BOTTLE_ADDRESS_DENY     comma-separated addresses or blocks never dialled: the bottle
 *                           networks' gateways and every address of the Docker host
 *   BOTTLE_PRIVATE_NETWORKS comma-separated blocks of the manifest's private_networks
 *   BOTTLE_EGRESS_DENY      (egress only, older name) more of BOTTLE_ADDRESS_DENY
 *   BOTTLE_TEST_DIAL_LOOPBACK=1  a test hook for the unit tests that run a sidecar's program on
 *                           the host against upstreams on 127.0.0.1: that one address may be
 *                           dialled. The engine never sets it (a unit test of the specs holds
 *                           that), and the sidecar says so on stderr when it is set.
 */

export interface AddressPolicy {
  deny: readonly AddressBlock[];
  allow: readonly AddressBlock[];
  /** Why `address` must not be dialled, or undefined when it may. */
  check(address: string): AddressRefusal | undefined;
}

export function createAddressPolicy(deny: readonly AddressBlock[] = [], allow: readonly AddressBlock[] = []): AddressPolicy {
  return {
    deny,
    allow,
    check: (address) => {
      const v = checkAddress(address, { deny, allow });
      return v.ok ? undefined : v;
    },
  };
}

/** The policy from the sidecar's environment, or the first problem with it (the sidecar then refuses to start). */
export function addressPolicyFromEnv(env: Record<string, string | undefined>, denyNames: readonly string[] = ['BOTTLE_ADDRESS_DENY']): { ok: true; policy: AddressPolicy } | { ok: false; message: string } {
  const deny: AddressBlock[] = [];
  for (const name of denyNames) {
    const parsed = parseBlockList(env[name] ?? '');
    if (parsed.errors.length > 0) return { ok: false, message: `${name}: ${parsed.errors.map((e) => `"${e.entry}": ${e.message}`).join('; ')}` };
    deny.push(...parsed.blocks);
  }
  const allowText = env.BOTTLE_PRIVATE_NETWORKS ?? '';
  const problems = allowText
    .split(',')
    .filter((e) => e.trim() !== '')
    .flatMap((e) => {
      const p = privateNetworkProblem(e.trim());
      return p === undefined ? [] : [`"${e.trim()}": ${p}`];
    });
  if (problems.length > 0) return { ok: false, message: `BOTTLE_PRIVATE_NETWORKS: ${problems.join('; ')}` };
  const policy = createAddressPolicy(deny, parseBlockList(allowText).blocks);
  if (env.BOTTLE_TEST_DIAL_LOOPBACK === '1') {
    process.stderr.write('address policy: TEST HOOK BOTTLE_TEST_DIAL_LOOPBACK is set: 127.0.0.1 may be dialled\n');
    return { ok: true, policy: { ...policy, check: (a) => (a === '127.0.0.1' ? undefined : policy.check(a)) } };
  }
  return { ok: true, policy };
}

/** dns.lookup(all), which reads /etc/hosts as the container's resolver does. */
export async function systemResolve(host: string): Promise<string[]> {
  const found = await dnsPromises.lookup(host, { all: true, verbatim: true });
  return found.map((a) => a.address);
}

export type HostVet =
  | { ok: true; addresses: string[] }
  /** `refusal` set: the address policy refused (403); unset: the name could not be resolved (502). */
  | { ok: false; reason: string; refusal?: AddressRefusal };

/**
 * Resolves `host` once (an IP literal is its own answer) and refuses it when any of its
 * addresses is refused: a name with one bad address among good ones would reach the bad one
 * whenever the good ones fail. The caller connects only to the addresses returned.
 * `who` names the sidecar in the refusal ("the cred-proxy"); `bottle` goes into the hint.
 */
export async function vetHost(host: string, policy: AddressPolicy, resolve: (host: string) => Promise<string[]>, who: string, bottle?: string): Promise<HostVet> {
  const bare = host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
  let addresses: string[];
  if (net.isIP(bare)) {
    addresses = [bare];
  } else {
    try {
      addresses = await resolve(bare);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
      return { ok: false, reason: `could not resolve ${bare} (${code})` };
    }
    if (addresses.length === 0) return { ok: false, reason: `${bare} has no address` };
  }
  for (const address of addresses) {
    const refusal = policy.check(address);
    if (refusal !== undefined) {
      return { ok: false, refusal, reason: refusalText(refusal, who, bottle, bare) };
    }
  }
  return { ok: true, addresses };
}

/**
 * A `lookup` for net/tls.connect (and so for an http(s) Agent) that answers with addresses
 * already vetted and never asks a resolver: the name stays the TLS name (SNI and the
 * certificate check), the socket goes to a vetted address.
 */
export function pinnedLookup(addresses: readonly string[]): net.LookupFunction {
  const entries = addresses.map((address) => ({ address, family: net.isIPv6(address) ? 6 : 4 }));
  return ((_host: string, options: { all?: boolean; family?: number | string }, callback: (...args: unknown[]) => void) => {
    const wanted = options.family === 4 || options.family === 'IPv4' ? 4 : options.family === 6 || options.family === 'IPv6' ? 6 : 0;
    const list = wanted === 0 ? entries : entries.filter((e) => e.family === wanted);
    if (list.length === 0) {
      process.nextTick(callback, Object.assign(new Error('no vetted address of that family'), { code: 'ENOTFOUND' }));
      return;
    }
    if (options.all) process.nextTick(callback, null, list);
    else process.nextTick(callback, null, list[0]!.address, list[0]!.family);
  }) as unknown as net.LookupFunction;
}
