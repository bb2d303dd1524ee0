/**
 * The accepted proposals: kept in memory and, when the folder can be written, one file each
 * (`<dir>/<id>.json`, written by renaming a finished file into place) so that a restarted
 * sidecar still answers for them. Only this sidecar writes that folder.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { type ProposalChange, type ProposalKind, proposalBody, type ValidProposal, validateProposal } from './proposal.js';

/**
 * At most this many proposals are kept in a sidecar's lifetime (proposals reloaded from disk
 * count), whatever was decided: what bounds the sidecar's own disk and memory. The agent meets
 * the tighter bounds first: pending proposals and a rate (server.ts).
 */
export const MAX_PROPOSALS = 1000;

export interface StoredProposal {
  /** `p` and 10 characters of [a-z0-9]. */
  id: string;
  kind: ProposalKind;
  /** The agent's reason for the change. */
  reason: string;
  change: ProposalChange;
  /** When it was accepted (ISO 8601). */
  at: string;
}

export const PROPOSAL_ID = /^p[a-z0-9]{10}$/;
const ID_ALPHABET = 'abcdefghijklmnopqrstuvwxyz0123456789';

/** `p` + 10 random characters of [a-z0-9], uniformly drawn (bytes >= 252 are skipped). */
export function newProposalId(): string {
  let id = 'p';
  while (id.length < 11) {
    for (const b of randomBytes(16)) {
      if (b < 252 && id.length < 11) id += ID_ALPHABET[b % 36];
    }
  }
  return id;
}

export interface ProposalStoreOptions {
  /** The folder for proposal files; absent: memory only. */
  dir?: string;
  limit?: number;
  log?: (message: string) => void;
  now?: () => Date;
  newId?: () => string;
}

export class ProposalStore {
  readonly limit: number;
  private readonly byId = new Map<string, StoredProposal>();
  private readonly dir: string | undefined;
  private writable: boolean;
  private readonly log: (message: string) => void;
  private readonly now: () => Date;
  private readonly newId: () => string;

  constructor(opts: ProposalStoreOptions = {}) {
    this.limit = opts.limit ?? MAX_PROPOSALS;
    this.log = opts.log ?? (() => undefined);
    this.now = opts.now ?? (() => new Date());
    this.newId = opts.newId ?? newProposalId;
    this.dir = opts.dir;
    this.writable = false;
    if (this.dir === undefined) return;
    this.reload(this.dir);
    try {
      mkdirSync(this.dir, { recursive: true, mode: 0o755 });
      this.writable = true;
    } catch (err) {
      this.log(`supervise: cannot create ${this.dir} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}); proposals are kept in memory only`);
    }
  }

  /** Whether accepted proposals are written to disk (and so survive a restart). */
  get persistent(): boolean {
    return this.writable;
  }

  get size(): number {
    return this.byId.size;
  }

  get full(): boolean {
    return this.byId.size >= this.limit;
  }

  get(id: string): StoredProposal | undefined {
    return this.byId.get(id);
  }

  /** In the order they were accepted. */
  list(): StoredProposal[] {
    return [...this.byId.values()];
  }

  /** Accepts a checked proposal; undefined when the limit is reached. */
  add(p: ValidProposal): StoredProposal | undefined {
    if (this.full) return undefined;
    let id = this.newId();
    while (this.byId.has(id)) id = this.newId();
    const stored: StoredProposal = { id, kind: p.kind, reason: p.reason, change: p.change, at: this.now().toISOString() };
    this.byId.set(id, stored);
    this.persist(stored);
    return stored;
  }

  private persist(p: StoredProposal): void {
    if (!this.writable || this.dir === undefined) return;
    const file = join(this.dir, `${p.id}.json`);
    try {
      writeFileSync(`${file}.tmp`, `${JSON.stringify(p)}\n`, { mode: 0o600 });
      renameSync(`${file}.tmp`, file);
    } catch (err) {
      this.writable = false;
      this.log(`supervise: cannot write ${file} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}); proposals are kept in memory only from now on`);
    }
  }

  /** Loads the proposal files a previous run of this sidecar wrote; files that do not check out are skipped. */
  private reload(dir: string): void {
    let names: string[];
    try {
      names = readdirSync(dir);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT') this.log(`supervise: cannot read ${dir} (${code ?? (err as Error).message}); no proposals reloaded`);
      return;
    }
    const loaded: StoredProposal[] = [];
    for (const name of names) {
      const id = name.endsWith('.json') ? name.slice(0, -5) : '';
      if (!PROPOSAL_ID.test(id)) continue;
      const p = readStored(join(dir, name), id);
      if (typeof p === 'string') this.log(`supervise: skipping ${join(dir, name)}: ${p}`);
      else loaded.push(p);
    }
    loaded.sort((a, b) => (a.at < b.at ? -1 : a.at > b.at ? 1 : a.id < b.id ? -1 : 1));
    for (const p of loaded) this.byId.set(p.id, p);
    if (loaded.length > 0) this.log(`supervise: reloaded ${loaded.length} proposal(s) from ${dir}`);
  }
}

/** A proposal file, checked again as a new proposal would be; a message when it does not check out. */
function readStored(file: string, id: string): StoredProposal | string {
  let doc: Record<string, unknown>;
  try {
    doc = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    return (err as NodeJS.ErrnoException).code ?? `not valid JSON (${(err as Error).message})`;
  }
  if (typeof doc !== 'object' || doc === null) return 'not a proposal';
  if (doc.id !== id) return 'its id does not match its name';
  if (typeof doc.at !== 'string' || Number.isNaN(Date.parse(doc.at))) return 'no valid "at"';
  if (typeof doc.change !== 'object' || doc.change === null || Array.isArray(doc.change)) return 'no valid "change"';
  const checked = validateProposal(proposalBody({ kind: doc.kind as ProposalKind, reason: doc.reason as string, change: doc.change as ProposalChange }));
  if (!checked.ok) return `${checked.error}: ${checked.issues.map((i) => `${i.path}: ${i.message}`).join('; ')}`;
  const p = checked.proposal;
  return { id, kind: p.kind, reason: p.reason, change: p.change, at: doc.at };
}
