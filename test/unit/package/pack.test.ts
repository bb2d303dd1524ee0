import { execFile } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

// What `npm pack` (and so `npm install -g` of the tarball, or a publish) ships: everything the
// installed `bottle` needs at run time, and no sources or tests. Scripts are not run here
// (`--ignore-scripts`): the `prepare` build would rewrite dist/ under other suites' feet.

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const run = promisify(execFile);

describe('npm pack', () => {
  it('ships the built CLI, the sidecar bundles, the image Dockerfiles and bin/bottle', async () => {
    expect(existsSync(path.join(root, 'dist', 'cli', 'main.js')), 'dist/ is built by `npm ci` (prepare) or `npm run build`').toBe(true);
    const { stdout } = await run('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: root, maxBuffer: 16 * 1024 * 1024 });
    const files = (JSON.parse(stdout) as { files: { path: string }[] }[])[0]!.files.map((f) => f.path);
    expect(files).toEqual(
      expect.arrayContaining([
        'bin/bottle',
        'dist/cli/main.js',
        'images/agent/Dockerfile',
        'images/sidecar/Dockerfile',
        'scripts/docker-up.sh',
        'scripts/base-image.sh',
        'README.md',
        'package.json',
      ]),
    );
    const sidecars = files.filter((f) => /^dist\/sidecars\/[^/]+\.mjs$/.test(f)).sort();
    const programs = readdirSync(path.join(root, 'sidecars'), { withFileTypes: true })
      .filter((d) => d.isDirectory() && existsSync(path.join(root, 'sidecars', d.name, 'main.ts')))
      .map((d) => `dist/sidecars/${d.name}.mjs`)
      .sort();
    expect(programs.length).toBeGreaterThan(0);
    expect(sidecars).toEqual(programs);
    expect(files.filter((f) => f.endsWith('.ts') || f.startsWith('test/') || f.startsWith('node_modules/'))).toEqual([]);
  });

  it('builds dist/ on `npm ci` (prepare) and before packing', async () => {
    const pkg = JSON.parse((await run('npm', ['pkg', 'get', 'scripts', 'bin'], { cwd: root })).stdout) as { scripts: Record<string, string>; bin: Record<string, string> };
    expect(pkg.scripts.prepare).toBe('node scripts/build.mjs');
    expect(pkg.bin).toEqual({ bottle: 'bin/bottle' });
  });
});
