import { readFile } from 'node:fs/promises';
import { BottleError } from '../../config/errors.js';

const NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/**
 * Parses a staged env-file in `docker --env-file` syntax: NAME=VALUE per line, `#` comments
 * and blank lines skipped, the value taken literally (no quotes, no expansion). A bare NAME
 * (which `docker --env-file` would fill from the caller's environment) is refused: forwarded
 * values reach the adapter through `spec.env`, never through the process environment.
 */
export function parseEnvFile(text: string, file: string): Record<string, string> {
  const out: Record<string, string> = {};
  const lines = text.split('\n');
  for (const [index, raw] of lines.entries()) {
    const line = raw.replace(/\r$/, '').replace(/^\s+/, '');
    if (line === '' || line.startsWith('#')) continue;
    const eq = line.indexOf('=');
    const name = eq === -1 ? line : line.slice(0, eq);
    if (eq === -1 || !NAME.test(name)) {
      throw new BottleError(
        'INTERNAL',
        `env-file ${file} line ${index + 1}: expected NAME=VALUE with a valid variable name`,
        'The env-file is staged by bottle itself; report this as a bug with the manifest that produced it.',
      );
    }
    out[name] = line.slice(eq + 1);
  }
  return out;
}

export async function readEnvFile(file: string, signal?: AbortSignal): Promise<Record<string, string>> {
  let text: string;
  try {
    text = await readFile(file, { encoding: 'utf8', ...(signal ? { signal } : {}) });
  } catch (err) {
    if (signal?.aborted) throw signal.reason;
    const code = (err as { code?: unknown }).code;
    throw new BottleError('SECRET_UNREADABLE', `cannot read the staged env-file ${file}: ${String(code ?? err)}`, 'Run the bottle again; the env-file is staged fresh on every run.');
  }
  return parseEnvFile(text, file);
}

/**
 * The container's Env list: env-file literals first, then `spec.env` (later wins, as with
 * `docker run --env-file F -e NAME=…`). Values go into the create body only.
 */
export function envList(fileEnv: Record<string, string>, specEnv: Record<string, string>): string[] {
  const merged = { ...fileEnv, ...specEnv };
  for (const [name, value] of Object.entries(merged)) {
    if (!NAME.test(name)) throw new BottleError('INTERNAL', `invalid environment variable name '${name}'`);
    if (value.includes('\0')) throw new BottleError('INTERNAL', `environment variable ${name} contains a NUL byte`);
  }
  return Object.entries(merged).map(([name, value]) => `${name}=${value}`);
}
