import { join } from 'node:path';

/** What the bench scripts share: their command line, a sidecar bundle, order statistics. */

/**
 * `--name value` options (`valued` lists the names that take a value), `--flag`s, and the
 * positional arguments (what is neither an option nor an option's value).
 */
export function benchArgs(valued: readonly string[], argv: readonly string[] = process.argv.slice(2)) {
  const option = (name: string) => {
    const i = argv.indexOf(name);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const positional = argv.filter((a, i) => !a.startsWith('--') && !(i > 0 && valued.includes(argv[i - 1]!)));
  return { option, positional, flag: (name: string) => argv.includes(name) };
}

/** Bundles sidecars/<name>/main.ts as scripts/build.mjs does (esbuild, node18, ESM) into `outDir`; returns the file. */
export async function bundleSidecar(root: string, name: string, outDir: string): Promise<string> {
  const esbuild = await import('esbuild');
  await esbuild.build({
    entryPoints: { [name]: join(root, 'sidecars', name, 'main.ts') },
    outdir: outDir,
    outExtension: { '.js': '.mjs' },
    bundle: true,
    platform: 'node',
    target: 'node18',
    format: 'esm',
    logLevel: 'warning',
  });
  return join(outDir, `${name}.mjs`);
}

export const sorted = (xs: ArrayLike<number>) => Float64Array.from(xs).sort();
/** The sample at floor(q * n) of sorted samples (NaN when there are none). */
export const quantile = (s: Float64Array, q: number) => (s.length === 0 ? Number.NaN : s[Math.min(s.length - 1, Math.floor(q * s.length))]!);
export const median = (xs: number[]) => quantile(sorted(xs), 0.5);
export const range = (xs: number[]) => [Math.min(...xs), Math.max(...xs)] as const;
