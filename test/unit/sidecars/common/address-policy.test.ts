import { describe, expect, it } from 'vitest';
import { checkAddress, literalHost, parseAddressBlock, parseBlockList, privateNetworkProblem, refusalText } from '../../../../config/address-policy.js';
import { addressPolicyFromEnv, createAddressPolicy, pinnedLookup, vetHost } from '../../../../sidecars/common/address-policy.js';

/** The shared address policy of the egress proxy, the cred-proxy and the git gate (and of the host's checks). */

const blocks = (text: string) => parseBlockList(text).blocks;
const classOf = (ip: string, deny = '', allow = '') => {
  const v = checkAddress(ip, { deny: blocks(deny), allow: blocks(allow) });
  return v.ok ? undefined : `${v.kind}: ${v.addressClass}`;
};

describe('every class, refused without an opt-in', () => {
  it.each([
    ['0.0.0.0', 'always: unspecified'],
    ['0.255.255.255', 'always: unspecified'],
    ['::', 'always: unspecified'],
    ['::2', 'always: unspecified'],
    ['127.0.0.1', 'always: loopback'],
    ['127.255.255.255', 'always: loopback'],
    ['::1', 'always: loopback'],
    ['::ffff:127.0.0.1', 'always: loopback'],
    ['::ffff:7f00:1', 'always: loopback'],
    ['::ffff:0:127.0.0.1', 'always: loopback'],
    ['::127.0.0.1', 'always: loopback'],
    ['64:ff9b::127.0.0.1', 'always: loopback'],
    ['64:ff9b:1::7f00:1', 'always: loopback'],
    ['2002:7f00:1::', 'always: loopback'],
    ['169.254.169.254', 'always: link-local (cloud metadata)'],
    ['::ffff:a9fe:a9fe', 'always: link-local (cloud metadata)'],
    ['169.254.0.1', 'always: link-local'],
    ['fe80::1', 'always: link-local'],
    ['fe80::1%eth0', 'always: link-local'],
    ['febf:ffff::1', 'always: link-local'],
    ['100.100.100.200', 'always: cloud metadata'],
    ['fd00:ec2::254', 'always: cloud metadata'],
    ['224.0.0.1', 'always: multicast'],
    ['239.255.255.255', 'always: multicast'],
    ['ff02::1', 'always: multicast'],
    ['255.255.255.255', 'always: broadcast'],
    ['::ffff:255.255.255.255', 'always: broadcast'],
    ['240.0.0.1', 'always: reserved'],
    ['100::1', 'always: reserved'],
    ['4000::1', 'always: reserved'],
    ['fe7f::1', 'always: reserved'],
    ['not an ip', 'always: not an IP address'],
    ['127.1', 'always: not an IP address'],
    ['', 'always: not an IP address'],
    ['10.0.0.1', 'private: private (RFC 1918)'],
    ['10.255.255.255', 'private: private (RFC 1918)'],
    ['172.16.0.1', 'private: private (RFC 1918)'],
    ['172.31.255.255', 'private: private (RFC 1918)'],
    ['172.17.0.1', 'private: private (RFC 1918)'],
    ['192.168.1.1', 'private: private (RFC 1918)'],
    ['100.64.0.1', 'private: shared (RFC 6598)'],
    ['100.127.255.255', 'private: shared (RFC 6598)'],
    ['198.18.0.1', 'private: benchmarking (RFC 2544)'],
    ['198.19.255.255', 'private: benchmarking (RFC 2544)'],
    ['192.0.0.8', 'private: protocol assignments (RFC 6890)'],
    ['192.0.2.1', 'private: documentation (RFC 5737)'],
    ['198.51.100.7', 'private: documentation (RFC 5737)'],
    ['203.0.113.9', 'private: documentation (RFC 5737)'],
    ['fc00::1', 'private: unique local (fc00::/7)'],
    ['fd12:3456::1', 'private: unique local (fc00::/7)'],
    ['fec0::1', 'private: site-local (fec0::/10)'],
    ['2001:db8::1', 'private: documentation (RFC 3849)'],
    ['::ffff:10.1.2.3', 'private: private (RFC 1918)'],
    ['::ffff:192.168.0.1', 'private: private (RFC 1918)'],
    ['64:ff9b::10.0.0.1', 'private: private (RFC 1918)'],
    ['2002:0a00:0001::', 'private: private (RFC 1918)'],
    ['::ffff:100.64.0.1', 'private: shared (RFC 6598)'],
  ])('%s is %s', (ip, want) => {
    expect(classOf(ip)).toBe(want);
  });

  it.each(['1.1.1.1', '8.8.8.8', '9.255.255.255', '11.0.0.0', '172.15.255.255', '172.32.0.0', '192.167.255.255', '192.169.0.0', '100.63.255.255', '100.128.0.0', '198.17.255.255', '198.20.0.0', '2606:4700::1111', '2003::1', '::ffff:8.8.8.8', '2002:0808:0808::', '64:ff9b::8.8.8.8'])(
    '%s, global, is dialled',
    (ip) => {
      expect(classOf(ip)).toBeUndefined();
    },
  );
});

