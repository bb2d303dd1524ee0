import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BottleError } from '../../../config/errors.js';
import { INIT_TEMPLATE, writeInitManifest } from '../../../config/init-template.js';
import { loadManifest, parseManifestYaml } from '../../../config/load.js';

let root: string;

beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), 'bottle-init-'));
});

afterEach(() => {
  rmSync(root, { recursive: true, force: true });
});

describe('INIT_TEMPLATE', () => {
  it('validates, with a demo bottle and a script demo agent', () => {
    const result = parseManifestYaml(INIT_TEMPLATE);
    if (!result.ok) throw new Error(JSON.stringify(result.issues));
    expect(Object.keys(result.manifest.bottles)).toEqual(['demo']);
    const agent = result.manifest.agents.demo;
    expect(agent?.bottle).toBe('demo');
    expect(agent?.command?.slice(0, 2)).toEqual(['bash', '-c']);
    expect(agent?.command?.[2]).toContain('"$BOTTLE_PROMPT_FILE"');
  });

  it('needs no secret, so it loads with secret checks on', async () => {
    const file = join(root, 'bottle.yaml');
    writeFileSync(file, INIT_TEMPLATE);
    await expect(loadManifest(file, { env: {}, homeDir: root, checkSecrets: true })).resolves.toBeDefined();
  });

  it('shows every manifest key, commented or not', () => {
    const keys = ['image', 'dockerfile', 'ref', 'runtime', 'egress', 'allow', 'git', 'name', 'upstream', 'key', 'known_hosts', 'push', 'token', 'ca',
      'cred_proxy', 'routes', 'path', 'inject', 'header', 'format', 'roles', 'supervise', 'env', 'value', 'from_host',
      'bottle', 'prompt', 'prompt_file', 'command', 'skills'];
    for (const key of keys) expect(INIT_TEMPLATE, key).toMatch(new RegExp(`\\b${key}:`));
  });
});

describe('writeInitManifest', () => {
  it('writes bottle.yaml and returns its path', async () => {
    const file = await writeInitManifest(root);
    expect(file).toBe(join(root, 'bottle.yaml'));
    expect(readFileSync(file, 'utf8')).toBe(INIT_TEMPLATE);
  });

  it.each(['bottle.yaml', 'bottle.yml'])('refuses to overwrite an existing %s', async (name) => {
    writeFileSync(join(root, name), 'mine');
    let caught: unknown;
    try {
      await writeInitManifest(root);
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(BottleError);
    const err = caught as BottleError;
    expect(err.code).toBe('USAGE');
    expect(err.message).toContain(join(root, name));
    expect(err.hint).toMatch(/bottle validate/);
    expect(readFileSync(join(root, name), 'utf8')).toBe('mine');
  });
});
