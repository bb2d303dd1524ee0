import { auditBudgetFromEnv, createAuditBudget } from '../common/audit-budget.js';
import { readFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { auditLine, type RoutesRecord, routesLine } from './audit.js';
import { createCredProxy } from './proxy.js';
import { redactText } from './redact.js';
import { RoutesReloader } from './reload.js';
import { parseRoutes, type Route } from './routes.js';
import { TokenStore } from './tokens.js';
import { addressPolicyFromEnv } from '../common/address-policy.js';
import { dieAs, exitOnStopSignals, sidecarPort } from '../common/process.js';
import { tokenProblem } from '../../config/token-rule.js';

/**
 * The cred-proxy sidecar: owns every real API token of the bottle. The agent calls
 * http://cred-proxy:9099/<route path>/... with a worthless placeholder; this forwards to the
 * route's fixed upstream with the real token injected (see proxy.ts for the rules).
 * Runs on Debian's Node 18 inside the sidecar image; Node built-ins only.
 *
 * env:
 *   BOTTLE_CRED_ROUTES       the routes file (default /run/bottle/cred-proxy/routes.json):
 *                            {"routes": [{"path", "upstream", "inject": {"header", "format"},
 *                            "roles", "token_file", "ca_file"?}]}; re-read when it changes
 *   BOTTLE_SIDECAR_PORT      port to listen on (default 9099); GET /healthz answers there too
 *   BOTTLE_CRED_PLACEHOLDER  the placeholder the agent holds (optional, 8+ characters): never
 *                            forwarded (a header carrying it is dropped, a request target
 *                            carrying it is refused)
 *   BOTTLE_RUN               the run id, stamped on every audit line when set
 *   BOTTLE_BOTTLE            the bottle's name in the manifest, for the private_networks hint
 *   BOTTLE_ADDRESS_DENY, BOTTLE_PRIVATE_NETWORKS  the address policy (sidecars/common/address-policy.ts):
 *                            every upstream address is checked after the proxy's own lookup, and a
 *                            refused one answers 403 naming its class and the key that would allow it
 *
 * Each token_file holds one secret (trailing newline trimmed). It is re-read when it changes
 * (fs.watch on its folder, plus a poll every 500 ms), so a rotated token is used by the next
 * request without a restart; replace it by renaming a new file into place.
 *
 * The routes file is watched the same way (see reload.ts): when the engine adds a route to a
 * running bottle it writes the route's token file, then a whole new routes file. The new
 * routes are checked as at start, and every token file new to the proxy must hold a token;
 * then they are put in force in one swap, without a restart: open connections stay, a request
 * in flight keeps the route it matched, the next request sees the new routes (a route gone
 * from the file answers 404 like any unknown path). A bad routes file changes nothing: the
 * routes in force stay, and the rejection is reported.
 *
 * stdout: `ready` once listening, then one JSON audit line per request (see audit.ts), and one
 * per change of the routes file: {"type":"routes","decision":"reloaded","routes":[paths],"at"}
 * or {"type":"routes","decision":"rejected","error","at"}.
 * stderr: diagnostics. Neither ever holds a token; a token appears only as its fingerprint
 * (the first 8 hex digits of its sha256).
 *
 * Fails closed: an unreadable or invalid routes file, token file or CA file, a bad port or a
 * bad placeholder exits non-zero before listening (1: a file cannot be read or used,
 * 2: invalid configuration). Later, /healthz answers 503 and the route's requests 503 while
 * a token file of a route in force cannot be read.
 */

const env = process.env;
const die = dieAs('cred-proxy');
const port = sidecarPort(env, '9099', die);
const routesPath = env.BOTTLE_CRED_ROUTES || '/run/bottle/cred-proxy/routes.json';
const placeholder = env.BOTTLE_CRED_PLACEHOLDER || undefined;
if (placeholder !== undefined && tokenProblem(placeholder) !== undefined) {
  die('BOTTLE_CRED_PLACEHOLDER must be at least 8 printable characters without spaces', 2);
}
const run = env.BOTTLE_RUN || undefined;
const addresses = addressPolicyFromEnv(env);
if (!addresses.ok) die(addresses.message, 2);
const addressPolicy = (addresses as Extract<typeof addresses, { ok: true }>).policy;

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

let proxy: ReturnType<typeof createCredProxy> | undefined;
// The routes in force: those of the file at start until a reload replaces them.
const routesOf = (file: string) =>
  (proxy?.routes() ?? routes)
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

// Past the budget a request line is counted, not written; the counts come out as a summary line.
const budget = createAuditBudget({
  ...auditBudgetFromEnv(env.BOTTLE_AUDIT_LIMITS),
  source: 'cred-proxy',
  write: (text) => void process.stdout.write(text),
  ...(run !== undefined ? { run } : {}),
});

try {
  proxy = createCredProxy({
    routes,
    tokens,
    ...(placeholder !== undefined ? { placeholder } : {}),
    addressPolicy,
    ...(env.BOTTLE_BOTTLE ? { bottle: env.BOTTLE_BOTTLE } : {}),
    audit: (record) => void budget.offer(auditLine(run === undefined ? record : { ...record, run }), record.alarm !== undefined ? 'alarm' : record.type),
    log: (message) => void process.stderr.write(`${message}\n`),
  });
} catch (err) {
  // A CA bundle that cannot be read or holds no certificate.
  const e = err as NodeJS.ErrnoException;
  die(`cannot load an upstream CA bundle: ${e.code ? `${e.path ?? ''} (${e.code})` : e.message}`);
}

const server = proxy!;
const describeRoute = (r: Route) => {
  const fp = tokens.get(r.tokenFile);
  return `route ${r.path} -> ${r.upstream.origin}${r.upstream.basePath} (${r.inject.header}, token ${fp.ok ? fp.fp : '?'})`;
};
const routesAudit = (record: RoutesRecord) => void process.stdout.write(routesLine(run === undefined ? record : { ...record, run }));

let reloader: RoutesReloader | undefined;
server.on('error', (err) => die(`cannot listen on port ${port}: ${err.message}`));
server.listen(port, () => {
  for (const r of routes) process.stderr.write(`cred-proxy: ${describeRoute(r)}\n`);
  process.stderr.write(`cred-proxy: listening on ${port}, ${routes.length} route(s) from ${routesPath}\n`);
  process.stdout.write('ready\n');
  reloader = new RoutesReloader({
    file: routesPath,
    initialText: routesText,
    proxy: server,
    tokens,
    onReload: (now, { added, removed }) => {
      for (const r of added) process.stderr.write(`cred-proxy: added ${describeRoute(r)}\n`);
      for (const r of removed) process.stderr.write(`cred-proxy: removed route ${r.path}\n`);
      process.stderr.write(`cred-proxy: routes reloaded from ${routesPath}: ${now.length} route(s)\n`);
      routesAudit({ type: 'routes', decision: 'reloaded', routes: now.map((r) => r.path), at: Date.now() });
    },
    onReject: (error) => {
      const safe = redactText(error, tokens.secrets());
      process.stderr.write(`cred-proxy: the changed routes file is not used, the routes in force stay: ${safe}\n`);
      routesAudit({ type: 'routes', decision: 'rejected', error: safe, at: Date.now() });
    },
  });
});

exitOnStopSignals((done) => {
  reloader?.close();
  tokens.close();
  server.close(done);
  server.closeAllConnections?.();
});
