/**
 * The address policy: which addresses a sidecar may dial. One pure implementation (bytes and
 * prefixes, no node:net), used by the three sidecars that dial upstreams (the egress proxy,
 * the cred-proxy and the git gate, through sidecars/common/address-policy.ts) at every dial,
 * and by the host when it judges a manifest, a plan or an approval. It lives in config/
 * because that is the one layer every one of them may import.
 *
 * Refused always: unspecified, loopback, link-local (the cloud metadata addresses among
 * them), multicast, broadcast, reserved, the IPv6 forms that carry such an IPv4 address, and
 * every address on the deny list (the bottle networks' gateways and the Docker host's own
 * addresses: its bridges' gateways and its interfaces), even inside an opted-in block.
 * Refused unless the manifest opts in (`bottles.NAME.private_networks`): every other
 * non-global range (RFC 1918, 100.64/10, 198.18/15, the documentation and protocol blocks,
 * fc00::/7, fec0::/10, and the IPv6 forms that carry such an IPv4 address).
 */

export type Bytes = number[];
export type Family = 'ipv4' | 'ipv6';

const OCTET = '(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])';
const IPV4 = new RegExp(`^${OCTET}(\\.${OCTET}){3}$`);

function parseIPv4Bytes(text: string): Bytes | undefined {
  if (!IPV4.test(text)) return undefined;
  return text.split('.').map(Number);
}

/** Parses an IPv6 address (optionally with a %zone, which is ignored) into 16 bytes. */
export function parseIPv6(text: string): Bytes | undefined {
  const zone = text.indexOf('%');
  let s = (zone === -1 ? text : text.slice(0, zone)).toLowerCase();
  if (s === '' || !/^[0-9a-f:.]+$/.test(s)) return undefined;
  let tail: Bytes = [];
  const lastColon = s.lastIndexOf(':');
  if (s.includes('.')) {
    const v4 = parseIPv4Bytes(s.slice(lastColon + 1));
    if (v4 === undefined) return undefined;
    tail = v4;
    s = `${s.slice(0, lastColon + 1)}0:0`; // placeholder groups, replaced below
  }
  const halves = s.split('::');
  if (halves.length > 2) return undefined;
  const groups = (part: string): string[] | undefined => {
    if (part === '') return [];
    const gs = part.split(':');
    return gs.every((g) => /^[0-9a-f]{1,4}$/.test(g)) ? gs : undefined;
  };
  const head = groups(halves[0]!);
  const rest = halves.length === 2 ? groups(halves[1]!) : [];
  if (head === undefined || rest === undefined) return undefined;
  let all: string[];
  if (halves.length === 2) {
    const missing = 8 - head.length - rest.length;
    if (missing < 1) return undefined;
    all = [...head, ...new Array<string>(missing).fill('0'), ...rest];
  } else {
    all = head;
  }
  if (all.length !== 8) return undefined;
  const bytes: Bytes = [];
  for (const g of all) {
    const n = Number.parseInt(g, 16);
    bytes.push(n >> 8, n & 0xff);
  }
  if (tail.length === 4) bytes.splice(12, 4, ...tail);
  return bytes;
}

/** An IP address as 4 or 16 bytes, or undefined when `text` is not one (a plain dotted quad, or IPv6). */
export function parseIp(text: string): Bytes | undefined {
  return parseIPv4Bytes(text) ?? (text.includes(':') ? parseIPv6(text) : undefined);
}

export const familyOf = (b: Bytes): Family => (b.length === 4 ? 'ipv4' : 'ipv6');

/** A dotted quad, or eight hex groups (never the text a client gave). */
export function ipText(b: Bytes): string {
  if (b.length === 4) return b.join('.');
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(((b[i]! << 8) | b[i + 1]!).toString(16));
  return groups.join(':');
}

/** An address block: the network's bytes (host bits cleared) and its prefix length. */
export interface AddressBlock {
  /** As written, for messages. */
  text: string;
  family: Family;
  bytes: Bytes;
  prefix: number;
}

export type ParseResult<T> = { ok: true; value: T } | { ok: false; message: string };

function masked(b: Bytes, prefix: number): Bytes {
  return b.map((byte, i) => {
    const bits = Math.max(0, Math.min(8, prefix - i * 8));
    return bits === 0 ? 0 : byte & ((0xff << (8 - bits)) & 0xff);
  });
}

