import { describe, expect, it } from 'vitest';
import {
  allowlistLines,
  canonicalIPv6,
  createPolicy,
  forbiddenAddress,
  formatTarget,
  parseAuthority,
  parseDenyList,
  parseEntry,
  parseIp,
  suggestedEntry,
} from '../../../../sidecars/egress/policy.js';

describe('parseEntry', () => {
  it.each([
    ['example.com', 'exact', 'example.com', [80, 443]],
    ['Example.COM', 'exact', 'example.com', [80, 443]],
    ['example.com.', 'exact', 'example.com', [80, 443]],
    ['  example.com  ', 'exact', 'example.com', [80, 443]],
    ['example.com:8443', 'exact', 'example.com', [8443]],
    ['localhost', 'exact', 'localhost', [80, 443]],
    ['*.example.com', 'wildcard', 'example.com', [80, 443]],
    ['*.example.com:22', 'wildcard', 'example.com', [22]],
    ['my_bucket.s3.amazonaws.com', 'exact', 'my_bucket.s3.amazonaws.com', [80, 443]],
    ['192.0.2.1', 'exact', '192.0.2.1', [80, 443]],
    ['192.0.2.1:5432', 'exact', '192.0.2.1', [5432]],
    ['[2001:DB8::0001]', 'exact', '2001:db8::1', [80, 443]],
    ['[2001:db8::1]:8080', 'exact', '2001:db8::1', [8080]],
  ])('reads %j', (raw, kind, host, ports) => {
    const r = parseEntry(raw);
    expect(r).toEqual({ ok: true, value: { text: raw.trim(), kind, host, ports } });
  });

  it.each([
    ['', /empty/],
    ['exa mple.com', /whitespace/],
    ['https://example.com', /not a URL/],
    ['example.com/path', /not a URL/],
    ['*', /wildcard/],
    ['*.com', /two labels/],
    ['a.*.example.com', /whole first label/],
    ['*example.com', /whole first label/],
    ['**.example.com', /whole first label/],
    ['*.192.0.2.1', /IP address|dotted quad/],
    ['example.com:0', /port/],
    ['example.com:65536', /port/],
    ['example.com:080', /port/],
    ['example.com:', /port/],
    ['example.com:http', /port/],
    ['2001:db8::1', /brackets/],
    ['[2001:db8::1', /bracket/],
    ['[example.com]', /IPv6/],
    ['127.1', /dotted quad/],
    ['0x7f.0.0.1', /dotted quad/],
    ['2130706433', /dotted quad/],
    ['0177.0.0.1', /dotted quad/],
    ['-bad.example.com', /label/],
    ['a..example.com', /empty label/],
    ['ex\u212Aample.com', /ASCII/],
  ])('refuses %j', (raw, message) => {
    const r = parseEntry(raw);
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.message).toMatch(message);
  });
});

describe('allowlistLines', () => {
  it('drops blank lines and comments, keeps entries in order', () => {
    expect(allowlistLines('# header\n\nexample.com\r\n  *.foo.test  \n#x\nbar.test:81\n')).toEqual(['example.com', '*.foo.test', 'bar.test:81']);
  });
});

describe('createPolicy.decide', () => {
  const policy = createPolicy(['example.com', 'api.test:8443', '*.wild.test', '*.ports.test:22', '192.0.2.1', '[2001:db8::1]:443', 'not valid']);

  it('reports bad entries and lets them allow nothing', () => {
    expect(policy.errors).toEqual([{ entry: 'not valid', message: expect.stringMatching(/whitespace/) }]);
    expect(policy.rules.map((r) => r.text)).not.toContain('not valid');
  });

  it.each([
    ['example.com', 80, 'example.com'],
    ['example.com', 443, 'example.com'],
    ['EXAMPLE.com.', 443, 'example.com'],
    ['api.test', 8443, 'api.test:8443'],
    ['a.wild.test', 443, '*.wild.test'],
    ['a.b.c.wild.test', 80, '*.wild.test'],
    ['x.ports.test', 22, '*.ports.test:22'],
    ['192.0.2.1', 80, '192.0.2.1'],
    ['2001:db8::1', 443, '[2001:db8::1]:443'],
  ])('allows %s:%d by %j', (host, port, rule) => {
    const d = policy.decide({ host, port });
    expect(d).toEqual({ allowed: true, rule, reason: expect.stringContaining(rule) });
  });

  it.each([
    ['example.com', 8080, /port 8080 is not allowed for example.com \(allowed: 80, 443\)/],
    ['api.test', 443, /port 443 is not allowed for api.test \(allowed: 8443\)/],
    ['wild.test', 443, /wild.test is not in the allowlist/],
    ['xwild.test', 443, /not in the allowlist/],
    ['ports.test', 22, /not in the allowlist/],
    ['x.ports.test', 443, /port 443/],
    ['sub.example.com', 443, /not in the allowlist/],
    ['example.com.evil.test', 443, /not in the allowlist/],
    ['evil.test', 443, /evil.test is not in the allowlist/],
    ['192.0.2.2', 80, /not in the allowlist/],
    ['not', 80, /not in the allowlist/],
  ])('denies %s:%d', (host, port, reason) => {
    const d = policy.decide({ host, port });
    expect(d.allowed).toBe(false);
    expect(d.rule).toBeUndefined();
    expect(d.reason).toMatch(reason);
  });

  it('an empty allowlist denies everything', () => {
    expect(createPolicy([]).decide({ host: 'example.com', port: 443 }).allowed).toBe(false);
  });

  it('a name is never allowed by an IP literal entry and the other way round', () => {
    const p = createPolicy(['192.0.2.1', 'example.com']);
    expect(p.decide({ host: 'example.com', port: 80 }).allowed).toBe(true);
    expect(p.decide({ host: '192.0.2.1', port: 80 }).allowed).toBe(true);
    expect(p.decide({ host: '198.51.100.1', port: 80 }).allowed).toBe(false);
  });
});

