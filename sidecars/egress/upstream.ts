import http from 'node:http';
import net from 'node:net';
import type { Duplex } from 'node:stream';

/**
 * How the egress proxy reaches an upstream: dialling a vetted address, the keep-alive pool of
 * plain-HTTP upstream connections, and the short-lived cache of name resolutions.
 * Node built-ins only (Debian's Node 18 in the sidecar image).
 */

export class UpstreamError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly code: string,
  ) {
    super(message);
  }
}

function connectOnce(address: string, port: number, timeoutMs: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    // noDelay: a tunnel or a reused connection relays whatever the client wrote at once; Nagle
    // on this side held a request's second write back by ~40 ms (docs/benchmarks.md, egress).
    const socket = net.connect({ host: address, port, noDelay: true });
    const fail = (err: Error) => {
      socket.destroy();
      reject(err);
    };
    const timer = setTimeout(() => fail(new UpstreamError(`connecting to ${address} timed out`, 504, 'ETIMEDOUT')), timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.removeListener('error', onError);
      resolve(socket);
    });
    const onError = (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      fail(new UpstreamError(`connecting to ${address}: ${err.code ?? err.message}`, 502, err.code ?? 'ECONNECT'));
    };
    socket.once('error', onError);
  });
}

/** Connects to each vetted address in turn; the first that answers wins. Rejects with an UpstreamError. */
export async function dial(addresses: readonly string[], port: number, timeoutMs: number): Promise<{ socket: net.Socket; address: string }> {
  let last: unknown = new UpstreamError('no address to connect to', 502, 'ENOADDRESS');
  for (const address of addresses) {
    try {
      return { socket: await connectOnce(address, port, timeoutMs), address };
    } catch (err) {
      last = err;
    }
  }
  throw last;
}

/** A target after the proxy's own checks: the name the client asked for and the addresses it was vetted to. */
export interface VettedTarget {
  host: string;
  port: number;
  /** Every address the name resolved to, each one checked against the address policy for this request. */
  addresses: readonly string[];
}

/** What the pool knows of one of its connections. */
interface Conn {
  host: string;
  port: number;
  /** The vetted address it is connected to. */
  address: string;
  /** The upstream's `Keep-Alive: timeout=N` hint, in ms, when it gave one. */
  hintMs?: number;
}

export interface UpstreamPoolOptions {
  /** Time allowed to connect (ms). */
  connectTimeoutMs: number;
  /** Idle connections kept per target. */
  maxIdlePerTarget: number;
  /** An idle connection is closed after this long (ms). */
  idleMs: number;
  /** Whether the policy in force still allows the target; a connection to a target it does not is never kept. */
  allowed: (host: string, port: number) => boolean;
}

/** The request options a pooled request carries: the target it was vetted for. */
export interface PooledRequestOptions extends http.RequestOptions {
  vetted: VettedTarget;
}

/**
 * The keep-alive pool of plain-HTTP upstream connections: a node:http Agent whose origin is the
 * vetted target, never a Host header. A connection is made (createConnection) only to an
 * address of the request's vetted set, and is reused only by a request for the same name and
 * port whose resolution, checked again for that request, gave the same set of addresses: the key
 * is `name:port/sorted addresses`. So a pooled connection never carries a request for another
 * name, another port, or an address that was not vetted for that request. The name is part of
 * the key because some servers and load balancers route a whole connection by its first Host.
 *
 * Bounds: `maxIdlePerTarget` idle connections per key and `idleMs` (or less when the upstream
 * announced a shorter `Keep-Alive: timeout`) before an idle one is closed. Connections in use are
 * not capped (as before the pool: a cap would queue requests behind long ones such as event
 * streams). A connection whose exchange did not end cleanly (client gone, canary, error, timeout,
 * `Connection: close`) is destroyed by its request and never comes back. `dropDisallowed` closes
 * idle connections to targets a new policy no longer allows, and a busy one to such a target is
 * closed when its exchange ends instead of being kept.
 */
export class UpstreamPool extends http.Agent {
  readonly #conns = new WeakMap<Duplex, Conn>();
  readonly #opts: UpstreamPoolOptions;

  constructor(opts: UpstreamPoolOptions) {
    super({ keepAlive: true, keepAliveMsecs: 1000, maxFreeSockets: opts.maxIdlePerTarget, timeout: opts.idleMs, scheduling: 'lifo' });
    this.#opts = opts;
  }

  static key(t: VettedTarget): string {
    return `${t.host}:${t.port}/${[...t.addresses].sort().join(',')}`;
  }

