import type http from 'node:http';
import type net from 'node:net';
import type { Duplex } from 'node:stream';
import { rawResponse, TEXT_TYPE } from '../common/http.js';
import { type AuditRecord, clientOf, type RequestFacts, refusalRecord, tunnelRecord } from './audit.js';
import { type ProxyContext, shownTarget } from './context.js';
import { credentialFound, deniedText } from './decision.js';
import { type Decision, formatTarget, parseAuthority, type Target } from './policy.js';
import { dial, type UpstreamError } from './upstream.js';

/**
 * CONNECT host:port tunnels. The request line and headers are checked (canary, target,
 * allowlist, addresses) before anything is dialled; the tunnel's payload is opaque (TLS) and
 * is never read. A tunnel always has an upstream connection of its own, to a vetted address.
 */

type Refuse = (status: number, text: string, reason: string, target: Target | null, rule?: string | null, extra?: Partial<AuditRecord>) => void;

export function handleConnect(ctx: ProxyContext, req: http.IncomingMessage, socket: Duplex, head: Buffer): void {
  const client = socket as net.Socket;
  client.pause();
  client.on('error', () => undefined); // reported through 'close'
  const facts: RequestFacts = { at: ctx.now(), client: clientOf(client), method: 'CONNECT' };
  const url = req.url ?? '';
  const refuse: Refuse = (status, text, reason, target, rule = null, extra = {}) => {
    ctx.audit(refusalRecord(facts, ctx.now() - facts.at, status, reason, target, rule, extra));
    rawResponse(client, status, TEXT_TYPE, text);
  };
  const secrets = ctx.secrets();
  const parsed = parseAuthority(url);
  // The canary: the CONNECT request line and headers are read; the tunnel's payload is not (TLS).
  const inHead = secrets.scanHead(url, req.rawHeaders);
  if (inHead) {
    const target = parsed.ok ? shownTarget(secrets, parsed.value) : null;
    const found = credentialFound(inHead, inHead.where, 'CONNECT', target ? formatTarget(target) : 'the request');
    ctx.log(found.log);
    refuse(403, found.text, found.reason, target, null, found.extra);
    return;
  }
  if (!parsed.ok) {
    refuse(400, `egress: bad CONNECT target "${url}": ${parsed.message}.\n`, `bad target: ${parsed.message}`, null);
    return;
  }
  const target = parsed.value;
  const decision = ctx.policy().decide(target);
  if (!decision.allowed) {
    refuse(403, deniedText(ctx.bottle, 'CONNECT', target, decision), decision.reason, target);
    return;
  }
  openTunnel(ctx, client, head, facts, target, decision, refuse).catch((err: Error) => {
    ctx.log(`egress: internal error on CONNECT ${formatTarget(target)}: ${err.stack ?? err.message}`);
    client.destroy();
  });
}

/** Vets the allowed target's addresses, dials one, and splices the two sockets; one audit record either way. */
async function openTunnel(
  ctx: ProxyContext,
  client: net.Socket,
  head: Buffer,
  facts: RequestFacts,
  target: Target,
  decision: Extract<Decision, { allowed: true }>,
  refuse: Refuse,
): Promise<void> {
  const where = formatTarget(target);
  // Registered before the first await: a client that leaves while the name resolves is seen.
  let clientClosed = false;
  client.once('close', () => {
    clientClosed = true;
  });
  const fail = (status: number, message: string, extra: { address?: string } = {}) => {
    ctx.audit(tunnelRecord(facts, ctx.now() - facts.at, target, decision, { status, bytes_up: 0, bytes_down: 0, error: message, ...extra }));
    rawResponse(client, status, TEXT_TYPE, `egress: CONNECT ${where}: ${message}.\n`);
  };

  const vetted = await ctx.vet(target);
  if (!vetted.ok) {
    if (vetted.forbidden) refuse(403, `egress: refused CONNECT ${where}: ${vetted.reason}.\n`, vetted.reason, target, decision.rule, vetted.addressClass ? { address_class: vetted.addressClass } : {});
    else fail(vetted.status, vetted.reason);
    return;
  }
  if (clientClosed) {
    fail(499, 'the client went away');
    return;
  }
  let dialled: { socket: net.Socket; address: string };
  try {
    dialled = await dial(vetted.addresses, target.port, ctx.connectTimeoutMs);
  } catch (err) {
    const e = err as UpstreamError;
    fail(e.status ?? 502, e.message);
    return;
  }
  const upstream = dialled.socket;
  if (clientClosed) {
    upstream.destroy();
    fail(499, 'the client went away', { address: dialled.address });
    return;
  }
  splice(client, upstream, head, ctx.idleTimeoutMs, (error) => {
    ctx.audit(
      tunnelRecord(facts, ctx.now() - facts.at, target, decision, {
        status: 200,
        bytes_up: upstream.bytesWritten,
        bytes_down: upstream.bytesRead,
        address: dialled.address,
        ...(error !== undefined ? { error } : {}),
      }),
    );
  });
}

/**
 * Tells the client the tunnel is up and relays bytes both ways (`head`, what the client sent
 * after its CONNECT head, first). Either side closing fully, failing, or idle for `idleMs`
 * ends both; `ended` runs once both sides have closed, with the first thing that went wrong.
 */
function splice(client: net.Socket, upstream: net.Socket, head: Buffer, idleMs: number, ended: (error: string | undefined) => void): void {
  let error: string | undefined;
  let open = 2;
  const closed = () => {
    open -= 1;
    if (open === 0) ended(error);
  };
  upstream.on('close', closed);
  client.on('close', closed);
  upstream.on('error', (err: NodeJS.ErrnoException) => {
    error ??= `upstream: ${err.code ?? err.message}`;
    client.destroy();
  });
  client.on('error', (err: NodeJS.ErrnoException) => {
    error ??= `client: ${err.code ?? err.message}`;
    upstream.destroy();
  });
  // Either side closing fully ends the tunnel; a half-close is passed on by pipe.
  upstream.on('close', () => client.destroy());
  client.on('close', () => upstream.destroy());
  const idle = () => {
    error ??= 'idle timeout';
    client.destroy();
    upstream.destroy();
  };
  client.setTimeout(idleMs, idle);
  upstream.setTimeout(idleMs, idle);
  client.write('HTTP/1.1 200 Connection Established\r\n\r\n');
  if (head.length > 0) upstream.write(head);
  client.pipe(upstream);
  upstream.pipe(client);
  client.resume();
}
