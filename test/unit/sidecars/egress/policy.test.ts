import { describe, expect, it } from 'vitest';
import {
  allowlistLines,
  canonicalIPv6,
  createPolicy,
  formatTarget,
  parseAuthority,
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

describe('parseIp', () => {
  it('parseIp reads IPv4 and IPv6 into bytes', () => {
    expect(parseIp('192.0.2.1')).toEqual([192, 0, 2, 1]);
    expect(parseIp('::ffff:1.2.3.4')).toEqual([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 255, 255, 1, 2, 3, 4]);
    expect(parseIp('2001:db8::1')).toEqual([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    for (const bad of ['1:2:3:4:5:6:7:8:9', '1::2::3', ':1::', '1:::2', '12345::', '::1.2.3', '1.2.3.4::', '::g', '01.2.3.4']) {
      expect(parseIp(bad), bad).toBeUndefined();
    }
  });
});