describe('parseAuthority', () => {
  it.each([
    ['example.com:443', undefined, { host: 'example.com', port: 443 }],
    ['Example.Com.:443', undefined, { host: 'example.com', port: 443 }],
    ['example.com', 80, { host: 'example.com', port: 80 }],
    ['192.0.2.1:8080', undefined, { host: '192.0.2.1', port: 8080 }],
    ['[::1]:443', undefined, { host: '::1', port: 443 }],
    ['[0:0:0:0:0:ffff:7f00:1]:443', undefined, { host: '::ffff:7f00:1', port: 443 }],
    ['[2001:db8::1]', 80, { host: '2001:db8::1', port: 80 }],
  ])('reads %j', (text, def, target) => {
    expect(parseAuthority(text, def)).toEqual({ ok: true, value: target });
  });

  it.each([
    '',
    'example.com',
    'example.com:',
    ':443',
    'example.com:0',
    'example.com:65536',
    'example.com:+443',
    'example.com:0443',
    'example.com:443:443',
    'a b:443',
    'user@example.com:443',
    'example.com:443/',
    'exa%6dple.com:443',
    '127.1:443',
    '0x7f000001:443',
    '[::1',
    '[::1]x',
    '[::1]:',
    '[fe80::1%eth0]:443',
    '[not-v6]:443',
    '::1:443',
    `${'a'.repeat(64)}.com:443`,
    `${'a.'.repeat(127)}com:443`,
  ])('refuses %j', (text) => {
    expect(parseAuthority(text).ok).toBe(false);
  });

  it('formats IPv6 targets in brackets', () => {
    expect(formatTarget({ host: '::1', port: 443 })).toBe('[::1]:443');
    expect(formatTarget({ host: 'example.com', port: 80 })).toBe('example.com:80');
    expect(suggestedEntry({ host: 'example.com', port: 443 })).toBe('example.com');
    expect(suggestedEntry({ host: 'example.com', port: 8443 })).toBe('example.com:8443');
    expect(suggestedEntry({ host: '2001:db8::1', port: 22 })).toBe('[2001:db8::1]:22');
  });

  it('canonicalIPv6 lowercases and compresses', () => {
    expect(canonicalIPv6('2001:DB8:0:0:0:0:0:1')).toBe('2001:db8::1');
    expect(canonicalIPv6('::ffff:127.0.0.1')).toBe('::ffff:7f00:1');
    expect(canonicalIPv6('fe80::1%lo')).toBeUndefined();
  });
});

