import { isIP, isIPv6 } from 'node:net';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { checkAddress } from '../../../../config/address-policy.js';
import { createPolicy, formatTarget, parseAuthority, parseEntry, parseIp } from '../../../../sidecars/egress/policy.js';

/** The class the shared address policy (no opt-in, no deny list) gives an address, or undefined when it may be dialled. */
const forbiddenAddress = (ip: string): string | undefined => {
  const v = checkAddress(ip);
  return v.ok ? undefined : v.addressClass;
};

/** Domains the policy accepts as entries (fast-check's domain() is close to, not exactly, that set). */
const domain = fc.domain().filter((d) => parseEntry(d).ok && parseEntry(`*.${d}`).ok);
const port = fc.integer({ min: 1, max: 65535 });
const octet = fc.integer({ min: 0, max: 255 });
const hex16 = fc.integer({ min: 0, max: 0xffff }).map((n) => n.toString(16));

describe('policy properties', () => {
  it('a wildcard never matches its bare domain, and always matches a subdomain on 80/443', () => {
    fc.assert(
      fc.property(domain, fc.constantFrom(80, 443), fc.stringMatching(/^[a-z0-9]{1,10}$/), (d, p, label) => {
        const policy = createPolicy([`*.${d}`]);
        expect(policy.decide({ host: d, port: p }).allowed).toBe(false);
        expect(policy.decide({ host: `${d}.`, port: p }).allowed).toBe(false);
        expect(policy.decide({ host: `${label}.${d}`, port: p }).allowed).toBe(true);
      }),
    );
  });

  it('a host that no entry names is always denied', () => {
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.boolean(), domain, fc.option(port, { nil: undefined })), { maxLength: 8 }), domain, port, (entries, host, p) => {
        const text = entries.map(([wild, d, pt]) => `${wild ? '*.' : ''}${d}${pt === undefined ? '' : `:${pt}`}`);
        const named = entries.some(([wild, d]) => (wild ? host.endsWith(`.${d}`) : host === d));
        fc.pre(!named);
        const d = createPolicy(text).decide({ host, port: p });
        expect(d.allowed).toBe(false);
        expect(d.reason).toBe(`${host} is not in the allowlist`);
      }),
    );
  });

  it('a host entry allows exactly 80 and 443, a host:port entry exactly its port', () => {
    fc.assert(
      fc.property(domain, port, port, (d, listed, asked) => {
        expect(createPolicy([d]).decide({ host: d, port: asked }).allowed).toBe(asked === 80 || asked === 443);
        expect(createPolicy([`${d}:${listed}`]).decide({ host: d, port: asked }).allowed).toBe(asked === listed);
      }),
    );
  });

  it('parseAuthority never throws, and what it accepts formats back to itself', () => {
    fc.assert(
      fc.property(fc.oneof(fc.string(), fc.domain().map((d) => `${d}:443`), fc.ipV6().map((a) => `[${a}]:443`)), (text) => {
        const r = parseAuthority(text);
        if (r.ok) expect(parseAuthority(formatTarget(r.value))).toEqual(r);
      }),
    );
  });
});

describe('address properties', () => {
  it('parseIp agrees with node:net on what is an address', () => {
    fc.assert(
      fc.property(fc.oneof(fc.ipV4(), fc.ipV6(), fc.string({ unit: fc.constantFrom(...'0123456789abcdef:.'.split('')) })), (text) => {
        const ours = parseIp(text) !== undefined;
        // Node accepts IPv4 with leading zeros in no form either; both reject them.
        expect(ours).toBe(isIP(text) !== 0);
      }),
      { numRuns: 2000 },
    );
  });

  it('every loopback address is refused, in every IPv4 and IPv6 spelling', () => {
    fc.assert(
      fc.property(octet, octet, octet, (b, c, d) => {
        const v4 = `127.${b}.${c}.${d}`;
        const hex = `${((127 << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
        expect(forbiddenAddress(v4)).toBe('loopback');
        for (const form of [`::ffff:${v4}`, `::ffff:${hex}`, `0:0:0:0:0:ffff:${v4}`, `::${v4}`, `64:ff9b::${v4}`, `::ffff:0:${v4}`]) {
          expect(isIPv6(form), form).toBe(true);
          expect(forbiddenAddress(form), form).toMatch(/^loopback/);
        }
      }),
    );
  });

  it('every link-local and multicast IPv4 address is refused, mapped or not', () => {
    fc.assert(
      fc.property(octet, octet, fc.integer({ min: 224, max: 239 }), (c, d, m) => {
        expect(forbiddenAddress(`169.254.${c}.${d}`)).toMatch(/^link-local/);
        expect(forbiddenAddress(`::ffff:169.254.${c}.${d}`)).toMatch(/^link-local/);
        expect(forbiddenAddress(`${m}.${c}.${d}.1`)).toBe('multicast');
        expect(forbiddenAddress(`::ffff:${m}.${c}.${d}.1`)).toMatch(/^multicast/);
      }),
    );
  });

  it('every fe80::/10 address is link-local and every ff00::/8 address multicast', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0xfe80, max: 0xfebf }), fc.integer({ min: 0xff00, max: 0xffff }), fc.array(hex16, { minLength: 7, maxLength: 7 }), (ll, mc, rest) => {
        expect(forbiddenAddress([ll.toString(16), ...rest].join(':'))).toBe('link-local');
        expect(forbiddenAddress([mc.toString(16), ...rest].join(':'))).toBe('multicast');
      }),
    );
  });

  it('global unicast IPv4 addresses pass; every private one is refused until opted in', () => {
    const privateV4 = (a: number, b: number, c: number) =>
      a === 10 ||
      (a === 172 && b >= 16 && b < 32) ||
      (a === 192 && b === 168) ||
      (a === 100 && b >= 64 && b < 128) ||
      (a === 198 && (b === 18 || b === 19)) ||
      (a === 192 && b === 0 && (c === 0 || c === 2)) ||
      (a === 198 && b === 51 && c === 100) ||
      (a === 203 && b === 0 && c === 113);
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 223 }), octet, octet, octet, (a, b, c, d) => {
        fc.pre(a !== 127 && !(a === 169 && b === 254) && !(a === 100 && b === 100 && c === 100 && d === 200));
        if (privateV4(a, b, c)) {
          expect(forbiddenAddress(`${a}.${b}.${c}.${d}`)).toBeDefined();
          expect(checkAddress(`${a}.${b}.${c}.${d}`, { allow: [{ text: '0.0.0.0/0', family: 'ipv4', bytes: [0, 0, 0, 0], prefix: 0 }] }).ok).toBe(true);
          return;
        }
        expect(forbiddenAddress(`${a}.${b}.${c}.${d}`)).toBeUndefined();
      }),
    );
  });
});