  override getName(options?: http.ClientRequestArgs): string {
    const vetted = (options as Partial<PooledRequestOptions> | undefined)?.vetted;
    // Without a vetted target no connection is ever made (createConnection refuses); a key of its own.
    return vetted ? UpstreamPool.key(vetted) : '<unvetted>';
  }

  override createConnection(options: http.ClientRequestArgs, callback?: (err: Error | null, stream: Duplex) => void): undefined {
    const done = callback ?? (() => undefined);
    const vetted = (options as Partial<PooledRequestOptions>).vetted;
    if (!vetted) {
      process.nextTick(done, new UpstreamError('no vetted target', 500, 'ENOTVETTED'));
      return undefined;
    }
    dial(vetted.addresses, vetted.port, this.#opts.connectTimeoutMs).then(
      ({ socket, address }) => {
        this.#conns.set(socket, { host: vetted.host, port: vetted.port, address });
        done(null, socket);
      },
      (err: Error) => done(err, undefined as unknown as Duplex),
    );
    return undefined;
  }

  override keepSocketAlive(socket: Duplex): boolean {
    const conn = this.#conns.get(socket);
    if (!conn || !this.#opts.allowed(conn.host, conn.port)) return false;
    const kept = (http.Agent.prototype.keepSocketAlive as (s: Duplex) => boolean).call(this, socket);
    if (!kept) return false;
    if (conn.hintMs !== undefined) {
      // Closed a second before the upstream said it would close it (fewer requests sent on a dying connection).
      const ms = Math.min(this.#opts.idleMs, conn.hintMs - 1000);
      if (ms <= 0) return false;
      (socket as net.Socket).setTimeout(ms);
    }
    return true;
  }

  /** The vetted address a pooled connection is connected to. */
  addressOf(socket: Duplex | null | undefined): string | undefined {
    return socket ? this.#conns.get(socket)?.address : undefined;
  }

  /** Records the upstream's `Keep-Alive` response header for the connection it came on. */
  noteKeepAlive(socket: Duplex | null | undefined, header: string | undefined): void {
    const conn = socket ? this.#conns.get(socket) : undefined;
    if (!conn || header === undefined) return;
    const m = /(?:^|[\s,])timeout\s*=\s*(\d+)/i.exec(header);
    if (m) conn.hintMs = Number(m[1]) * 1000;
  }

  /** Closes the idle connections of one key (after one of them turned out to be dead). */
  dropIdle(key: string): void {
    for (const s of [...(this.freeSockets[key] ?? [])]) s.destroy();
  }

  /** Closes every idle connection to a target the policy in force no longer allows. */
  dropDisallowed(): void {
    for (const list of Object.values(this.freeSockets)) {
      for (const s of [...(list ?? [])]) {
        const conn = this.#conns.get(s);
        if (!conn || !this.#opts.allowed(conn.host, conn.port)) s.destroy();
      }
    }
  }

  /** Connections open now: idle (in the pool) and in use. */
  counts(): { idle: number; busy: number } {
    const n = (d: NodeJS.ReadOnlyDict<Duplex[]>) => Object.values(d).reduce((k, l) => k + (l?.length ?? 0), 0);
    return { idle: n(this.freeSockets), busy: n(this.sockets) };
  }
}

/**
 * A resolver that remembers each name's answer for `ttlMs` (dns.lookup gives no TTL; this is
 * short on purpose) and shares one lookup between concurrent requests for the same name.
 * Failures are not remembered. Only the answer is cached: the caller checks every address
 * against the address policy on each use.
 */
export function cachedResolver(resolve: (host: string) => Promise<string[]>, ttlMs: number, now: () => number = Date.now, maxEntries = 1024) {
  if (ttlMs <= 0) return { resolve, clear: () => undefined };
  const answers = new Map<string, { addresses: string[]; until: number }>();
  const inFlight = new Map<string, Promise<string[]>>();
  const lookup = (host: string): Promise<string[]> => {
    const hit = answers.get(host);
    if (hit !== undefined) {
      if (hit.until > now()) return Promise.resolve(hit.addresses);
      answers.delete(host);
    }
    const pending = inFlight.get(host);
    if (pending) return pending;
    const p = resolve(host).then(
      (addresses) => {
        inFlight.delete(host);
        if (answers.size >= maxEntries) answers.clear();
        answers.set(host, { addresses, until: now() + ttlMs });
        return addresses;
      },
      (err: unknown) => {
        inFlight.delete(host);
        throw err;
      },
    );
    inFlight.set(host, p);
    return p;
  };
  return { resolve: lookup, clear: () => answers.clear() };
}
