/**
 * The upstream of bench/git-gate/run.ts, forked so it has its own process and event loop as a
 * real git host would: `git http-backend` behind a Node HTTP server on 127.0.0.1 (the gate's
 * own serveCgi, as the loopback test's upstream), serving the bare repositories under ROOT.
 * With a TOKEN it wants HTTP Basic `x-access-token:TOKEN` and answers 401 with a Basic
 * challenge otherwise, as a hosting service does for a private repository.
 *
 *   upstream.ts ROOT [TOKEN]
 *
 * Tells the parent { type: 'listening', port } once listening, and answers its { type: 'stats' }
 * with the requests it has served so far (all, and those answered 401).
 * Listens on 127.0.0.1 only.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { serveCgi } from '../../sidecars/git-gate/cgi.js';

const [root, token] = process.argv.slice(2);
if (!root) throw new Error('usage: upstream.ts ROOT [TOKEN]');
const expected = token ? `Basic ${Buffer.from(`x-access-token:${token}`).toString('base64')}` : undefined;
let requests = 0;
let challenged = 0;

const server = createServer((req, res) => {
  requests += 1;
  if (expected && req.headers.authorization !== expected) {
    challenged += 1;
    req.resume();
    res.writeHead(401, {
      'www-authenticate': 'Basic realm="bench"',
      'content-length': '0',
    });
    res.end();
    return;
  }
  const url = new URL(req.url ?? '/', 'http://upstream');
  void serveCgi(req, res, {
    projectRoot: root,
    pathInfo: url.pathname,
    query: url.search.slice(1),
    env: {
      PATH: process.env.PATH,
      HOME: process.env.HOME,
      GIT_CONFIG_NOSYSTEM: '1',
    },
  });
});
server.listen(0, '127.0.0.1', () => {
  process.send?.({
    type: 'listening',
    port: (server.address() as AddressInfo).port,
  });
});
process.on('message', (m: { type?: string }) => {
  if (m.type === 'stats') process.send?.({ type: 'stats', requests, challenged });
});
process.on('disconnect', () => process.exit(0));
