import type http from 'node:http';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { readPlainRequest } from '../../../../sidecars/egress/plain.js';
import { allowlistLines, createPolicy, formatTarget, parseAuthority } from '../../../../sidecars/egress/policy.js';
import { runs } from '../../../support/property.js';
import { connectVia, echoThrough, fakeResolver, rawExchange, startEchoServer, startHttpUpstream, startProxy, until, viaProxy } from './harness.js';

/**
 * Egress requests as the agent may write them (sidecars/egress/plain.ts readPlainRequest,
 * policy.ts parseAuthority and the allowlist): host spellings, IP literals in every spelling,
 * Host headers, framing headers. Nothing throws; a request whose target or head is not plain is a
 * 400 with a reason; and against the live proxy on loopback, arbitrary request heads never reach
 * an upstream the allowlist does not name and never take the proxy down.
 */

const octet = fc.integer({ min: 0, max: 255 });
const label = fc.stringMatching(/^[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?$/);
/** A domain name (never an IPv4 literal: a wildcard needs a name). */
const name = fc.array(label, { minLength: 2, maxLength: 4 }).map((ls) => ls.join('.')).filter((h) => parseAuthority(h, 80).ok && createPolicy([`*.${h}`]).errors.length === 0);

/** An IPv4 address in every spelling a resolver (inet_aton) reads, other than the dotted quad. */
const otherIPv4Spelling = fc.tuple(octet, octet, octet, octet, fc.constantFrom('decimal', 'hex', 'octal', 'short2', 'short3', 'hexdots', 'padded')).map(([a, b, c, d, how]) => {
  const n = ((a << 24) >>> 0) + (b << 16) + (c << 8) + d;
  switch (how) {
    case 'decimal':
      return String(n);
    case 'hex':
      return `0x${n.toString(16)}`;
    case 'octal':
      return [a, b, c, d].map((o) => `0${o.toString(8)}`).join('.');
    case 'short2':
      return `${a}.${(b << 16) + (c << 8) + d}`;
    case 'short3':
      return `${a}.${b}.${(c << 8) + d}`;
    case 'hexdots':
      return [a, b, c, d].map((o) => `0x${o.toString(16)}`).join('.');
    default:
      return `${a}.${b}.${c}.0${d}`;
  }
});

describe('egress targets: host and IP spellings', () => {
  it('an IPv4 address in any spelling but the dotted quad is refused as a target', () => {
    fc.assert(
      fc.property(otherIPv4Spelling, fc.option(fc.integer({ min: 1, max: 65535 }), { nil: undefined }), (host, port) => {
        const r = parseAuthority(port === undefined ? host : `${host}:${port}`, 80);
        expect(r.ok, host).toBe(false);
        expect(createPolicy([host]).rules).toEqual([]);
      }),
      runs(300),
    );
  });

  it('a name with a control character, a space, a NUL or over 253 characters is refused; case and a trailing dot are one name', () => {
    const bad = fc.constantFrom('\u0000', '\r', '\n', '\r\n', ' ', '\t', '%00', '\u00e9', '/', '\\', '@', '#', '?');
    fc.assert(
      fc.property(name, bad, fc.nat(), fc.constantFrom(80, 443, 8080), (h, ch, at, port) => {
        const i = at % (h.length + 1);
        expect(parseAuthority(`${h.slice(0, i)}${ch}${h.slice(i)}`, 80).ok).toBe(false);
        const upper = h.toUpperCase();
        expect(parseAuthority(`${upper}.:${port}`, 80)).toEqual({ ok: true, value: { host: h, port } });
        expect(parseAuthority(`${'a.'.repeat(127)}${h}`, 80).ok).toBe(false);
      }),
      runs(300),
    );
  });

  it('a wildcard entry never matches a look-alike: a suffix without the dot, the domain inside a longer name', () => {
    fc.assert(
      fc.property(name, label, (d, x) => {
        const policy = createPolicy([`*.${d}`]);
        for (const host of [`${x}${d}`, `${d}.${x}.test`, `${x}-${d}`, `${d}${x}`]) expect(policy.decide({ host, port: 443 }).allowed, host).toBe(false);
        expect(policy.decide({ host: `${x}.${d}`.toUpperCase(), port: 443 }).allowed).toBe(true);
      }),
      runs(300),
    );
  });

  it('an allowlist file with any line ends, blanks, comments and garbage gives exactly its readable entries', () => {
    const line = fc.oneof(name, name.map((h) => `*.${h}`), fc.constant(''), fc.constant('# a comment'), fc.string({ maxLength: 12 }), fc.constant('   '));
    fc.assert(
      fc.property(fc.array(line, { maxLength: 10 }), fc.constantFrom('\n', '\r\n'), (lines, eol) => {
        const entries = allowlistLines(lines.join(eol));
        expect(entries).toEqual(lines.map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('#')));
        const policy = createPolicy(entries);
        expect(policy.rules.length + policy.errors.length).toBe(entries.length);
        for (const e of policy.errors) expect(e.message).not.toBe('');
      }),
      runs(200),
    );
  });
});

