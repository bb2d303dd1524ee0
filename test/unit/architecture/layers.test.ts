import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

/**
 * The layers as docs/architecture.md draws them, read from the code's own imports: the
 * arrows point one way (cli -> engine -> machines/store/effects), machines/ holds only pure
 * definitions, sidecars/ never reach into the host's code. A new import that breaks a rule
 * fails here with the file, the line and the rule.
 */

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const LAYERS = ['cli', 'engine', 'machines', 'effects', 'store', 'config', 'sidecars'] as const;
type Layer = (typeof LAYERS)[number];

interface Import {
  file: string;
  line: number;
  spec: string;
  typeOnly: boolean;
  /** The layer of a relative import's target; null for packages and node: builtins. */
  target: Layer | null;
}

function sources(dir: string): string[] {
  const out: string[] = [];
  for (const d of readdirSync(join(root, dir), { withFileTypes: true })) {
    const p = join(dir, d.name);
    if (d.isDirectory()) out.push(...sources(p));
    else if (d.name.endsWith('.ts') && !d.name.endsWith('.d.ts')) out.push(p);
  }
  return out;
}

const IMPORT = /(?:^|\n)\s*(import|export)\s+(type\s+)?(?:[\s\S]*?\sfrom\s+)?'([^']+)'|import\(\s*'([^']+)'\s*\)/g;

function importsOf(file: string, text = readFileSync(join(root, file), 'utf8')): Import[] {
  const out: Import[] = [];
  for (const m of text.matchAll(IMPORT)) {
    const spec = (m[3] ?? m[4])!;
    const at = (m.index ?? 0) + m[0].indexOf(spec);
    const line = text.slice(0, at).split('\n').length;
    let target: Layer | null = null;
    if (spec.startsWith('.')) {
      const top = relative(root, resolve(root, dirname(file), spec)).split('/')[0] as Layer;
      target = LAYERS.includes(top) ? top : null;
    }
    out.push({ file, line, spec, typeOnly: Boolean(m[2]), target });
  }
  return out;
}

const layerOf = (file: string) => file.split('/')[0] as Layer;
const all = LAYERS.flatMap((l) => sources(l));
const imports = all.flatMap((f) => importsOf(f));

/** Which layers each layer may import (values; `import type` is looser where noted). */
const MAY_IMPORT: Record<Layer, { values: Layer[]; types: Layer[] }> = {
  cli: { values: ['cli', 'engine', 'config', 'store'], types: ['machines'] },
  engine: { values: ['engine', 'machines', 'store', 'effects', 'config'], types: [] },
  machines: { values: ['machines', 'config'], types: [] },
  effects: { values: ['effects', 'machines', 'config'], types: [] },
  store: { values: ['store', 'config'], types: [] },
  config: { values: ['config'], types: [] },
  sidecars: { values: ['sidecars', 'config'], types: [] },
};

function violations(list: Import[]): string[] {
  const out: string[] = [];
  for (const i of list) {
    if (!i.target) continue;
    const rule = MAY_IMPORT[layerOf(i.file)];
    if (rule.values.includes(i.target)) continue;
    if (i.typeOnly && rule.types.includes(i.target)) continue;
    out.push(`${i.file}:${i.line}: ${layerOf(i.file)}/ imports ${i.target}/ ('${i.spec}')`);
  }
  return out;
}

/** machines/ is pure: no file, socket or process, and no timer (an `after` or poll belongs to the engine). */
const IMPURE_MODULES = /^node:(fs|fs\/promises|net|dgram|http|https|http2|tls|child_process|worker_threads|cluster|timers|timers\/promises)$/;
const TIMER = /\b(setTimeout|setInterval|setImmediate)\s*\(/;

function impurities(file: string, text = readFileSync(join(root, file), 'utf8')): string[] {
  const out = importsOf(file, text)
    .filter((i) => IMPURE_MODULES.test(i.spec) || /^(fs|net|child_process|timers)$/.test(i.spec))
    .map((i) => `${file}:${i.line}: machines/ imports ${i.spec}`);
  text.split('\n').forEach((line, n) => {
    if (TIMER.test(line.replace(/\/\/.*$/, ''))) out.push(`${file}:${n + 1}: machines/ uses a timer`);
  });
  return out;
}

describe('the layers', () => {
  it('finds the code it checks', () => {
    for (const l of LAYERS) expect(all.some((f) => layerOf(f) === l), `${l}/ has sources`).toBe(true);
    expect(imports.length).toBeGreaterThan(100);
  });

  it('imports point one way: cli -> engine -> machines/store/effects, sidecars alone', () => {
    expect(violations(imports)).toEqual([]);
  });

  it('machines/ uses no fs, net, child process or timer', () => {
    expect(all.filter((f) => layerOf(f) === 'machines').flatMap((f) => impurities(f))).toEqual([]);
  });

  it('no process.env outside config/ and cli/', () => {
    const found = all
      .filter((f) => !['config', 'cli'].includes(layerOf(f)))
      .flatMap((f) =>
        readFileSync(join(root, f), 'utf8')
          .split('\n')
          .flatMap((line, n) => (/\bprocess\.env\b/.test(line.replace(/\/\/.*$/, '').replace(/^\s*\*.*$/, '')) ? [`${f}:${n + 1}`] : [])),
      );
    // Sidecars run as their container's PID 1 and read their own environment: that is their config.
    expect(found.filter((f) => !f.startsWith('sidecars/'))).toEqual([]);
  });

  // The checks themselves must be able to fail.
  it('catches a forbidden import, an import type where only values are listed, and impurity', () => {
    const fake = (file: string, text: string) => importsOf(file, text);
    expect(violations(fake('machines/x.ts', "import { a } from '../effects/local.js';"))).toHaveLength(1);
    expect(violations(fake('machines/x.ts', "import type {\n  A,\n} from '../store/records.js';"))).toHaveLength(1);
    expect(violations(fake('engine/x.ts', "export { a } from '../cli/output.js';"))).toHaveLength(1);
    expect(violations(fake('cli/x.ts', "const m = await import('../effects/docker/client.js');"))).toHaveLength(1);
    expect(violations(fake('cli/x.ts', "import type { A } from '../machines/ports.js';"))).toHaveLength(0);
    expect(violations(fake('sidecars/egress/x.ts', "import { a } from '../../store/paths.js';"))).toHaveLength(1);
    expect(impurities('machines/x.ts', "import { readFileSync } from 'node:fs';\nconst t = setTimeout(() => 1, 5);")).toHaveLength(2);
    expect(impurities('machines/x.ts', "import { createHash } from 'node:crypto';")).toHaveLength(0);
  });
});
