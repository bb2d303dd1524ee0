/**
 * Finding, reading and validating `bottle.yaml`: the I/O side of manifest.ts.
 */
import { readFile } from 'node:fs/promises';
import { statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { LineCounter, parseDocument } from 'yaml';
import { BottleError } from './errors.js';
import { describeFsError, errorCode } from './files.js';
import { type Manifest, type ManifestIssue, type ValidationResult, validateManifest } from './manifest.js';
import { checkSecrets } from './secrets.js';

export { resolveManifestPath } from './files.js';

export const MANIFEST_NAMES = ['bottle.yaml', 'bottle.yml'] as const;

/** A manifest with problems; `issues` carries them as data for `--json`. */
export class ManifestInvalidError extends BottleError {
  readonly file: string;
  readonly issues: readonly ManifestIssue[];

  constructor(file: string, issues: readonly ManifestIssue[]) {
    super(
      'MANIFEST_INVALID',
      `${file} is not a valid manifest:\n${formatIssues(issues)}`,
      `Try: fix the entries listed, then run \`bottle validate -f ${file}\``,
    );
    this.name = 'ManifestInvalidError';
    this.file = file;
    this.issues = issues;
  }
}

/** One issue a line: `  - bottles.web.egress.allow[2]: <message>`. */
export function formatIssues(issues: readonly ManifestIssue[]): string {
  return issues.map((i) => `  - ${i.path}: ${i.message}`).join('\n');
}

/** The manifest to use: `explicit` (relative to cwd) if given, else bottle.yaml or bottle.yml in cwd. */
export function findManifest(cwd: string, explicit?: string): string {
  if (explicit !== undefined) {
    const file = resolve(cwd, explicit);
    if (isFile(file)) return file;
    throw new BottleError('MANIFEST_NOT_FOUND', `no manifest file at ${file}`, 'Try: check the -f path, or `bottle init` to write one');
  }
  const dir = resolve(cwd);
  for (const name of MANIFEST_NAMES) {
    const file = join(dir, name);
    if (isFile(file)) return file;
  }
  throw new BottleError(
    'MANIFEST_NOT_FOUND',
    `no bottle.yaml or bottle.yml in ${dir}`,
    'Try: `bottle init` to write an example, or pass -f FILE',
  );
}

function isFile(file: string): boolean {
  try {
    return statSync(file).isFile();
  } catch (err) {
    const code = errorCode(err);
    if (code === 'ENOENT' || code === 'ENOTDIR') return false;
    throw new BottleError('MANIFEST_NOT_FOUND', `cannot look at ${file}: ${describeFsError(err)}`, 'Try: check the folder permissions');
  }
}

export interface LoadOptions {
  env: Record<string, string | undefined>;
  homeDir: string;
  /** Also read every secret ref now, so a missing key fails before anything is created. */
  checkSecrets: boolean;
}

export interface LoadedManifest {
  manifest: Manifest;
  /** Absolute path of the manifest. */
  file: string;
  /** Its folder: relative paths in the manifest resolve against it. */
  dir: string;
}

/** Reads, parses and validates a manifest; throws ManifestInvalidError listing every problem. */
export async function loadManifest(file: string, opts: LoadOptions): Promise<LoadedManifest> {
  const abs = resolve(file);
  const dir = dirname(abs);
  let text: string;
  try {
    text = await readFile(abs, 'utf8');
  } catch (err) {
    throw new BottleError('MANIFEST_NOT_FOUND', `cannot read ${abs}: ${describeFsError(err)}`, 'Try: check the -f path, or `bottle init` to write one');
  }
  const result = parseManifestYaml(text);
  if (!result.ok) throw new ManifestInvalidError(abs, result.issues);
  if (opts.checkSecrets) {
    const issues = checkSecrets(result.manifest, { baseDir: dir, env: opts.env, homeDir: opts.homeDir });
    if (issues.length > 0) throw new ManifestInvalidError(abs, issues);
  }
  return { manifest: result.manifest, file: abs, dir };
}

/** Parses YAML text and validates it; a syntax error is an issue with its line and column. Pure. */
export function parseManifestYaml(text: string): ValidationResult {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: false });
  if (doc.errors.length > 0) {
    return {
      ok: false,
      issues: doc.errors.map((err) => {
        const { line, col } = lineCounter.linePos(err.pos[0]);
        // The parser's own wording for this one names a library function.
        const what = err.code === 'MULTIPLE_DOCS' ? 'the file holds more than one YAML document' : oneLine(err.message);
        return { path: '(root)', message: `YAML syntax error at line ${line}, column ${col}: ${what}` };
      }),
    };
  }
  let data: unknown;
  try {
    data = doc.toJS();
  } catch (err) {
    // yaml signals alias problems this way (ReferenceError), among them a document that
    // expands too many aliases (a "billion laughs" manifest), and a merge key (`<<`, YAML 1.1)
    // of anything but a map as a plain Error: all of them are about the document.
    if (!(err instanceof Error)) throw err;
    return { ok: false, issues: [{ path: '(root)', message: `YAML cannot be read: ${oneLine(err.message)}` }] };
  }
  return validateManifest(data);
}

function oneLine(text: string): string {
  return text.replace(/\s*\n\s*/g, ' ').trim();
}