/** The parts of an IncomingMessage that readPlainRequest reads. */
function fakeRequest(url: string, headers: [string, string][], httpVersion: string): http.IncomingMessage {
  const map: Record<string, string> = {};
  for (const [k, v] of headers) {
    const key = k.toLowerCase();
    // As Node folds duplicates: host and content-length keep the first, others join with ", ".
    if (map[key] === undefined) map[key] = v;
    else if (key !== 'host' && key !== 'content-length') map[key] = `${map[key]}, ${v}`;
  }
  return { url, rawHeaders: headers.flat(), headers: map, httpVersion } as unknown as http.IncomingMessage;
}

const authority = fc.oneof(
  name,
  fc.tuple(name, fc.integer({ min: 1, max: 65535 })).map(([h, p]) => `${h}:${p}`),
  fc.tuple(octet, octet, octet, octet).map((o) => o.join('.')),
  fc.ipV6().map((a) => `[${a}]`),
  otherIPv4Spelling,
  fc.tuple(name, name).map(([a, b]) => `${a}@${b}`),
  fc.string({ maxLength: 12 }),
);
const url = fc.oneof(
  fc.tuple(fc.constantFrom('http://', 'HTTP://', 'https://', '', '//', 'ftp://'), authority, fc.constantFrom('', '/', '/a?b=1', '?x', '#f', '/p#f')).map(([s, a, p]) => `${s}${a}${p}`),
  fc.string({ maxLength: 30 }),
);
const headerSet = fc.array(
  fc.oneof(
    authority.map((a): [string, string] => ['Host', a]),
    fc.constantFrom<[string, string]>(['Content-Length', '3'], ['Transfer-Encoding', 'chunked'], ['Transfer-Encoding', 'gzip, chunked'], ['Transfer-Encoding', ' Chunked '], ['X-A', 'b']),
    fc.tuple(fc.string({ maxLength: 8 }), fc.string({ maxLength: 8 })),
  ),
  { maxLength: 5 },
);

