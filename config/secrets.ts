/**
 * Secret refs (`{ file: PATH }` / `{ env: NAME }`) and reading them on the host.
 *
 * Invariant: no error, issue or description built here contains a secret's value, only the
 * ref as written and, for files, the resolved path and the OS reason.
 */
import { readFileSync, statSync } from 'node:fs';
import { BottleError } from './errors.js';
import { describeFsError, resolveManifestPath } from './files.js';
import { formatPath, type Manifest, type ManifestIssue, type SecretRef } from './manifest.js';
import { tokenProblem } from './token-rule.js';

/** A CA bundle ref (`{ file }`) is read the same way as a secret. */
export type FileRef = { file: string };

export interface SecretContext {
  /** The manifest's folder: relative file refs resolve against it. */
  baseDir: string;
  env: Record<string, string | undefined>;
  homeDir: string;
}

/** Generous for CA bundles; stops a ref to a device or a log file from being slurped. */
const MAX_SECRET_BYTES = 1024 * 1024;

/** `env:ANTHROPIC_API_KEY` or `file:~/.ssh/key`, as written in the manifest. */
export function describeRef(ref: SecretRef | FileRef): string {
  return 'file' in ref ? `file:${ref.file}` : `env:${ref.env}`;
}

/**
 * Reads a secret's value. A file's content loses one trailing newline (a key written back to
 * a file must end with one again). An unset or empty value is an error: an empty token would
 * only surface later as a confusing 401 from the upstream.
 */
export function readSecret(ref: SecretRef | FileRef, ctx: SecretContext): string {
  const name = describeRef(ref);
  if (!('file' in ref)) {
    const value = ctx.env[ref.env];
    if (value === undefined) {
      throw unreadable(`secret ${name} is not set`, `Try: export ${ref.env} in the shell that runs bottle`);
    }
    if (value === '') throw unreadable(`secret ${name} is set but empty`, `Try: export a non-empty ${ref.env}`);
    return value;
  }

  const path = resolveManifestPath(ctx.baseDir, ref.file, ctx.homeDir);
  const where = `secret ${name} (${path})`;
  const hint = 'Try: check the path in the manifest (relative paths start at the manifest folder, ~ is your home)';
  let text: string;
  try {
    const stat = statSync(path);
    if (!stat.isFile()) throw unreadable(`${where} is not a regular file`, hint);
    if (stat.size > MAX_SECRET_BYTES) throw unreadable(`${where} is larger than 1 MiB`, hint);
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if (err instanceof BottleError) throw err;
    throw unreadable(`${where} cannot be read: ${describeFsError(err)}`, hint);
  }
  const value = text.endsWith('\r\n') ? text.slice(0, -2) : text.endsWith('\n') ? text.slice(0, -1) : text;
  if (value === '') throw unreadable(`${where} is empty`, hint);
  return value;
}

/**
 * Refuses a route token that breaks the token rule (config/token-rule.ts) with SECRET_INVALID,
 * naming the ref (and `what` it is for), never the value. The host calls it wherever a route
 * secret enters after the manifest was loaded: a rotated token file, a secret named on
 * `bottle approve`.
 */
export function checkRouteToken(value: string, ref: SecretRef | FileRef, what: string, hint: string): void {
  const problem = tokenProblem(value);
  if (problem !== undefined) throw new BottleError('SECRET_INVALID', `the secret ${describeRef(ref)} (${what}) ${problem}`, hint);
}

function unreadable(message: string, hint: string): BottleError {
  return new BottleError('SECRET_UNREADABLE', message, hint);
}

export interface SecretRefAt {
  /** Where the ref is in the manifest, as in `bottles.web.cred_proxy.routes[0].token`. */
  path: string;
  ref: SecretRef | FileRef;
}

/** Every secret and CA ref in the manifest, in document order. */
export function listSecretRefs(manifest: Manifest): SecretRefAt[] {
  const refs: SecretRefAt[] = [];
  const add = (path: PropertyKey[], ref: SecretRef | FileRef | undefined) => {
    if (ref !== undefined) refs.push({ path: formatPath(path), ref });
  };
  for (const [name, bottle] of Object.entries(manifest.bottles)) {
    bottle.cred_proxy.routes.forEach((route, i) => {
      const at = ['bottles', name, 'cred_proxy', 'routes', i];
      add([...at, 'token'], route.token);
      add([...at, 'ca'], route.ca);
    });
    bottle.git.forEach((remote, i) => {
      const at = ['bottles', name, 'git', i];
      add([...at, 'key'], remote.key);
      add([...at, 'known_hosts'], remote.known_hosts);
      add([...at, 'token'], remote.token);
      add([...at, 'ca'], remote.ca);
    });
  }
  return refs;
}

/** Tries every secret ref and returns one issue per ref that cannot be read. */
export function checkSecrets(manifest: Manifest, ctx: SecretContext): ManifestIssue[] {
  const issues: ManifestIssue[] = [];
  for (const { path, ref } of listSecretRefs(manifest)) {
    try {
      const value = readSecret(ref, ctx);
      // Only the shape is reported, never the value.
      const problem = /\.cred_proxy\.routes\[\d+\]\.token$/.test(path) ? tokenProblem(value) : undefined;
      if (problem) issues.push({ path, message: `the token of ${describeRef(ref)} ${problem}` });
    } catch (err) {
      if (!(err instanceof BottleError)) throw err;
      issues.push({ path, message: err.message });
    }
  }
  return issues;
}