describe('the opt-in', () => {
  it('a private address inside an opted-in block is dialled, outside it still refused', () => {
    expect(classOf('10.20.0.5', '', '10.20.0.0/16')).toBeUndefined();
    expect(classOf('10.21.0.5', '', '10.20.0.0/16')).toBe('private: private (RFC 1918)');
    expect(classOf('fd12::5', '', 'fd12::/16')).toBeUndefined();
    expect(classOf('fd13::5', '', 'fd12::/16')).toBe('private: unique local (fc00::/7)');
  });

  it('an IPv6 form of a private IPv4 address is opted in as that IPv4 address, and only so', () => {
    expect(classOf('::ffff:10.20.0.5', '', '10.20.0.0/16')).toBeUndefined();
    expect(classOf('64:ff9b::10.20.0.5', '', '10.20.0.0/16')).toBeUndefined();
    expect(classOf('::ffff:10.20.0.5', '', '::/0')).toBe('private: private (RFC 1918)');
  });

  it('nothing opts in what is always refused, not even a block of everything', () => {
    for (const ip of ['127.0.0.1', '169.254.169.254', '100.100.100.200', '224.0.0.1', '::1', 'fe80::1', 'fd00:ec2::254', '::ffff:127.0.0.1']) {
      expect(classOf(ip, '', '0.0.0.0/0,::/0'), ip).toMatch(/^always: /);
    }
  });
});

describe('the Docker host and the bottle networks’ gateways come first', () => {
  it('an address of the host is refused even inside an opted-in block, in any IPv6 spelling', () => {
    expect(classOf('172.18.0.1', '172.18.0.1', '172.18.0.0/16')).toBe('host: docker host');
    expect(classOf('::ffff:172.18.0.1', '172.18.0.1', '172.18.0.0/16')).toBe('host: docker host');
    expect(classOf('172.18.0.2', '172.18.0.1', '172.18.0.0/16')).toBeUndefined();
    expect(classOf('192.168.1.20', '192.168.1.20,172.17.0.1', '192.168.0.0/16')).toBe('host: docker host');
    // A host address that is global (a public interface) is refused too.
    expect(classOf('203.0.114.7', '203.0.114.7')).toBe('host: docker host');
  });

  it('a deny block covers exactly its prefix, whatever host bits it is written with', () => {
    expect(classOf('10.1.2.127', '10.1.2.128/25', '10.0.0.0/8')).toBeUndefined();
    expect(classOf('10.1.2.128', '10.1.2.128/25', '10.0.0.0/8')).toBe('host: docker host');
    expect(classOf('172.19.0.1', '172.19.5.5/16', '172.16.0.0/12')).toBe('host: docker host');
  });

  it('a range class is named before a deny block', () => {
    expect(classOf('127.0.0.1', '127.0.0.1')).toBe('always: loopback');
  });
});

describe('messages name the class and what would allow it', () => {
  it('a private address names the manifest key; the others say nothing allows them', () => {
    const priv = checkAddress('10.20.0.5');
    if (priv.ok) throw new Error('expected a refusal');
    expect(refusalText(priv, 'the cred-proxy', 'web')).toBe('10.20.0.5 is a private address (RFC 1918); allow it with bottles.web.private_networks');
    expect(refusalText(priv, 'the cred-proxy', 'web', 'api.internal')).toBe('api.internal resolves to 10.20.0.5, a private address (RFC 1918); allow it with bottles.web.private_networks');
    const host = checkAddress('172.18.0.1', { deny: blocks('172.18.0.1'), allow: blocks('172.18.0.0/16') });
    if (host.ok) throw new Error('expected a refusal');
    expect(refusalText(host, 'the git gate')).toContain('which the git gate never connects to, not even inside private_networks');
    const loop = checkAddress('::ffff:127.0.0.1');
    if (loop.ok) throw new Error('expected a refusal');
    expect(refusalText(loop, 'the egress proxy')).toBe('::ffff:127.0.0.1 is a loopback address (as 127.0.0.1), which the egress proxy never connects to');
  });
});

