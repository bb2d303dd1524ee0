import { readFileSync } from 'node:fs';
import { auditBudgetFromEnv } from '../common/audit-budget.js';
import { openAuditLog } from './audit.js';
import { watchAllowlistFile } from './allowlist-file.js';
import { allowlistLines } from './policy.js';
import { addressPolicyFromEnv } from '../common/address-policy.js';
import { createEgressProxy } from './proxy.js';
import { parseCanary, parseSecretHashes } from './secrets.js';
import { dieAs, exitOnStopSignals, sidecarPort } from '../common/process.js';

/**
 * The egress sidecar: an allowlist forward proxy, the agent's only way out of its bottle.
 * Runs on Debian's Node 18 inside the sidecar image; Node built-ins only.
 *
 * env:
 *   BOTTLE_SIDECAR_PORT      port to listen on (default 3128); GET /healthz answers there too
 *   BOTTLE_EGRESS_ALLOWLIST  the allowlist file, one entry a line (default /run/bottle/egress/allowlist);
 *                            re-read when it changes (replace it by renaming a new file into place)
 *   BOTTLE_EGRESS_AUDIT      file the audit lines are appended to (default: stdout)
 *   BOTTLE_ADDRESS_DENY      comma-separated addresses or CIDR blocks never dialled (the bottle networks'
 *                            gateways, the Docker host's addresses); BOTTLE_EGRESS_DENY, the older name, too
 *   BOTTLE_PRIVATE_NETWORKS  comma-separated blocks of the manifest's private_networks: the non-global
 *                            addresses that may be dialled (see sidecars/common/address-policy.ts)
 *   BOTTLE_BOTTLE            the bottle's name in the manifest, for the "add it to bottles.<bottle>.egress.allow" hint
 *   BOTTLE_RUN               the run id, stamped on every audit line when set
 *   BOTTLE_AUDIT_LIMITS      `burst,perSecond,maxBytes,summaryMs` of the audit budget (common/audit-budget.ts)
 *   BOTTLE_EGRESS_CANARY     the placeholder token the agent holds (optional; 8+ printable ASCII characters)
 *   BOTTLE_EGRESS_SECRET_HASHES  the real tokens as comma-separated `<length>:<sha256 hex>` (optional;
 *                            length in bytes, 8..8192), so this sidecar never holds a token but knows one
 *                            when it sees it
 *   BOTTLE_EGRESS_SECRET_HASHES_FILE  a file of more such hashes, one a line, re-read when it changes
 *                            (the engine adds a rotated token's and a route approved at run time's)
 *
 * A request in which the placeholder or a real token is seen (target, headers, plain-HTTP body;
 * not a CONNECT tunnel's payload) is refused with 403 and audited with `alarm` (see secrets.ts).
 *
 * Fails closed: an unreadable allowlist at start, an unreadable deny list, canary, hash list or
 * audit file, or a bad port exits non-zero; /healthz answers 503 while the allowlist file cannot
 * be read. Neither the canary nor a hash entry is ever printed.
 */

const env = process.env;
const die = dieAs('egress');

const port = sidecarPort(env, '3128', die);
const allowlistPath = env.BOTTLE_EGRESS_ALLOWLIST || '/run/bottle/egress/allowlist';
const bottle = env.BOTTLE_BOTTLE || undefined;

const addresses = addressPolicyFromEnv(env, ['BOTTLE_ADDRESS_DENY', 'BOTTLE_EGRESS_DENY']);
if (!addresses.ok) die(addresses.message, 2);
const addressPolicy = (addresses as Extract<typeof addresses, { ok: true }>).policy;

const canary = parseCanary(env.BOTTLE_EGRESS_CANARY);
if (!canary.ok) die(`BOTTLE_EGRESS_CANARY: ${canary.message}`, 2);
const secretHashes = parseSecretHashes(env.BOTTLE_EGRESS_SECRET_HASHES);
if (secretHashes.errors.length > 0) die(`BOTTLE_EGRESS_SECRET_HASHES: ${secretHashes.errors.join('; ')}`, 2);
const secrets = { canary: canary.ok ? canary.value : undefined, hashes: secretHashes.hashes };
// More token hashes, from a file the engine rewrites while the bottle runs (a rotated token, a
// route approved at run time): the canary looks for the env's and the file's together.
const hashesPath = env.BOTTLE_EGRESS_SECRET_HASHES_FILE || undefined;
const hashesFrom = (text: string) => {
  const parsed = parseSecretHashes(allowlistLines(text).join(','));
  for (const e of parsed.errors) process.stderr.write(`egress: ${hashesPath}: ${e}; that line is ignored\n`);
  return parsed.hashes;
};
let hashesText = '';
if (hashesPath) {
  try {
    hashesText = readFileSync(hashesPath, 'utf8');
  } catch {
    // Not there yet: the engine puts it in later; the env's hashes are in force meanwhile.
  }
}
const withFile = (text: string) => ({ ...secrets, hashes: [...secrets.hashes, ...hashesFrom(text)] });