/**
 * Reads `addr` or `addr/prefix` (IPv4 or IPv6). With `strict`, host bits must be clear
 * (`10.20.0.5/16` is refused with the block it probably means); without, they are ignored.
 */
export function parseAddressBlock(raw: string, strict = false): ParseResult<AddressBlock> {
  const text = raw.trim();
  const slash = text.indexOf('/');
  const addr = slash === -1 ? text : text.slice(0, slash);
  const bytes = parseIp(addr);
  if (bytes === undefined || addr.includes('%')) return { ok: false, message: `"${addr}" is not an IP address` };
  const max = bytes.length * 8;
  let prefix = max;
  if (slash !== -1) {
    const p = text.slice(slash + 1);
    if (!/^(0|[1-9][0-9]{0,2})$/.test(p) || Number(p) > max) return { ok: false, message: `"${p}" is not a prefix length from 0 to ${max}` };
    prefix = Number(p);
  }
  const net = masked(bytes, prefix);
  if (strict && net.some((b, i) => b !== bytes[i])) {
    return { ok: false, message: `"${text}" has host bits set; the block is ${ipText(net)}/${prefix}` };
  }
  return { ok: true, value: { text, family: familyOf(bytes), bytes: net, prefix } };
}

/** Reads a comma-separated list of addresses or blocks (host bits ignored), with what it could not read. */
export function parseBlockList(text: string): { blocks: AddressBlock[]; errors: { entry: string; message: string }[] } {
  const blocks: AddressBlock[] = [];
  const errors: { entry: string; message: string }[] = [];
  for (const part of text.split(',')) {
    if (part.trim() === '') continue;
    const parsed = parseAddressBlock(part);
    if (parsed.ok) blocks.push(parsed.value);
    else errors.push({ entry: part.trim(), message: parsed.message });
  }
  return { blocks, errors };
}

/** Whether `b` (of the block's family) is inside `block`. */
export function inBlock(b: Bytes, block: AddressBlock): boolean {
  if (b.length !== block.bytes.length) return false;
  const m = masked(b, block.prefix);
  return m.every((x, i) => x === block.bytes[i]);
}

/** Whether two blocks of one family share an address. */
function overlaps(a: AddressBlock, b: AddressBlock): boolean {
  if (a.family !== b.family) return false;
  return a.prefix <= b.prefix ? inBlock(b.bytes, a) : inBlock(a.bytes, b);
}

// ---------------------------------------------------------------------------------------
// The classes

/** `always`: never dialled; `private`: dialled only inside an opted-in block. */
export type AddressKind = 'always' | 'private';

interface AddressClass {
  block: AddressBlock;
  /** The class as audited (`address_class`), e.g. `private (RFC 1918)`. */
  name: string;
  /** The class in a sentence, with its article: "a private address (RFC 1918)". */
  phrase: string;
  kind: AddressKind;
}

function cls(cidr: string, name: string, phrase: string, kind: AddressKind): AddressClass {
  const parsed = parseAddressBlock(cidr, true);
  if (!parsed.ok) throw new Error(`bad class block ${cidr}: ${parsed.message}`);
  return { block: parsed.value, name, phrase, kind };
}

/** Checked in order, the first match names the class (a /32 inside a wider range comes first). */
const IPV4_CLASSES: readonly AddressClass[] = [
  cls('0.0.0.0/8', 'unspecified', 'an unspecified address', 'always'),
  cls('127.0.0.0/8', 'loopback', 'a loopback address', 'always'),
  cls('169.254.169.254/32', 'link-local (cloud metadata)', 'a link-local address (cloud metadata)', 'always'),
  cls('169.254.0.0/16', 'link-local', 'a link-local address', 'always'),
  cls('100.100.100.200/32', 'cloud metadata', 'a cloud metadata address', 'always'),
  cls('224.0.0.0/4', 'multicast', 'a multicast address', 'always'),
  cls('255.255.255.255/32', 'broadcast', 'a broadcast address', 'always'),
  cls('240.0.0.0/4', 'reserved', 'a reserved address', 'always'),
  cls('10.0.0.0/8', 'private (RFC 1918)', 'a private address (RFC 1918)', 'private'),
  cls('172.16.0.0/12', 'private (RFC 1918)', 'a private address (RFC 1918)', 'private'),
  cls('192.168.0.0/16', 'private (RFC 1918)', 'a private address (RFC 1918)', 'private'),
  cls('100.64.0.0/10', 'shared (RFC 6598)', 'a shared address (RFC 6598, carrier-grade NAT)', 'private'),
  cls('198.18.0.0/15', 'benchmarking (RFC 2544)', 'a benchmarking address (RFC 2544)', 'private'),
  cls('192.0.0.0/24', 'protocol assignments (RFC 6890)', 'a protocol-assignment address (RFC 6890)', 'private'),
  cls('192.0.2.0/24', 'documentation (RFC 5737)', 'a documentation address (RFC 5737)', 'private'),
  cls('198.51.100.0/24', 'documentation (RFC 5737)', 'a documentation address (RFC 5737)', 'private'),
  cls('203.0.113.0/24', 'documentation (RFC 5737)', 'a documentation address (RFC 5737)', 'private'),
];

