import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { join } from 'node:path';
import { type GateAuditRecord, gateAuditLine } from './audit.js';
import { errorAdvertisement, serveCgi } from './cgi.js';
import type { GateRemote } from './config.js';
import { type Dialling, mirrorsDir, RemoteLocks, refreshMirror, UpstreamRefused } from './mirror.js';

/**
 * The git gate's HTTP side: git's smart HTTP protocol for each declared remote at
 * `/NAME.git`, served by `git http-backend` from the remote's mirror, and `GET /healthz`.
 * Only the smart protocol's four endpoints exist; anything else is 404 (no dumb protocol,
 * no listing, no other repository).
 *
 * - `GET /NAME.git/info/refs?service=git-upload-pack|git-receive-pack`: the mirror is first
 *   refreshed from the upstream (one fetch audit line for upload-pack); an upstream that
 *   cannot be read fails the request with git's `remote error:` and the reason.
 * - `POST /NAME.git/git-upload-pack`: served from the mirror as just refreshed.
 * - `POST /NAME.git/git-receive-pack`: receive-pack runs the mirror's pre-receive hook, which
 *   decides and forwards the push (hook.ts); its audit lines are printed here afterwards.
 * A read-only remote (`push: []`) refuses receive-pack before anything runs.
 */

export interface GateOptions {
  state: string;
  configFile: string;
  remotes: GateRemote[];
  run?: string;
  /** Where audit lines go (stdout in the container). */
  audit: (line: string) => void;
  log: (message: string) => void;
  /** Whether /healthz answers 200 yet. */
  ready: () => boolean;
  /** Shared with whoever else refreshes the mirrors (the first look at start). */
  locks?: RemoteLocks;
  /** How upstream addresses are judged (the shared address policy). */
  dialling: Dialling;
}

/** The gate's own settings its hook needs to judge upstream addresses as the gate does. */
const ADDRESS_ENV = ['BOTTLE_ADDRESS_DENY', 'BOTTLE_PRIVATE_NETWORKS', 'BOTTLE_BOTTLE', 'BOTTLE_TEST_DIAL_LOOPBACK'] as const;

const ROUTE = /^\/([A-Za-z0-9._-]+)\.git\/(info\/refs|git-upload-pack|git-receive-pack)$/;
const SERVICES = new Set(['git-upload-pack', 'git-receive-pack']);

export function createGateServer(opts: GateOptions): Server {
  const remotes = new Map(opts.remotes.map((r) => [r.name, r]));
  const locks = opts.locks ?? new RemoteLocks();
  const audit = (r: Omit<GateAuditRecord, 'at'>) => opts.audit(gateAuditLine({ at: Date.now(), ...r, ...(opts.run ? { run: opts.run } : {}) }));
  const refuse = (res: ServerResponse, status: number, message: string) => {
    res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8' });
    res.end(`git-gate: ${message}\n`);
  };
  const baseEnv = (remote: GateRemote) => ({
    PATH: process.env.PATH,
    HOME: process.env.HOME,
    LANG: 'C.UTF-8',
    BOTTLE_GIT_GATE_CONFIG: opts.configFile,
    BOTTLE_GIT_GATE_STATE: opts.state,
    BOTTLE_GIT_GATE_REMOTE: remote.name,
    ...(opts.run ? { BOTTLE_RUN: opts.run } : {}),
    // The hook forwards pushes upstream under the same address policy.
    ...Object.fromEntries(ADDRESS_ENV.filter((k) => process.env[k] !== undefined).map((k) => [k, process.env[k]])),
  });

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? '/', 'http://git-gate');
    if (url.pathname === '/healthz') {
      if (req.method !== 'GET') return refuse(res, 405, 'GET only');
      const ok = opts.ready();
      res.writeHead(ok ? 200 : 503, { 'content-type': 'text/plain' });
      res.end(ok ? 'ok' : 'starting');
      return;
    }
    const m = ROUTE.exec(url.pathname);
    if (!m) return refuse(res, 404, `not found: this gate serves http://git-gate:8418/NAME.git for the declared remotes (${[...remotes.keys()].join(', ') || 'none'})`);
    const [, name, endpoint] = m as unknown as [string, string, string];
    const service = endpoint === 'info/refs' ? (url.searchParams.get('service') ?? '') : endpoint;
    const type = service === 'git-receive-pack' ? 'push' : 'fetch';
    const remote = remotes.get(name);
    if (!remote) {
      audit({ type, remote: name, ref: null, old: null, new: null, decision: 'deny', reason: 'not a declared remote of this bottle' });
      return refuse(res, 404, `no remote '${name}' is declared for this bottle (declared: ${[...remotes.keys()].join(', ') || 'none'})`);
    }
    if (!SERVICES.has(service)) return refuse(res, 403, 'only git smart HTTP is served (git-upload-pack, git-receive-pack)');
    const expected = endpoint === 'info/refs' ? 'GET' : 'POST';
    if (req.method !== expected) return refuse(res, 405, `${expected} only`);
    if (service === 'git-receive-pack' && remote.push.length === 0) {
      audit({ type: 'push', remote: name, ref: null, old: null, new: null, decision: 'deny', reason: 'this remote is read-only (push: [])' });
      if (endpoint === 'info/refs') return errorAdvertisement(res, service, `git-gate: remote ${name} is read-only (push: [] in the manifest)`);
      return refuse(res, 403, `remote ${name} is read-only`);
    }
    const cgi = { projectRoot: mirrorsDir(opts.state), pathInfo: url.pathname, query: url.search.replace(/^\?/, ''), env: baseEnv(remote) };

    if (endpoint === 'info/refs') {
      try {
        await locks.run(name, () => refreshMirror(opts.state, remote, opts.dialling));
      } catch (err) {
        const reason = `cannot fetch ${name} from its upstream: ${(err as Error).message}`;
        const addressClass = err instanceof UpstreamRefused ? err.addressClass : undefined;
        audit({ type, remote: name, ref: null, old: null, new: null, decision: 'deny', reason, ...(addressClass ? { address_class: addressClass } : {}) });
        opts.log(reason);
        return errorAdvertisement(res, service, `git-gate: ${reason}`);
      }
      if (service === 'git-upload-pack') audit({ type: 'fetch', remote: name, ref: null, old: null, new: null, decision: 'allow', reason: 'refreshed from the upstream and served' });
      await serveCgi(req, res, cgi);
      return;
    }
    if (service === 'git-upload-pack') {
      await serveCgi(req, res, cgi);
      return;
    }
    // A push: one at a time per remote, its hook's audit lines collected from a file of its own.
    await locks.run(name, async () => {
      const dir = join(opts.state, 'audit');
      mkdirSync(dir, { recursive: true });
      const file = join(dir, `${Date.now()}-${randomBytes(6).toString('hex')}.jsonl`);
      try {
        await serveCgi(req, res, { ...cgi, env: { ...cgi.env, BOTTLE_GIT_GATE_AUDIT_FILE: file } });
      } finally {
        let lines = '';
        try {
          lines = readFileSync(file, 'utf8');
        } catch {
          lines = '';
        }
        for (const line of lines.split('\n')) if (line.trim()) opts.audit(`${line}\n`);
        rmSync(file, { force: true });
      }
    });
  };

  return createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      opts.log(`request ${req.method} ${req.url} failed: ${(err as Error).message}`);
      if (!res.headersSent) refuse(res, 500, 'internal error');
      else res.end();
    });
  });
}
