/**
 * Loopback fixtures for the supervise tests: a temp folder standing in for
 * /run/bottle/supervise, the host's files written into it, the server on 127.0.0.1 with every
 * line it emits collected, and a small HTTP client.
 */
import { mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach } from 'vitest';
import { createSuperviseServer, type SuperviseLine, type SuperviseServerOptions } from '../../../../sidecars/supervise/server.js';

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

export function tempDir(prefix = 'bottle-supervise-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

export const CURRENT = {
  dockerfile: 'FROM debian:bookworm\nRUN apt-get update\n',
  allowlist: ['api.anthropic.com', 'registry.npmjs.org'],
  routes: [{ path: '/anthropic', upstream: 'https://api.anthropic.com', inject: { header: 'x-api-key', format: '{token}' }, roles: ['anthropic-base-url'] }],
};

/** Writes a file the way the host's archive upload might: straight into place. */
export function writeHostFile(dir: string, name: string, content: unknown): void {
  writeFileSync(join(dir, name), typeof content === 'string' ? content : `${JSON.stringify(content)}\n`);
}

/** Writes a file by renaming a finished one into place. */
export function replaceHostFile(dir: string, name: string, content: unknown): void {
  const file = join(dir, name);
  writeFileSync(`${file}.new`, typeof content === 'string' ? content : JSON.stringify(content));
  renameSync(`${file}.new`, file);
}

export interface Supervise {
  port: number;
  dir: string;
  lines: SuperviseLine[];
  logs: string[];
  server: ReturnType<typeof createSuperviseServer>;
  /** Stops the server (as a container stop would); a new one can then start on the same dir. */
  close: () => Promise<void>;
}

/** The server on 127.0.0.1 with its files in `dir` (a new temp folder by default). */
export async function startSupervise(opts: Partial<SuperviseServerOptions> & { current?: unknown } = {}): Promise<Supervise> {
  const dir = opts.dir ?? tempDir();
  if (opts.current !== undefined) writeHostFile(dir, 'current.json', opts.current);
  const lines: SuperviseLine[] = [];
  const logs: string[] = [];
  const server = createSuperviseServer({ log: (m) => logs.push(m), ...opts, dir, emit: (l) => lines.push(l) });
  const sockets = new Set<net.Socket>();
  server.on('connection', (s: net.Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  let closed = false;
  const close = () => {
    if (closed) return Promise.resolve();
    closed = true;
    return new Promise<void>((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(() => resolve());
    });
  };
  cleanups.push(close);
  return { port: (server.address() as net.AddressInfo).port, dir, lines, logs, server, close };
}

export interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
  // biome-ignore lint/suspicious/noExplicitAny: test replies are read field by field
  json: any;
}

/** One request on its own connection, as the agent makes it. */
export function request(port: number, path: string, opts: { method?: string; body?: string | Buffer; headers?: Record<string, string> } = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path, method: opts.method ?? 'GET', headers: { host: 'supervise:9100', ...opts.headers }, agent: false });
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const body = Buffer.concat(chunks).toString();
        let json: unknown;
        try {
          json = JSON.parse(body);
        } catch {
          json = undefined;
        }
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body, json });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(opts.body);
  });
}

export const propose = (port: number, body: unknown) =>
  request(port, '/proposals', { method: 'POST', body: typeof body === 'string' ? body : JSON.stringify(body), headers: { 'content-type': 'application/json' } });

export { rawExchange, until } from '../loopback.js';
