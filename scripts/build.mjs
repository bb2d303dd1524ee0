#!/usr/bin/env node
// Builds dist/ with esbuild only:
//  - dist/sidecars/<name>.mjs: each sidecars/<name>/main.ts bundled for Debian's Node 18
//    (the sidecar image COPYs these; no npm registry is reachable inside containers);
//  - dist/<layer>/**/*.js: every .ts under the CLI layers transpiled one to one (no
//    bundling; relative imports already end in .js), so `node dist/cli/main.js` runs.
// Usage: node scripts/build.mjs [--sidecars-only]
import { readdir, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dist = path.join(root, 'dist');
const CLI_LAYERS = ['cli', 'config', 'machines', 'effects', 'store'];
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

async function tsFiles(dir) {
  if (!(await exists(dir))) return [];
  const out = [];
  for (const d of await readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, d.name);
    if (d.isDirectory()) out.push(...(await tsFiles(p)));
    else if (d.isFile() && d.name.endsWith('.ts') && !d.name.endsWith('.d.ts')) out.push(p);
  }
  return out;
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

async function buildCli() {
  const entryPoints = (await Promise.all(CLI_LAYERS.map((l) => tsFiles(path.join(root, l))))).flat();
  await Promise.all(CLI_LAYERS.map((l) => rm(path.join(dist, l), { recursive: true, force: true })));
  await esbuild.build({
    entryPoints,
    outdir: dist,
    outbase: root,
    bundle: false,
    platform: 'node',
    target: 'node20',
    format: 'esm',
    logLevel: 'warning',
  });
  return entryPoints.length;
}

const started = Date.now();
const sidecars = await buildSidecars();
const cliFiles = sidecarsOnly ? 0 : await buildCli();
console.error(`build: ${sidecars.length} sidecar bundle(s) [${sidecars.join(', ')}], ${cliFiles} CLI file(s) in ${Date.now() - started} ms`);