let initialText: string;
try {
  initialText = readFileSync(allowlistPath, 'utf8');
} catch (err) {
  die(`cannot read the allowlist ${allowlistPath}: ${(err as Error).message}; refusing to start without a policy`);
}

let audit: ReturnType<typeof openAuditLog>;
try {
  audit = openAuditLog(env.BOTTLE_EGRESS_AUDIT || undefined, { ...(env.BOTTLE_RUN ? { run: env.BOTTLE_RUN } : {}), budget: auditBudgetFromEnv(env.BOTTLE_AUDIT_LIMITS) });
} catch (err) {
  die(`cannot open the audit log ${env.BOTTLE_EGRESS_AUDIT}: ${(err as Error).message}`);
}

let readError: string | undefined;
const reportErrors = (errors: readonly { entry: string; message: string }[]) => {
  for (const e of errors) process.stderr.write(`egress: allowlist entry "${e.entry}" ignored: ${e.message}\n`);
};

const proxy = createEgressProxy({
  allowlist: allowlistLines(initialText!),
  deny: addressPolicy.deny,
  privateNetworks: addressPolicy.allow,
  secrets: withFile(hashesText),
  ...(bottle !== undefined ? { bottle } : {}),
  audit: (record) => audit.write(record),
  log: (message) => process.stderr.write(`${message}\n`),
  health: () =>
    readError === undefined
      ? { ok: true, message: `ok: ${proxy.policy.rules.length} allowlist entries` }
      : { ok: false, message: `cannot read the allowlist ${allowlistPath}: ${readError}` },
});
reportErrors(proxy.policy.errors);

const watcher = watchAllowlistFile(
  allowlistPath,
  (entries) => {
    readError = undefined;
    const policy = proxy.setAllowlist(entries);
    reportErrors(policy.errors);
    process.stderr.write(`egress: allowlist reloaded: ${policy.rules.length} entries\n`);
  },
  {
    initialText: initialText!,
    onRecover: () => {
      readError = undefined;
      process.stderr.write(`egress: the allowlist ${allowlistPath} is readable again\n`);
    },
    onError: (err) => {
      // The last good policy stays in force (an allowlist only ever grants); health says so.
      readError = err.message;
      process.stderr.write(`egress: cannot read the allowlist ${allowlistPath}: ${err.message}; keeping the previous one\n`);
    },
  },
);

const hashesWatcher = hashesPath
  ? watchAllowlistFile(
      hashesPath,
      () => {
        // Read whole again: the watcher hands over lines normalised for an allowlist.
        let text = '';
        try {
          text = readFileSync(hashesPath, 'utf8');
        } catch {
          return;
        }
        const config = withFile(text);
        proxy.setSecrets(config);
        process.stderr.write(`egress: canary reloaded: ${config.hashes.length} token hash(es)\n`);
      },
      { initialText: hashesText, onError: () => undefined },
    )
  : undefined;

proxy.on('error', (err) => die(`cannot listen on port ${port}: ${err.message}`));
proxy.listen(port, () => {
  process.stderr.write(`egress: listening on ${port}, ${proxy.policy.rules.length} allowlist entries from ${allowlistPath}\n`);
  const watched = [secrets.canary !== undefined ? 'the placeholder' : '', secrets.hashes.length > 0 ? `${secrets.hashes.length} token hash(es)` : ''].filter((w) => w !== '');
  process.stderr.write(`egress: canary: ${watched.length > 0 ? watched.join(' and ') : 'nothing to look for'}\n`);
  process.stdout.write('ready\n');
});

exitOnStopSignals((done) => {
  watcher.close();
  hashesWatcher?.close();
  proxy.close(() => {
    audit.close();
    done();
  });
  proxy.closeAllConnections?.();
});