describe('egress plain requests: the head around the target', () => {
  it('readPlainRequest never throws; what it forwards names one target, in the URI and the Host header alike', () => {
    fc.assert(
      fc.property(url, headerSet, fc.constantFrom('1.1', '1.0'), (u, hs, v) => {
        const r = readPlainRequest(fakeRequest(u, hs, v));
        if (!r.ok) {
          expect(r.status).toBe(400);
          expect(r.text).toMatch(/^egress: .+\n$/s);
          expect(r.reason).not.toBe('');
          return;
        }
        const m = /^http:\/\/([^/?#]*)/i.exec(u);
        expect(m).not.toBeNull();
        expect(m![1]).not.toContain('@');
        expect(parseAuthority(m![1]!, 80)).toEqual({ ok: true, value: r.target });
        const hosts = hs.filter(([k]) => k.toLowerCase() === 'host');
        expect(hosts.length).toBeLessThanOrEqual(1);
        if (hosts.length === 1) expect(parseAuthority(hosts[0]![1], 80)).toEqual({ ok: true, value: r.target });
        else expect(v).toBe('1.0');
        const names = hs.map(([k]) => k.toLowerCase());
        expect(names.includes('content-length') && names.includes('transfer-encoding')).toBe(false);
        expect(r.path.startsWith('/')).toBe(true);
      }),
      runs(300),
    );
  });

  it('a Host header naming another target than the URI is a 400 that names both', () => {
    fc.assert(
      fc.property(name, name, fc.integer({ min: 1, max: 65535 }), (a, b, p) => {
        fc.pre(a !== b);
        const r = readPlainRequest(fakeRequest(`http://${a}:${p}/x`, [['Host', `${b}:${p}`]], '1.1'));
        expect(r.ok).toBe(false);
        if (!r.ok) expect(r.reason).toBe(`Host header "${b}:${p}" does not match the target ${formatTarget({ host: a, port: p })}`);
      }),
      runs(200),
    );
  });
});

describe('egress proxy on loopback: arbitrary request heads', () => {
  const token = fc.stringMatching(/^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,10}$/);
  const headerLine = fc.oneof(
    fc.tuple(token, fc.string({ unit: 'binary-ascii', maxLength: 20 })).map(([k, v]) => `${k}: ${v.replace(/[\r\n]/g, '')}`),
    fc.constantFrom('Transfer-Encoding: chunked', 'Content-Length: 0', 'Content-Length: 5', 'Content-Length: -1', 'Transfer-Encoding: identity', ' folded: continuation', 'Bad Header: x', 'X:\u0000', 'Connection: keep-alive, host', 'Expect: 100-continue', 'Proxy-Authorization: Basic eA=='),
  );

  it('never reaches a host the allowlist does not name, always answers with a status line, and keeps serving', async () => {
    const up = await startHttpUpstream();
    const { resolve } = fakeResolver({ 'allowed.test': ['127.0.0.1'], 'denied.test': ['127.0.0.1'] });
    const { port, audits } = await startProxy({ allowlist: [`allowed.test:${up.port}`], resolve, headersTimeoutMs: 2_000 });
    const target = fc.oneof(
      fc.constantFrom(`http://allowed.test:${up.port}/ok`, `http://denied.test:${up.port}/no`, `http://allowed.test@denied.test:${up.port}/`, `http://127.0.0.1:${up.port}/`, `http://ALLOWED.TEST.:${up.port}/`),
      fc.tuple(authority, fc.constantFrom('/', '')).map(([a, p]) => `http://${a}${p}`),
      // An authority alone: CONNECT to a host not allowed (an allowed one would open a tunnel, not close).
      fc.constantFrom('/', '*', `denied.test:${up.port}`, `allowed.test:1`),
    );
    const host = fc.oneof(fc.constantFrom(`allowed.test:${up.port}`, `denied.test:${up.port}`, 'allowed.test', ''), authority);
    // Well-formed requests (allowed and not) with odd headers, and heads of anything at all.
    const named = fc.constantFrom(`allowed.test:${up.port}`, `ALLOWED.test.:${up.port}`, `denied.test:${up.port}`, `127.0.0.1:${up.port}`, `allowed.test:1`);
    const wellFormed = fc.tuple(fc.constantFrom('GET', 'POST', 'HEAD', 'DELETE'), named, fc.array(headerLine, { maxLength: 3 })).map(([m, a, ls]) => [m, `http://${a}/p`, [a], ls] as const);
    const head = fc.oneof(
      wellFormed,
      fc.tuple(fc.constantFrom('GET', 'POST', 'HEAD', 'OPTIONS', 'DELETE', 'get', 'CONNECT'), target, fc.array(host, { maxLength: 2 }), fc.array(headerLine, { maxLength: 4 })),
    );

    const statuses = new Set<string>();
    await fc.assert(
      fc.asyncProperty(head, async ([method, t, hosts, lines]) => {
        const before = up.requests.length;
        const raw = `${method} ${t} HTTP/1.1\r\n${hosts.map((h) => `Host: ${h}\r\n`).join('')}${lines.map((l) => `${l}\r\n`).join('')}Connection: close\r\n\r\n${lines.includes('Transfer-Encoding: chunked') ? '0\r\n\r\n' : lines.includes('Content-Length: 5') ? 'hello' : ''}`;
        const { text } = await rawExchange(port, raw, { waitMs: 4_000 });
        if (text !== '') expect(text).toMatch(/^HTTP\/1\.1 \d{3} /);
        // The Host header goes on as the client wrote it, naming the allowed target.
        for (const seen of up.requests.slice(before)) expect(parseAuthority(seen.headers.host ?? '', 80)).toEqual({ ok: true, value: { host: 'allowed.test', port: up.port } });
        statuses.add(text.slice(9, 12));
      }),
      { ...runs(150), interruptAfterTimeLimit: 20_000 },
    );
    // The generator reaches every outcome: forwarded, denied by the allowlist, refused as malformed.
    for (const status of ['200', '403', '400']) expect(statuses).toContain(status);
    // Still serving, and every refusal was audited with a reason.
    expect((await viaProxy(port, `http://allowed.test:${up.port}/after`)).status).toBe(200);
    for (const a of audits) if (a.decision === 'deny') expect(a.reason).not.toBe('');
  });

  it('CONNECT opens a tunnel exactly when the target is the allowed host and port, in whatever spelling the policy reads as it', async () => {
    const echo = await startEchoServer();
    const { resolve } = fakeResolver({ 'allowed.test': ['127.0.0.1'], 'denied.test': ['127.0.0.1'] });
    const { port, audits } = await startProxy({ allowlist: [`allowed.test:${echo.port}`], resolve });
    const spelled = fc.constantFrom(
      `allowed.test:${echo.port}`,
      `ALLOWED.Test.:${echo.port}`,
      `allowed.test.evil.test:${echo.port}`,
      `evilallowed.test:${echo.port}`,
      `allowed.test:0${echo.port}`,
      `allowed.test:${echo.port + 1}`,
      `allowed.test`,
      `127.0.0.1:${echo.port}`,
      `[::ffff:127.0.0.1]:${echo.port}`,
      `denied.test:${echo.port}`,
      `allowed.test:${echo.port}@denied.test:${echo.port}`,
    );
    const target = fc.oneof(spelled, authority.map((a) => `${a}:${echo.port}`), authority);
    let tunnels = 0;
    await fc.assert(
      fc.asyncProperty(target, async (t) => {
        const before = audits.length;
        const expected = parseAuthority(t);
        const allowed = expected.ok && expected.value.host === 'allowed.test' && expected.value.port === echo.port;
        if (allowed) tunnels++;
        if (allowed) {
          const r = await connectVia(port, t);
          expect(r.status, t).toBe(200);
          expect(await echoThrough(r.socket, 'ping')).toBe('ping');
          r.socket.destroy();
          // A tunnel's record is written when it closes.
          await until(() => audits.length > before, 'the tunnel audited');
          expect(audits.slice(before).map((a) => a.decision)).toEqual(['allow']);
          return;
        }
        // Raw bytes: the target as the agent wrote it, spaces and control characters too.
        const { text } = await rawExchange(port, `CONNECT ${t} HTTP/1.1\r\nHost: ${t}\r\n\r\n`, { waitMs: 4_000 });
        expect(text, t).toMatch(/^HTTP\/1\.1 (400|403) /);
        expect(echo.connections).toBe(tunnels);
        // A request line the HTTP parser can read is audited; one it cannot is a parse error answered 400.
        if (/^[\x21-\x7e]+$/.test(t)) {
          expect(text).toMatch(/\r\n\r\negress: /);
          await until(() => audits.length > before, 'the refusal audited');
          expect(audits.slice(before).map((a) => a.decision)).toEqual(['deny']);
        }
      }),
      runs(150),
    );
  });
});