const IPV6_CLASSES: readonly AddressClass[] = [
  cls('::/128', 'unspecified', 'an unspecified address', 'always'),
  cls('::1/128', 'loopback', 'a loopback address', 'always'),
  cls('fe80::/10', 'link-local', 'a link-local address', 'always'),
  cls('ff00::/8', 'multicast', 'a multicast address', 'always'),
  // The AWS metadata service over IPv6 (inside fc00::/7, so before it).
  cls('fd00:ec2::254/128', 'cloud metadata', 'a cloud metadata address', 'always'),
  cls('100::/64', 'reserved', 'a reserved address (discard-only)', 'always'),
  cls('fc00::/7', 'unique local (fc00::/7)', 'a unique local address (fc00::/7)', 'private'),
  cls('fec0::/10', 'site-local (fec0::/10)', 'a site-local address (fec0::/10)', 'private'),
  cls('2001:db8::/32', 'documentation (RFC 3849)', 'a documentation address (RFC 3849)', 'private'),
  cls('3fff::/20', 'documentation (RFC 9637)', 'a documentation address (RFC 9637)', 'private'),
  cls('2001::/23', 'protocol assignments (RFC 6890)', 'a protocol-assignment address (RFC 6890)', 'private'),
];

/** Global unicast IPv6: everything outside it that no class above names is reserved. */
const IPV6_GLOBAL = cls('2000::/3', 'global', 'a global address', 'private').block;
const IPV6_RESERVED: Omit<AddressClass, 'block'> = { name: 'reserved', phrase: 'a reserved address', kind: 'always' };

/**
 * The IPv6 ranges that stand for an IPv4 address, and where in the 16 bytes it sits: mapped,
 * IPv4-translated, compatible, NAT64 (well-known and local-use), 6to4. `::` and `::1` fall in
 * ::/96 too; they are refused as IPv6 addresses before their IPv4 form is looked at.
 */
const EMBEDDING: readonly (readonly [AddressBlock, number])[] = [
  [cls('::ffff:0:0/96', '', '', 'always').block, 12],
  [cls('::ffff:0:0:0/96', '', '', 'always').block, 12],
  [cls('::/96', '', '', 'always').block, 12],
  [cls('64:ff9b::/96', '', '', 'always').block, 12],
  [cls('64:ff9b:1::/48', '', '', 'always').block, 12],
  [cls('2002::/16', '', '', 'always').block, 2],
];

/** The IPv4 address an IPv6 address stands for, if any. */
export function embeddedIPv4(b: Bytes): Bytes | undefined {
  if (b.length !== 16) return undefined;
  const found = EMBEDDING.find(([block]) => inBlock(b, block));
  return found === undefined ? undefined : b.slice(found[1], found[1] + 4);
}

function classOf(b: Bytes, embedding: boolean): Omit<AddressClass, 'block'> | undefined {
  const found = (b.length === 4 ? IPV4_CLASSES : IPV6_CLASSES).find((c) => inBlock(b, c.block));
  if (found) return found;
  if (b.length === 16 && !embedding && !inBlock(b, IPV6_GLOBAL)) return IPV6_RESERVED;
  return undefined;
}

// ---------------------------------------------------------------------------------------
// The verdict

export interface AddressRefusal {
  ok: false;
  /** The address as given. */
  address: string;
  /** The class as audited (`address_class`): `loopback`, `private (RFC 1918)`, `docker host`, ... */
  addressClass: string;
  /** `always` and `host` can never be dialled; `private` can, once opted in. */
  kind: AddressKind | 'host';
  /** The class in words, with its article: "a private address (RFC 1918)", "a loopback address (as 127.0.0.1)". */
  what: string;
}

export type AddressVerdict = { ok: true } | AddressRefusal;