describe('private_networks entries', () => {
  it.each([
    ['10.20.0.0/16', undefined],
    ['192.168.5.7', undefined],
    ['fd12:3456::/32', undefined],
    ['0.0.0.0/0', undefined],
    ['10.20.0.5/16', 'host bits set; the block is 10.20.0.0/16'],
    ['10.20.0.0/33', 'not a prefix length'],
    ['intranet', 'not an IP address'],
    ['127.0.0.0/8', 'never dialled'],
    ['169.254.0.0/16', 'never dialled'],
    ['8.8.8.0/24', 'global addresses need no opt-in'],
    ['::ffff:10.0.0.0/104', 'opted in as the IPv4 block'],
  ])('%s', (entry, problem) => {
    const got = privateNetworkProblem(entry);
    if (problem === undefined) expect(got).toBeUndefined();
    else expect(got).toContain(problem);
  });

  it('parseAddressBlock strict and lenient', () => {
    expect(parseAddressBlock('10.20.0.5/16').ok).toBe(true);
    expect(parseAddressBlock('10.20.0.5/16', true).ok).toBe(false);
  });

  it('literalHost reads a URL’s literal address, and nothing for a name', () => {
    expect(literalHost('http://10.0.0.1:8080/x')).toBe('10.0.0.1');
    expect(literalHost('https://[fd00::1]/')).toBe('fd00::1');
    expect(literalHost('ssh://git@192.168.1.2/repo.git')).toBe('192.168.1.2');
    expect(literalHost('http://0x7f.1/')).toBe('127.0.0.1');
    expect(literalHost('https://api.example.com/')).toBeUndefined();
  });
});

describe('the sidecars’ side', () => {
  it('reads the policy from the environment, refusing a bad one', () => {
    const ok = addressPolicyFromEnv({ BOTTLE_ADDRESS_DENY: '172.18.0.1,10.0.0.1', BOTTLE_PRIVATE_NETWORKS: '172.18.0.0/16' });
    if (!ok.ok) throw new Error(ok.message);
    expect(ok.policy.check('172.18.0.2')).toBeUndefined();
    expect(ok.policy.check('172.18.0.1')?.kind).toBe('host');
    expect(addressPolicyFromEnv({ BOTTLE_ADDRESS_DENY: 'gateway' })).toMatchObject({ ok: false, message: expect.stringContaining('BOTTLE_ADDRESS_DENY') });
    expect(addressPolicyFromEnv({ BOTTLE_PRIVATE_NETWORKS: '127.0.0.0/8' })).toMatchObject({ ok: false, message: expect.stringContaining('BOTTLE_PRIVATE_NETWORKS') });
  });

  it('vetHost resolves once, refuses a name with any bad address, and passes literals without resolving', async () => {
    const policy = createAddressPolicy(blocks('172.18.0.1'), blocks('10.20.0.0/16'));
    let lookups = 0;
    const resolve = async (h: string) => {
      lookups += 1;
      return ({ 'good.test': ['10.20.0.5'], 'mixed.test': ['10.20.0.5', '10.30.0.5'], 'gw.test': ['172.18.0.1'] } as Record<string, string[]>)[h] ?? [];
    };
    expect(await vetHost('good.test', policy, resolve, 'the cred-proxy', 'web')).toEqual({ ok: true, addresses: ['10.20.0.5'] });
    const mixed = await vetHost('mixed.test', policy, resolve, 'the cred-proxy', 'web');
    expect(mixed).toMatchObject({ ok: false, refusal: { addressClass: 'private (RFC 1918)' } });
    expect(!mixed.ok && mixed.reason).toBe('mixed.test resolves to 10.30.0.5, a private address (RFC 1918); allow it with bottles.web.private_networks');
    expect(await vetHost('gw.test', policy, resolve, 'the cred-proxy')).toMatchObject({ ok: false, refusal: { kind: 'host' } });
    expect(await vetHost('none.test', policy, resolve, 'the cred-proxy')).toMatchObject({ ok: false, reason: 'none.test has no address' });
    const before = lookups;
    expect(await vetHost('[fd00::1]', policy, resolve, 'x')).toMatchObject({ ok: false, refusal: { addressClass: 'unique local (fc00::/7)' } });
    expect(await vetHost('10.20.0.9', policy, resolve, 'x')).toEqual({ ok: true, addresses: ['10.20.0.9'] });
    expect(lookups).toBe(before);
  });

  it('pinnedLookup answers with the vetted addresses only', async () => {
    const lookup = pinnedLookup(['10.20.0.5', 'fd00::5']) as unknown as (h: string, o: object, cb: (...a: unknown[]) => void) => void;
    const one = await new Promise((r) => lookup('any.test', {}, (...a) => r(a)));
    expect(one).toEqual([null, '10.20.0.5', 4]);
    const all = await new Promise((r) => lookup('any.test', { all: true }, (...a) => r(a)));
    expect(all).toEqual([null, [{ address: '10.20.0.5', family: 4 }, { address: 'fd00::5', family: 6 }]]);
    const v6 = await new Promise((r) => lookup('any.test', { family: 6 }, (...a) => r(a)));
    expect(v6).toEqual([null, 'fd00::5', 6]);
  });
});
