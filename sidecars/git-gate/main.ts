import { auditBudgetFromEnv, createAuditBudget } from '../common/audit-budget.js';
import { readFileSync } from 'node:fs';
import { type GateRemote, parseRemotes, shQuote } from './config.js';
import { runPreReceive } from './hook.js';
import { initMirrors, RemoteLocks, refreshMirror } from './mirror.js';
import { createGateServer } from './server.js';
import { addressPolicyFromEnv } from '../common/address-policy.js';
import { dieAs, exitOnStopSignals, sidecarPort } from '../common/process.js';

/**
 * The git gate sidecar: the agent's only way to the declared git remotes. It serves each
 * remote as http://git-gate:8418/NAME.git (git's smart HTTP, by `git http-backend`) from a
 * bare mirror it refreshes from the upstream with the remote's key or token, and forwards a
 * push upstream only when every ref of it is allowed (see policy.ts, hook.ts, server.ts).
 * Runs on Debian's Node 18 and git inside the sidecar image; Node built-ins only.
 *
 * `git-gate.mjs pre-receive` is the mirrors' hook (hook.ts), run by git itself.
 *
 * env:
 *   BOTTLE_SIDECAR_PORT     port to listen on (default 8418); GET /healthz answers there too
 *   BOTTLE_GIT_GATE_CONFIG  the remotes file (default /run/bottle/git-gate/remotes.json):
 *                           {"remotes": [{"name", "upstream", "push", "key_file"?, "known_hosts_file"?,
 *                           "token_file"?, "ca_file"?}]}; read once at start
 *   BOTTLE_GIT_GATE_STATE   folder of the mirrors (default $HOME/git-gate)
 *   BOTTLE_RUN              the run id, stamped on every audit line when set
 *   BOTTLE_BOTTLE           the bottle's name in the manifest, for the private_networks hint
 *   BOTTLE_ADDRESS_DENY, BOTTLE_PRIVATE_NETWORKS  the address policy (sidecars/common/address-policy.ts):
 *                           an upstream's name is resolved by the gate, every address checked, and
 *                           git pinned to them (curl's resolve list, ssh's HostName); redirects are
 *                           not followed
 *
 * Start: the config is read and every mirror created (empty) with its hook before /healthz
 * answers 200; a config that cannot be read or used exits non-zero (1: unreadable, 2: invalid).
 * The upstreams are not needed to start: each is fetched once in the background, and again
 * before every fetch and push, which fail with the upstream's error while it cannot be reached.
 *
 * stdout: `ready` once listening, then one JSON audit line per fetch and per pushed ref
 * (audit.ts). stderr: diagnostics. Neither ever holds a key or a token.
 */

if (process.argv[2] === 'pre-receive') {
  runPreReceive().then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      process.stderr.write(`git-gate: the push hook failed: ${(err as Error).message}\n`);
      process.exitCode = 1;
    },
  );
} else {
  main();
}

function main() {
  const env = process.env;
  const die = dieAs('git-gate');
  const port = sidecarPort(env, '8418', die);
  const configFile = env.BOTTLE_GIT_GATE_CONFIG || '/run/bottle/git-gate/remotes.json';
  const state = env.BOTTLE_GIT_GATE_STATE || `${env.HOME ?? '/tmp'}/git-gate`;
  const run = env.BOTTLE_RUN || undefined;
  const addresses = addressPolicyFromEnv(env);
  if (!addresses.ok) die(addresses.message, 2);
  const dialling = { policy: (addresses as Extract<typeof addresses, { ok: true }>).policy, ...(env.BOTTLE_BOTTLE ? { bottle: env.BOTTLE_BOTTLE } : {}) };

  let text = '';
  try {
    text = readFileSync(configFile, 'utf8');
  } catch (err) {
    die(`cannot read the remotes file ${configFile} (${(err as NodeJS.ErrnoException).code ?? 'error'}); refusing to start without a policy`);
  }
  const parsed = parseRemotes(text);
  if (!parsed.ok) die(`invalid remotes file ${configFile}:\n  ${parsed.errors.join('\n  ')}`, 2);
  const remotes = (parsed as { ok: true; remotes: GateRemote[] }).remotes;
  for (const r of remotes) {
    for (const file of [r.keyFile, r.knownHostsFile, r.tokenFile, r.caFile]) {
      if (file === undefined) continue;
      try {
        readFileSync(file);
      } catch (err) {
        die(`remote ${r.name}: cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
      }
    }
  }

  let ready = false;
  const locks = new RemoteLocks();
  // Past the budget a line is counted, not written; the counts come out as a summary line.
  const budget = createAuditBudget({
    ...auditBudgetFromEnv(env.BOTTLE_AUDIT_LIMITS),
    source: 'git-gate',
    write: (text) => void process.stdout.write(text),
    ...(run ? { run } : {}),
  });
  const log = (message: string) => void process.stderr.write(`git-gate: ${message}\n`);
  const server = createGateServer({
    state,
    configFile,
    remotes,
    ...(run ? { run } : {}),
    audit: (line) => void budget.offer(line, /"decision":"deny"/.test(line) ? 'deny' : 'allow'),
    log,
    ready: () => ready,
    locks,
    dialling,
  });
  server.on('error', (err) => die(`cannot listen on port ${port}: ${err.message}`));

  // The hook runs this very program with the same Node (and loader flags, under tests).
  const hookCommand = [process.execPath, ...process.execArgv, process.argv[1] ?? ''].map(shQuote).join(' ');
  initMirrors({ dir: state, remotes }, hookCommand).then(
    () => {
      ready = true;
      server.listen(port, () => {
        for (const r of remotes) log(`remote ${r.name} -> ${r.upstream} (push: ${r.push.length > 0 ? r.push.join(', ') : 'read-only'})`);
        log(`listening on ${port}, ${remotes.length} remote(s) from ${configFile}`);
        process.stdout.write('ready\n');
      });
      // A first look at each upstream, so the first fetch is quick; failures only say so.
      for (const r of remotes) {
        locks.run(r.name, () => refreshMirror(state, r, dialling)).then(
          () => log(`remote ${r.name}: mirror refreshed from the upstream`),
          (err: unknown) => log(`remote ${r.name}: upstream not reachable yet (${(err as Error).message}); it is tried again before every fetch and push`),
        );
      }
    },
    (err: unknown) => die(`cannot create the mirrors in ${state}: ${(err as Error).message}`),
  );

  exitOnStopSignals((done) => {
    server.close(done);
    server.closeAllConnections?.();
  });
}
