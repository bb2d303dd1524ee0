import { createServer } from 'node:http';

/**
 * Stand-in for a sidecar whose real program does not exist yet: it answers health
 * checks so a bottle can start, and refuses everything else, saying so.
 * Runs on Debian's Node 18 inside the sidecar image; Node built-ins only.
 *
 * env: BOTTLE_SIDECAR_PORT (required), BOTTLE_SIDECAR_ROLE (for messages).
 */

const role = process.env.BOTTLE_SIDECAR_ROLE ?? 'unknown';
const portText = process.env.BOTTLE_SIDECAR_PORT ?? '';
const port = Number(portText);
if (!/^\d+$/.test(portText) || port < 1 || port > 65535) {
  process.stderr.write(`placeholder sidecar (${role}): BOTTLE_SIDECAR_PORT must be a port number, got '${portText}'\n`);
  process.exit(2);
}

const server = createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/healthz') {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end('ok');
    return;
  }
  res.writeHead(503, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ error: 'not_implemented', role, message: `the ${role} sidecar is not implemented yet` }));
});

server.listen(port, () => {
  process.stdout.write('ready\n');
});

// PID 1 in a container gets no default signal handling: without this, `docker stop` waits out its timeout.
for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.on(signal, () => {
    server.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 1000).unref();
  });
}
