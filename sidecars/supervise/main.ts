import { auditBudgetFromEnv, createAuditBudget } from '../common/audit-budget.js';
import { createSuperviseServer, lineText } from './server.js';
import { dieAs, exitOnStopSignals, sidecarPort } from '../common/process.js';

/**
 * The supervise sidecar: where the agent asks for more (an allowlist entry, a new Dockerfile,
 * a cred-proxy route) and a human decides on the host. It never changes the bottle itself: it
 * validates and queues proposals, tells the host through stdout, and reports the host's
 * decisions back to the agent. Runs on Debian's Node 18 inside the sidecar image (zod and the
 * manifest's field rules are bundled in). API and file protocol: see README.md beside this file.
 *
 * env:
 *   BOTTLE_SIDECAR_PORT    port to listen on (default 9100)
 *   BOTTLE_SUPERVISE_DIR   the folder the host puts current.json and decisions.json into
 *                          (default /run/bottle/supervise); accepted proposals are kept in its
 *                          proposals/ folder when that can be created, and reloaded on start
 *   BOTTLE_IDENTITY        the bottle's identity (informational, in the start-up message)
 *   BOTTLE_RUN             the run id (informational, in the start-up message)
 *
 * stdout: one JSON document per line, for the host, and nothing else:
 *   {"source":"supervise","type":"proposal","at":ISO,"proposal":{"id","kind","reason","change"}}
 *   once per accepted proposal, and
 *   {"source":"supervise","type":"rejected","at":ISO,"status":400|429,"error":TEXT}
 *   once per refused one (never anything the agent wrote).
 * stderr: diagnostics for a human.
 *
 * Exits 2 on a bad port and 1 when it cannot listen. A missing current.json is not fatal:
 * /healthz answers 503 until the host has put one there.
 */

const env = process.env;
const die = dieAs('supervise');
const port = sidecarPort(env, '9100', die);
const dir = (env.BOTTLE_SUPERVISE_DIR || '/run/bottle/supervise').replace(/\/+$/, '') || '/';
const identity = env.BOTTLE_IDENTITY || undefined;
const run = env.BOTTLE_RUN || undefined;

// BOTTLE_SUPERVISE_LIMITS=`pending,perMinute` from the bottle's resources.proposals.
const [pendingLimit, perMinute] = (env.BOTTLE_SUPERVISE_LIMITS ?? '').split(',').map((p) => (/^\d+$/.test(p.trim()) && Number(p) > 0 ? Number(p) : undefined));
// Accepted proposals are always written (the host must see each; they are bounded by the
// pending and rate bounds); refusals past the audit budget are counted in a summary line.
const budget = createAuditBudget({
  ...auditBudgetFromEnv(env.BOTTLE_AUDIT_LIMITS),
  source: 'supervise',
  write: (text) => void process.stdout.write(text),
  ...(run !== undefined ? { run } : {}),
});
const server = createSuperviseServer({
  dir,
  ...(pendingLimit !== undefined ? { pendingLimit } : {}),
  ...(perMinute !== undefined ? { perMinute } : {}),
  emit: (line) => {
    if (line.type === 'proposal') process.stdout.write(lineText(line));
    else budget.offer(lineText(line), `${line.type}:${line.status}`);
  },
  log: (message) => void process.stderr.write(`${message}\n`),
});

server.on('error', (err) => die(`cannot listen on port ${port}: ${err.message}`));
server.listen(port, () => {
  const who = [identity ? `bottle ${identity}` : '', run ? `run ${run}` : ''].filter((w) => w !== '').join(', ');
  const kept = server.store.persistent ? `${dir}/proposals` : 'memory only';
  process.stderr.write(
    `supervise: listening on ${port}${who ? ` for ${who}` : ''}; files from ${dir}; ${server.store.size} proposal(s) known, kept in ${kept}; ` +
      `${server.current.last() === undefined ? 'waiting for current.json' : 'current.json read'}\n`,
  );
});

exitOnStopSignals((done) => {
  server.close(done);
  server.closeAllConnections?.();
});
