#!/usr/bin/env node
// Builds dist/ with esbuild only:
//  - dist/sidecars/<name>.mjs: each sidecars/<name>/main.ts bundled for Debian's Node 18
//    (the sidecar image COPYs these; no npm registry is reachable inside containers);
//  - dist/cli/main.js: the CLI as one bundle (see buildCli), so `node dist/cli/main.js` runs.
// `npm ci` runs it (the `prepare` script), and so does `npm pack`, so a packed tarball carries dist/.
// Usage: node scripts/build.mjs [--sidecars-only]
import { readdir, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dist = path.join(root, 'dist');
const CLI_LAYERS = ['cli', 'engine', 'config', 'machines', 'effects', 'store'];
const sidecarsOnly = process.argv.includes('--sidecars-only');

async function exists(p) {
  try {
    await stat(p);
    return true;
  } catch (err) {
    if (err.code === 'ENOENT') return false;
    throw err;
  }
}

async function buildSidecars() {
  const dir = path.join(root, 'sidecars');
  const entryPoints = {};
  for (const d of await readdir(dir, { withFileTypes: true })) {
    const main = path.join(dir, d.name, 'main.ts');
    if (d.isDirectory() && (await exists(main))) entryPoints[d.name] = main;
  }
  await rm(path.join(dist, 'sidecars'), { recursive: true, force: true });
  await esbuild.build({
    entryPoints,
    outdir: path.join(dist, 'sidecars'),
    outExtension: { '.js': '.mjs' },
    bundle: true,
    platform: 'node',
    target: 'node18',
    format: 'esm',
    logLevel: 'warning',
  });
  return Object.keys(entryPoints);
}

/**
 * The CLI is one bundle (dist/cli/main.js): every `bottle` command starts a fresh Node, and a
 * detached run starts two; resolving and loading hundreds of module files dominated that
 * start-up (docs/benchmarks.md, launch). Lazily imported modules stay lazy inside the bundle.
 * Native add-ons stay outside (ssh2's optional cpu-features), and CommonJS dependencies get
 * the require/__dirname they expect.
 */
async function buildCli() {
  // Removes what older builds left per layer (they transpiled file by file).
  await Promise.all(CLI_LAYERS.map((l) => rm(path.join(dist, l), { recursive: true, force: true })));
  const result = await esbuild.build({
    entryPoints: [path.join(root, 'cli', 'main.ts')],
    outfile: path.join(dist, 'cli', 'main.js'),
    bundle: true,
    platform: 'node',
    target: 'node20',
    format: 'esm',
    external: ['cpu-features', '*.node'],
    banner: {
      js: [
        "import { createRequire as __bottleCreateRequire } from 'node:module';",
        "import { fileURLToPath as __bottleFileURLToPath } from 'node:url';",
        "import { dirname as __bottleDirname } from 'node:path';",
        'const require = __bottleCreateRequire(import.meta.url);',
        'const __filename = __bottleFileURLToPath(import.meta.url);',
        'const __dirname = __bottleDirname(__filename);',
      ].join('\n'),
    },
    metafile: true,
    logLevel: 'warning',
  });
  return Object.keys(result.metafile.inputs).filter((f) => !f.includes('node_modules')).length;
}

const started = Date.now();
const sidecars = await buildSidecars();
const cliFiles = sidecarsOnly ? 0 : await buildCli();
console.error(`build: ${sidecars.length} sidecar bundle(s) [${sidecars.join(', ')}], CLI bundled from ${cliFiles} source file(s) in ${Date.now() - started} ms`);
