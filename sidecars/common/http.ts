import http from 'node:http';
import type { Duplex } from 'node:stream';

/**
 * What the egress proxy and the cred-proxy do to HTTP the same way: which headers belong to one
 * connection only and are never passed on, the answers written straight to a socket, and the
 * server's timeouts. Bundled into each program by scripts/build.mjs; Node 18 APIs only.
 */

export type HeaderMap = Record<string, string | string[]>;

export const TEXT_TYPE = 'text/plain; charset=utf-8';
export const JSON_TYPE = 'application/json';

/**
 * Headers about one connection, never passed to the other side. A forwarded Upgrade, TE or
 * Transfer-Encoding would let a client frame the next hop's message differently from the
 * proxy's reading of it (request smuggling). Expect goes too: the proxy's own HTTP server
 * answers 100-continue, the upstream gets the body without waiting.
 */
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'expect',
]);

/** The names a message's Connection headers list (lowercase): hop-by-hop for that message. */
export function connectionNamed(raw: readonly string[]): Set<string> {
  const named = new Set<string>();
  for (let i = 0; i < raw.length; i += 2) {
    if (raw[i]!.toLowerCase() !== 'connection') continue;
    for (const t of raw[i + 1]!.split(',')) named.add(t.trim().toLowerCase());
  }
  return named;
}

/** Whether the header `name` (lowercase) stays on this hop: hop-by-hop, Proxy-*, or named by Connection (`named`). */
export function isHopByHop(name: string, named: ReadonlySet<string>): boolean {
  return HOP_BY_HOP.has(name) || name.startsWith('proxy-') || named.has(name);
}

/** Appends a header value, keeping repeated headers as an array (in order). */
export function addHeader(out: HeaderMap, name: string, value: string): void {
  const prev = out[name];
  if (prev === undefined) out[name] = value;
  else if (Array.isArray(prev)) prev.push(value);
  else out[name] = [prev, value];
}

/** A complete response written straight to a socket (refused CONNECT and Upgrade, unreadable requests), then closed. */
export function rawResponse(socket: Duplex, status: number, contentType: string, text: string): void {
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  const body = Buffer.from(text);
  const head = [
    `HTTP/1.1 ${status} ${http.STATUS_CODES[status] ?? 'Error'}`,
    `Content-Type: ${contentType}`,
    `Content-Length: ${body.length}`,
    'Connection: close',
    '',
    '',
  ].join('\r\n');
  socket.end(Buffer.concat([Buffer.from(head), body]));
  // A client that keeps its side open does not keep the socket alive.
  setTimeout(() => socket.destroy(), 2000).unref();
}

/**
 * The server options for a client's time to send its request: `headersTimeoutMs` for the head,
 * `requestTimeoutMs` (never less than the head's) for the whole request, body included.
 */
export function requestTimeouts(headersTimeoutMs: number, requestTimeoutMs: number): Pick<http.ServerOptions, 'headersTimeout' | 'requestTimeout' | 'connectionsCheckingInterval'> {
  return {
    headersTimeout: headersTimeoutMs,
    requestTimeout: Math.max(requestTimeoutMs, headersTimeoutMs),
    // How often Node checks the two timeouts above; its default (30 s) would make them coarse.
    connectionsCheckingInterval: Math.max(10, Math.min(1000, Math.floor(headersTimeoutMs / 4))),
  };
}