describe('forbiddenAddress', () => {
  it.each([
    ['127.0.0.1', 'loopback'],
    ['127.255.255.254', 'loopback'],
    ['::1', 'loopback'],
    ['0:0:0:0:0:0:0:1', 'loopback'],
    ['::ffff:127.0.0.1', 'loopback (as 127.0.0.1)'],
    ['::FFFF:7f00:1', 'loopback (as 127.0.0.1)'],
    ['0:0:0:0:0:ffff:127.0.0.1', 'loopback (as 127.0.0.1)'],
    ['::ffff:0:127.0.0.1', 'loopback (as 127.0.0.1)'],
    ['::127.0.0.1', 'loopback (as 127.0.0.1)'],
    ['64:ff9b::127.0.0.1', 'loopback (as 127.0.0.1)'],
    ['2002:7f00:1::', 'loopback (as 127.0.0.1)'],
    ['169.254.169.254', 'link-local (cloud metadata)'],
    ['::ffff:169.254.169.254', 'link-local (cloud metadata) (as 169.254.169.254)'],
    ['::ffff:a9fe:a9fe', 'link-local (cloud metadata) (as 169.254.169.254)'],
    ['169.254.0.1', 'link-local'],
    ['fe80::1', 'link-local'],
    ['fe80::1%eth0', 'link-local'],
    ['febf:ffff::1', 'link-local'],
    ['0.0.0.0', 'unspecified'],
    ['0.1.2.3', 'unspecified'],
    ['::', 'unspecified'],
    ['::ffff:0.0.0.0', 'unspecified (as 0.0.0.0)'],
    ['224.0.0.1', 'multicast'],
    ['239.255.255.250', 'multicast'],
    ['ff02::1', 'multicast'],
    ['ff05::1:3', 'multicast'],
    ['::ffff:224.0.0.251', 'multicast (as 224.0.0.251)'],
    ['255.255.255.255', 'broadcast'],
    ['240.0.0.1', 'reserved'],
    ['fd00:ec2::254', 'cloud metadata'],
    ['100.100.100.200', 'cloud metadata'],
    ['not an ip', 'not an IP address'],
    ['127.1', 'not an IP address'],
    ['', 'not an IP address'],
  ])('refuses %s (%s)', (ip, why) => {
    expect(forbiddenAddress(ip)).toBe(why);
  });

  it.each(['192.0.2.1', '198.51.100.7', '10.0.0.1', '172.17.0.2', '192.168.1.1', '100.64.0.1', '2001:db8::1', 'fc00::1', 'fec0::1', 'fe7f::1', '::ffff:192.0.2.1', '169.253.255.255', '126.255.255.255', '128.0.0.1'])(
    'lets %s through',
    (ip) => {
      expect(forbiddenAddress(ip)).toBeUndefined();
    },
  );

  it('refuses the extra deny list, addresses and blocks, in any IPv6 spelling', () => {
    const { blocks, errors } = parseDenyList(' 172.18.0.1, 172.19.0.0/16 ,fd12::1,, ');
    expect(errors).toEqual([]);
    expect(forbiddenAddress('172.18.0.1', blocks)).toBe('on the deny list (172.18.0.1)');
    expect(forbiddenAddress('::ffff:172.18.0.1', blocks)).toBe('on the deny list (172.18.0.1)');
    expect(forbiddenAddress('172.19.200.3', blocks)).toBe('on the deny list (172.19.0.0/16)');
    expect(forbiddenAddress('fd12:0::1', blocks)).toBe('on the deny list (fd12::1)');
    expect(forbiddenAddress('172.18.0.2', blocks)).toBeUndefined();
    expect(forbiddenAddress('172.20.0.1', blocks)).toBeUndefined();
    expect(forbiddenAddress('fd12::2', blocks)).toBeUndefined();
  });

  it('parseDenyList reports what it cannot read', () => {
    const { blocks, errors } = parseDenyList('172.18.0.1,gateway,10.0.0.0/33,::1/129,1.2.3.4/01');
    expect(blocks.map((b) => b.text)).toEqual(['172.18.0.1']);
    expect(errors.map((e) => e.entry)).toEqual(['gateway', '10.0.0.0/33', '::1/129', '1.2.3.4/01']);
  });

  it('parseIp reads IPv4 and IPv6 into bytes', () => {
    expect(parseIp('192.0.2.1')).toEqual([192, 0, 2, 1]);
    expect(parseIp('::ffff:1.2.3.4')).toEqual([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 255, 255, 1, 2, 3, 4]);
    expect(parseIp('2001:db8::1')).toEqual([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    for (const bad of ['1:2:3:4:5:6:7:8:9', '1::2::3', ':1::', '1:::2', '12345::', '::1.2.3', '1.2.3.4::', '::g', '01.2.3.4']) {
      expect(parseIp(bad), bad).toBeUndefined();
    }
  });
});

describe('forbiddenAddress, pinned at the edges of every range', () => {
  it.each([
    ['0.255.255.255', 'unspecified'],
    ['127.0.0.0', 'loopback'],
    ['127.255.255.255', 'loopback'],
    ['169.254.0.0', 'link-local'],
    ['169.254.255.255', 'link-local'],
    ['169.254.169.253', 'link-local'],
    ['169.254.169.255', 'link-local'],
    ['224.0.0.0', 'multicast'],
    ['239.255.255.255', 'multicast'],
    ['240.0.0.0', 'reserved'],
    ['255.255.255.254', 'reserved'],
    ['::1', 'loopback'],
    ['::0:1', 'loopback'],
    ['::2', 'unspecified (as 0.0.0.2)'],
    ['::0.0.1.0', 'unspecified (as 0.0.1.0)'],
    ['::ffff:0:0', 'unspecified (as 0.0.0.0)'],
    ['::ffff:0:7f00:1', 'loopback (as 127.0.0.1)'],
    ['::ffff:255.255.255.255', 'broadcast (as 255.255.255.255)'],
    ['::ffff:240.0.0.1', 'reserved (as 240.0.0.1)'],
    ['::ffff:100.100.100.200', 'cloud metadata (as 100.100.100.200)'],
    ['64:ff9b::a9fe:a9fe', 'link-local (cloud metadata) (as 169.254.169.254)'],
    ['2002:a9fe:a9fe::', 'link-local (cloud metadata) (as 169.254.169.254)'],
    ['2002:e000:1:ffff::1', 'multicast (as 224.0.0.1)'],
    ['fe80::', 'link-local'],
    ['febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff', 'link-local'],
    ['ff00::', 'multicast'],
    ['ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', 'multicast'],
    ['FD00:0EC2:0:0:0:0:0:0254', 'cloud metadata'],
  ])('refuses %s (%s)', (ip, why) => {
    expect(forbiddenAddress(ip)).toBe(why);
  });

  it.each([
    '1.0.0.0',
    '128.0.0.0',
    '169.255.0.0',
    '223.255.255.255',
    '100.100.100.199',
    '100.100.100.201',
    '::ffff:1.0.0.0',
    '::ffff:0:192.0.2.1',
    '::192.0.2.1',
    '64:ff9b::192.0.2.1',
    '2002:c000:201::',
    '2003::1',
    'fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff',
    'fec0::',
    'feff::1',
    'fd00:ec2::253',
    'fd00:ec2::1:254',
    'fd00:ec3::254',
  ])('lets %s through', (ip) => {
    expect(forbiddenAddress(ip)).toBeUndefined();
  });

  it('a deny block applies in its own family only, IPv4 ones also to the IPv4 an IPv6 address stands for', () => {
    const v6all = parseDenyList('::/0').blocks;
    expect(forbiddenAddress('2001:db8::1', v6all)).toBe('on the deny list (::/0)');
    expect(forbiddenAddress('::ffff:192.0.2.1', v6all)).toBe('on the deny list (::/0)');
    expect(forbiddenAddress('192.0.2.1', v6all)).toBeUndefined();
    const v4all = parseDenyList('0.0.0.0/0').blocks;
    expect(forbiddenAddress('192.0.2.1', v4all)).toBe('on the deny list (0.0.0.0/0)');
    expect(forbiddenAddress('::ffff:192.0.2.1', v4all)).toBe('on the deny list (0.0.0.0/0)');
    expect(forbiddenAddress('2002:c000:201::', v4all)).toBe('on the deny list (0.0.0.0/0)');
    expect(forbiddenAddress('2001:db8::1', v4all)).toBeUndefined();
  });

  it('a deny block covers exactly its prefix, whatever host bits it is written with', () => {
    const { blocks } = parseDenyList('10.1.2.128/25,172.19.5.5/16,fd12:3456::/31,fd34::1/128');
    expect(forbiddenAddress('10.1.2.127', blocks)).toBeUndefined();
    expect(forbiddenAddress('10.1.2.128', blocks)).toBe('on the deny list (10.1.2.128/25)');
    expect(forbiddenAddress('10.1.2.255', blocks)).toBe('on the deny list (10.1.2.128/25)');
    expect(forbiddenAddress('10.1.3.0', blocks)).toBeUndefined();
    expect(forbiddenAddress('172.19.0.1', blocks)).toBe('on the deny list (172.19.5.5/16)');
    expect(forbiddenAddress('172.18.255.255', blocks)).toBeUndefined();
    expect(forbiddenAddress('172.20.0.0', blocks)).toBeUndefined();
    expect(forbiddenAddress('fd12:3457:ffff::1', blocks)).toBe('on the deny list (fd12:3456::/31)');
    expect(forbiddenAddress('fd12:3458::', blocks)).toBeUndefined();
    expect(forbiddenAddress('fd34::1', blocks)).toBe('on the deny list (fd34::1/128)');
    expect(forbiddenAddress('fd34::2', blocks)).toBeUndefined();
  });

  it('names the first matching deny block, and a range class before any deny block', () => {
    const { blocks } = parseDenyList('172.19.0.0/16,172.19.0.1,127.0.0.1');
    expect(forbiddenAddress('172.19.0.1', blocks)).toBe('on the deny list (172.19.0.0/16)');
    expect(forbiddenAddress('127.0.0.1', blocks)).toBe('loopback');
  });
});
