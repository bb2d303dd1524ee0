import { mkdtempSync, renameSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { replayFile } from '../../engine/replay.js';
import { STEP_IDS } from '../../machines/bottle.machine.js';
import { credTokenPath, DOCKERFILE_TEMPLATE, EGRESS_HASHES_PATH, secretHash } from '../../machines/specs.js';
import { EventLog } from '../../store/event-log.js';
import { eventsFile } from '../../store/paths.js';
import { listRuns } from '../../store/state-doc.js';
import { bottle, ensureBuilt } from '../support/cli.js';
import { docker, execIn } from '../support/docker.js';
import { ensureTestImages } from '../support/images.js';
import { agentName, bottleFolder, cli, finishBottleSuite, type SecBottle, track } from '../support/security.js';

/**
 * Issue 13, item 1: failpoints on real Docker. A full bottle (all four sidecars, a --cwd
 * project) is killed with SIGKILL right after each effect's intent and right after its
 * completion (BOTTLE_FAULT, engine/test-hooks/failpoints.ts), on the launch and teardown path
 * and around applying an approved Dockerfile and an approved route. For every point,
 * `bottle resume` (or the CLI that approves, taking the run over) converges to what an
 * undisturbed run ends with (done, the agent's exit code 3), Docker never held two objects
 * for one name (every object created once; the route fixer and a recreated agent are the
 * designed exceptions), nothing of the bottle is left, and replay passes.
 */

const identities = new Set<string>();
const EXIT = 3;

/**
 * Posts its proposal (when the project asks for one), waits until it is decided, then exits 3.
 * An approved Dockerfile recreates the container, which runs this again from the top: the
 * workspace volume remembers that the proposal was made, so the new container only reports.
 */
const SCRIPT = `set -u
propose() { curl -s --noproxy '*' -X POST -H 'content-type: application/json' --data "$1" "$BOTTLE_SUPERVISE_URL/proposals" | sed -n 's/.*"id":"\\([a-z0-9]*\\)".*/\\1/p'; }
wait_decided() { for _ in $(seq 1 600); do s=$(curl -s --noproxy '*' "$BOTTLE_SUPERVISE_URL/proposals/$1"); case "$s" in *'"status":"pending"'*|'') sleep 0.2;; *) echo "decided $1 $s"; return 0;; esac; done; echo "undecided $1"; }
echo "workspace $(cat /workspace/hello.txt)"
[ -f /etc/bottle-approved ] && echo "image approved"
if [ -f /workspace/propose ] && [ ! -f /workspace/proposed ]; then
  id=$(propose "$(cat /workspace/propose)")
  echo "$id" > /workspace/proposed
  echo "proposed $id"
  wait_decided "$id"
fi
# Asked to stay (the rotation point), the agent runs until the bottle is stopped.
while [ -f /workspace/forever ]; do sleep 0.2; done
sleep 1
exit ${EXIT}
`;

const DOCKERFILE = `${DOCKERFILE_TEMPLATE}USER root\nRUN echo approved > /etc/bottle-approved\nUSER agent\n`;
const PROPOSALS = {
  dockerfile: { kind: 'dockerfile', reason: 'a marker file', dockerfile: DOCKERFILE },
  route: { kind: 'route', reason: 'a later API', route: { path: '/later', upstream: 'https://later.failpoint.test', inject: { header: 'x-api-key', format: '{token}' }, roles: [] } },
};

function fullBottle(tag: string, propose?: keyof typeof PROPOSALS, opts: { tokenFile?: string; forever?: boolean } = {}): SecBottle {
  const dir = track(mkdtempSync(join(tmpdir(), 'bottle-fp-cwd-')));
  writeFileSync(join(dir, 'hello.txt'), 'from the project\n');
  if (propose) writeFileSync(join(dir, 'propose'), JSON.stringify(PROPOSALS[propose]));
  if (opts.forever) writeFileSync(join(dir, 'forever'), '');
  return bottleFolder({
    prefix: 'bottle-fp-',
    agent: agentName(`fp-${tag}`),
    bottle: 'fp',
    config: {
      runtime: 'auto',
      egress: { allow: ['allowed.test'] },
      supervise: true,
      // Neither upstream has to answer: both sidecars are ready once they hold their policy.
      cred_proxy: { routes: [{ path: '/api', upstream: 'https://api.failpoint.test', token: opts.tokenFile ? { file: opts.tokenFile } : { env: 'FP_API_TOKEN' }, inject: { header: 'x-api-key', format: '{token}' } }] },
      git: [{ name: 'origin', upstream: 'https://git.failpoint.test/app.git', token: { env: 'FP_GIT_TOKEN' }, push: [] }],
    },
    prompt: 'crash me',
    script: SCRIPT,
    hostEnv: { FP_API_TOKEN: 'api-token-of-the-failpoint-test-01', FP_GIT_TOKEN: 'git-token-of-the-failpoint-test-02', FP_LATER_TOKEN: 'later-token-of-the-failpoint-03' },
    cwd: dir,
  });
}

/**
 * Every create event Docker emitted for the bottle's objects since `since` (seconds). Network
 * and volume events carry no labels, so those are told by the bottle's name prefix.
 */
async function creations(identity: string, since: number): Promise<Map<string, number>> {
  const until = Math.ceil(Date.now() / 1000) + 1;
  const stream = (await docker().getEvents({
    since,
    until,
    filters: JSON.stringify({ type: ['container', 'network', 'volume'], event: ['create'] }),
  })) as NodeJS.ReadableStream;
  let text = '';
  for await (const chunk of stream) text += chunk.toString();
  const counts = new Map<string, number>();
  const ours = new RegExp(`^bottle-${identity}($|-)`);
  for (const line of text.split('\n').filter(Boolean)) {
    const ev = JSON.parse(line) as { Type: string; Actor: { ID: string; Attributes: Record<string, string> } };
    const name = ev.Actor.Attributes.name ?? ev.Actor.ID;
    if (!ours.test(name)) continue;
    const key = `${ev.Type} ${name}`;
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  return counts;
}

async function statusOf(b: SecBottle, identity: string) {
  const r = await cli(b, ['status', identity, '--json']);
  return r.code === 0 ? (JSON.parse(r.stdout) as { state: string; run: string; owner_alive: boolean; exit_code: number | null; proposals: { id: string; status: string }[] }) : null;
}

async function until<T>(what: string, probe: () => Promise<T | null | undefined | false>, ms = 180_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await delay(200);
  }
}

/** What every point must end with: the undisturbed outcome, each object made once, nothing left, a consistent history. */
async function converged(b: SecBottle, identity: string, since: number, recreated: string[] = [], exitCode: number | null = EXIT) {
  const status = await until('the run to end', async () => {
    const s = await statusOf(b, identity);
    return s && (s.state === 'done' || s.state === 'failed') && !s.owner_alive ? s : null;
  });
  expect(status.state).toBe('done');
  if (exitCode !== null) expect(status.exit_code).toBe(exitCode);
  // Docker refuses a second container or volume of one name, so a duplicate of those would
  // show as another name (the next free agent name, say); networks of one name it allows, so
  // each must have been created exactly once.
  const made = await creations(identity, since);
  const base = `bottle-${identity}`;
  const of = (type: string) => [...made.keys()].filter((k) => k.startsWith(`${type} `)).map((k) => k.slice(type.length + 1)).sort();
  expect(of('container')).toEqual([base, ...['cred-proxy', 'egress', 'git-gate', 'netfix', 'netns', 'supervise'].map((r) => `${base}-${r}`)].sort());
  expect(of('volume')).toEqual([`${base}-workspace`]);
  expect(of('network')).toEqual([`${base}-egress-net`, `${base}-internal`]);
  for (const net of of('network')) expect(made.get(`network ${net}`), `network ${net} created more than once`).toBe(1);
  expect(made.get(`container ${base}`), 'the agent container').toBe(recreated.includes(`container ${base}`) ? 2 : 1);
  const left = await docker().listContainers({ all: true, filters: { label: [`bot-bottle.identity=${identity}`] } });
  expect(left.map((c) => c.Names[0])).toEqual([]);
  const nets = await docker().listNetworks({ filters: { label: [`bot-bottle.identity=${identity}`] } });
  expect(nets.map((n) => n.Name)).toEqual([]);
  const [runId] = listRuns(b.home, identity);
  expect(replayFile(eventsFile(b.home, identity, runId!)).problem).toBeNull();
  return status;
}

function runArgs(b: SecBottle, extra: string[] = []) {
  return ['run', b.agent, '-f', b.manifest, '--cwd', b.cwd!, ...extra];
}

beforeAll(async () => {
  ensureBuilt();
  await ensureTestImages();
});

afterAll(async () => {
  await finishBottleSuite(identities);
});

describe('SIGKILL at every effect boundary of a full bottle on real Docker, then resume', () => {
  it('baseline: undisturbed, the run ends done with the agent code', async () => {
    const b = fullBottle('base');
    const since = Math.floor(Date.now() / 1000) - 1;
    const r = await cli(b, runArgs(b));
    expect(r.code, r.stderr).toBe(EXIT);
    expect(r.stdout).toContain('workspace from the project');
    const identity = JSON.parse((await cli(b, ['ls', '--json'])).stdout)[0].identity as string;
    identities.add(identity);
    await converged(b, identity, since);
  });

  for (const step of STEP_IDS.filter((s) => s !== 'applyProposal')) {
    for (const when of ['intent', 'completed'] as const) {
      it(`killed right after ${step} ${when}`, async () => {
        const b = fullBottle(`${step.toLowerCase()}-${when}`);
        const since = Math.floor(Date.now() / 1000) - 1;
        const crashed = await cli({ ...b, env: { ...b.env, BOTTLE_FAULT: `${when}:${step}` } }, runArgs(b));
        expect(crashed.signal, crashed.stderr).toBe('SIGKILL');
        const identity = JSON.parse((await cli(b, ['ls', '--json'])).stdout)[0].identity as string;
        identities.add(identity);
        const resumed = await cli(b, ['resume', identity]);
        expect(resumed.code, resumed.stderr).toBe(EXIT);
        await converged(b, identity, since);
      });
    }
  }

  for (const kind of ['dockerfile', 'route'] as const) {
    for (const when of ['intent', 'completed'] as const) {
      it(`killed right after applying an approved ${kind} (${when})`, { timeout: 300_000 }, async () => {
        const b = fullBottle(`apply-${kind}-${when}`, kind);
        const since = Math.floor(Date.now() / 1000) - 1;
        // The background owner of the detached run carries the failpoint; the approving CLI
        // does not, so it takes the run over after the kill and carries the approval out.
        const started = await cli({ ...b, env: { ...b.env, BOTTLE_FAULT: `${when}:applyProposal` } }, runArgs(b, ['--detach', '--json']));
        expect(started.code, started.stderr).toBe(0);
        const { identity } = JSON.parse(started.stdout) as { identity: string };
        identities.add(identity);
        const pending = await until('the proposal', async () => (await statusOf(b, identity))?.proposals.find((p) => p.status === 'pending'));
        const approve = await cli(b, ['approve', identity, pending.id, ...(kind === 'route' ? ['--token-env', 'FP_LATER_TOKEN'] : [])]);
        expect(approve.code, approve.stderr).toBe(0);
        const status = await converged(b, identity, since, kind === 'dockerfile' ? [`container bottle-${identity}`] : []);
        expect(status.proposals.map((p) => p.status)).toEqual(['approved']);
        const log = await cli(b, ['logs', identity]);
        // A route reaches the agent as a decision; a Dockerfile as the new container it runs in.
        if (kind === 'route') expect(log.stdout).toMatch(/decided p[a-z0-9]+ .*"status":"approved"/);
        else expect(log.stdout).toContain('image approved');
      });
    }
  }

  it('killed right after a token rotation is recorded (event canary.learned), then resumed: the new token reaches the proxy and the canary', { timeout: 300_000 }, async () => {
    const secrets = track(mkdtempSync(join(tmpdir(), 'bottle-fp-secret-')));
    const tokenFile = join(secrets, 'api-token');
    writeFileSync(tokenFile, 'api-token-before-rotation-0001\n');
    const b = fullBottle('rotation', undefined, { tokenFile, forever: true });
    const since = Math.floor(Date.now() / 1000) - 1;
    // The launch records the first token (canary.learned 1); the rotation is the second.
    const started = await cli({ ...b, env: { ...b.env, BOTTLE_FAULT: 'event:canary.learned:2' } }, runArgs(b, ['--detach', '--json']));
    expect(started.code, started.stderr).toBe(0);
    const { identity, run } = JSON.parse(started.stdout) as { identity: string; run: string };
    identities.add(identity);
    const rotated = 'api-token-after-rotation-0002';
    writeFileSync(`${tokenFile}.new`, `${rotated}\n`);
    renameSync(`${tokenFile}.new`, tokenFile);
    await until('the owner to die at the failpoint', async () => (await statusOf(b, identity))?.owner_alive === false);
    const learned = EventLog.read(eventsFile(b.home, identity, run)).filter((r) => r.kind === 'event' && r.event.type === 'canary.learned');
    expect(JSON.stringify(learned)).toContain(secretHash(rotated));

    // The resumed owner puts back what the sidecars must have: the new token, and its hash.
    const resumed = bottle(['resume', identity], { cwd: b.dir, env: b.env });
    await until('the rotated token in the cred-proxy', async () => (await execIn(`bottle-${identity}-cred-proxy`, ['cat', credTokenPath(0)])).stdout.trim() === rotated);
    await until('its hash in the egress canary', async () => (await execIn(`bottle-${identity}-egress`, ['cat', EGRESS_HASHES_PATH])).stdout.includes(secretHash(rotated)));
    const stop = await cli(b, ['stop', identity]);
    expect(stop.code, stop.stderr).toBe(0);
    await resumed;
    await converged(b, identity, since, [], null);
  });
});
