import { readFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { auditLine } from './audit.js';
import { createCredProxy } from './proxy.js';
import { parseRoutes, type Route } from './routes.js';
import { TokenStore } from './tokens.js';

/**
 * The cred-proxy sidecar: owns every real API token of the bottle. The agent calls
 * http://cred-proxy:9099/<route path>/... with a worthless placeholder; this forwards to the
 * route's fixed upstream with the real token injected (see proxy.ts for the rules).
 * Runs on Debian's Node 18 inside the sidecar image; Node built-ins only.
 *
 * env:
 *   BOTTLE_CRED_ROUTES       the routes file (default /run/bottle/cred-proxy/routes.json):
 *                            {"routes": [{"path", "upstream", "inject": {"header", "format"},
 *                            "roles", "token_file", "ca_file"?}]}; read once at start
 *   BOTTLE_SIDECAR_PORT      port to listen on (default 9099); GET /healthz answers there too
 *   BOTTLE_CRED_PLACEHOLDER  the placeholder the agent holds (optional, 8+ characters): never
 *                            forwarded (a header carrying it is dropped, a request target
 *                            carrying it is refused)
 *   BOTTLE_RUN               the run id, stamped on every audit line when set
 *
 * Each token_file holds one secret (trailing newline trimmed). It is re-read when it changes
 * (fs.watch on its folder, plus a poll every 500 ms), so a rotated token is used by the next
 * request without a restart; replace it by renaming a new file into place.
 *
 * stdout: `ready` once listening, then one JSON audit line per request (see audit.ts).
 * stderr: diagnostics. Neither ever holds a token; a token appears only as its fingerprint
 * (the first 8 hex digits of its sha256).
 *
 * Fails closed: an unreadable or invalid routes file, token file or CA file, a bad port or a
 * bad placeholder exits non-zero before listening (1: a file cannot be read or used,
 * 2: invalid configuration). Later, /healthz answers 503 and the route's requests 503 while
 * a token file cannot be read.
 */

const env = process.env;
const die = (message: string, code = 1): never => {
  process.stderr.write(`cred-proxy: ${message}\n`);
  process.exit(code);
};

const portText = env.BOTTLE_SIDECAR_PORT ?? '9099';
const port = /^\d+$/.test(portText) && Number(portText) >= 1 && Number(portText) <= 65535 ? Number(portText) : die(`BOTTLE_SIDECAR_PORT must be a port number, got '${portText}'`, 2);
const routesPath = env.BOTTLE_CRED_ROUTES || '/run/bottle/cred-proxy/routes.json';
const placeholder = env.BOTTLE_CRED_PLACEHOLDER || undefined;
if (placeholder !== undefined && (placeholder.length < 8 || !/^[\x21-\x7e]+$/.test(placeholder))) {
  die('BOTTLE_CRED_PLACEHOLDER must be at least 8 printable characters without spaces', 2);
}
const run = env.BOTTLE_RUN || undefined;

let routesText = '';
try {
  routesText = readFileSync(routesPath, 'utf8');
} catch (err) {
  die(`cannot read the routes file ${routesPath} (${(err as NodeJS.ErrnoException).code ?? 'error'}); refusing to start without routes`);
}
const parsed = parseRoutes(routesText, dirname(routesPath));
if (!parsed.ok) die(`invalid routes file ${routesPath}:\n  ${parsed.errors.join('\n  ')}`, 2);
const routes = (parsed as { ok: true; routes: Route[] }).routes;
if (routes.length === 0) die(`the routes file ${routesPath} declares no route`, 2);

const routesOf = (file: string) =>
  routes
    .filter((r) => r.tokenFile === file)
    .map((r) => r.path)
    .join(', ');
const tokens = new TokenStore(
  routes.map((r) => r.tokenFile),
  {
    onChange: (file, fp) => process.stderr.write(`cred-proxy: token for ${routesOf(file)} reloaded (fingerprint ${fp})\n`),
    onError: (file, message) => process.stderr.write(`cred-proxy: token for ${routesOf(file)} unavailable: ${message}; its requests get 503 until it is readable\n`),
  },
);
const problems = tokens.problems();
if (problems.length > 0) {
  tokens.close();
  die(`refusing to start without every token:\n  ${problems.map((p) => `route ${routesOf(p.file)}: ${p.error}`).join('\n  ')}`);
}

let proxy: ReturnType<typeof createCredProxy>;
try {
  proxy = createCredProxy({
    routes,
    tokens,
    ...(placeholder !== undefined ? { placeholder } : {}),
    audit: (record) => void process.stdout.write(auditLine(run === undefined ? record : { ...record, run })),
    log: (message) => void process.stderr.write(`${message}\n`),
  });
} catch (err) {
  // A CA bundle that cannot be read or holds no certificate.
  const e = err as NodeJS.ErrnoException;
  die(`cannot load an upstream CA bundle: ${e.code ? `${e.path ?? ''} (${e.code})` : e.message}`);
}

proxy!.on('error', (err) => die(`cannot listen on port ${port}: ${err.message}`));
proxy!.listen(port, () => {
  for (const r of routes) {
    const fp = tokens.get(r.tokenFile);
    process.stderr.write(`cred-proxy: route ${r.path} -> ${r.upstream.origin}${r.upstream.basePath} (${r.inject.header}, token ${fp.ok ? fp.fp : '?'})\n`);
  }
  process.stderr.write(`cred-proxy: listening on ${port}, ${routes.length} route(s) from ${routesPath}\n`);
  process.stdout.write('ready\n');
});

// PID 1 in a container gets no default signal handling: without this, `docker stop` waits out its timeout.
for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.on(signal, () => {
    tokens.close();
    proxy.close(() => process.exit(0));
    proxy.closeAllConnections?.();
    setTimeout(() => process.exit(0), 1000).unref();
  });
}