export interface AddressPolicyConfig {
  /** Never dialled, even inside an opted-in block: the bottle networks' gateways and the Docker host's addresses. */
  deny?: readonly AddressBlock[];
  /** The manifest's private_networks: the non-global blocks that may be dialled. */
  allow?: readonly AddressBlock[];
}

/** Judges one address (the answer of a resolver, or a literal); see the file comment. */
export function checkAddress(ip: string, config: AddressPolicyConfig = {}): AddressVerdict {
  const bytes = parseIp(ip);
  const refuse = (addressClass: string, kind: AddressRefusal['kind'], what: string): AddressRefusal => ({ ok: false, address: ip, addressClass, kind, what });
  if (bytes === undefined) return refuse('not an IP address', 'always', 'not an IP address');
  const v4 = embeddedIPv4(bytes);
  const own = classOf(bytes, v4 !== undefined);
  if (own?.kind === 'always') return refuse(own.name, 'always', own.phrase);
  const inner = v4 === undefined ? undefined : classOf(v4, false);
  if (inner?.kind === 'always') return refuse(inner.name, 'always', `${inner.phrase} (as ${ipText(v4!)})`);
  for (const form of v4 === undefined ? [bytes] : [bytes, v4]) {
    const block = (config.deny ?? []).find((d) => inBlock(form, d));
    if (block !== undefined) {
      const as = form === bytes ? '' : ` (as ${ipText(form)})`;
      return refuse('docker host', 'host', `an address of the Docker host or a bottle network's gateway${as} (${block.text})`);
    }
  }
  // An address that stands for an IPv4 one is judged, and opted in, as that IPv4 address.
  const judged = v4 ?? bytes;
  const c = v4 === undefined ? own : inner;
  if (c?.kind === 'private') {
    if ((config.allow ?? []).some((a) => inBlock(judged, a))) return { ok: true };
    return refuse(c.name, 'private', v4 === undefined ? c.phrase : `${c.phrase} (as ${ipText(v4)})`);
  }
  return { ok: true };
}

/**
 * A refusal as one sentence, naming the class and what would allow it: for a private address
 * the manifest key, for the others that nothing does. `who` says who refuses ("the egress proxy").
 */
export function refusalText(r: AddressRefusal, who: string, bottle = '<bottle>', name?: string): string {
  const subject = name === undefined || name === r.address ? `${r.address} is ${r.what}` : `${name} resolves to ${r.address}, ${r.what}`;
  if (r.kind === 'private') return `${subject}; allow it with bottles.${bottle}.private_networks`;
  if (r.kind === 'host') return `${subject}, which ${who} never connects to, not even inside private_networks`;
  return `${subject}, which ${who} never connects to`;
}

/**
 * What is wrong with one private_networks entry, or undefined: not a block, host bits set, a
 * block wholly inside an always-refused range (nothing can allow loopback), or one that holds
 * no non-global address at all (global addresses need no opt-in).
 */
export function privateNetworkProblem(raw: string): string | undefined {
  const parsed = parseAddressBlock(raw, true);
  if (!parsed.ok) return parsed.message;
  const b = parsed.value;
  const classes = b.family === 'ipv4' ? IPV4_CLASSES : IPV6_CLASSES;
  const within = classes.find((c) => c.kind === 'always' && c.block.prefix <= b.prefix && inBlock(b.bytes, c.block));
  if (within) return `${b.text} is within ${within.block.text} (${within.name}), which is never dialled; private_networks cannot allow it`;
  if (!classes.some((c) => c.kind === 'private' && overlaps(c.block, b))) {
    const hint = b.family === 'ipv6' ? ' (an IPv6 form of an IPv4 address is opted in as the IPv4 block)' : '';
    return `${b.text} holds no private or other non-global address${hint}; global addresses need no opt-in`;
  }
  return undefined;
}

/** The opted-in blocks of a manifest's private_networks (entries already validated). */
export function privateBlocks(entries: readonly string[]): AddressBlock[] {
  return entries.flatMap((e) => {
    const p = parseAddressBlock(e);
    return p.ok ? [p.value] : [];
  });
}

/** The host of a URL as an address, when it is a literal one (brackets of IPv6 removed); undefined for a name. */
export function literalHost(url: string): string | undefined {
  let host: string;
  try {
    host = new URL(url).hostname;
  } catch {
    return undefined;
  }
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
  return parseIp(host) !== undefined ? host : undefined;
}
