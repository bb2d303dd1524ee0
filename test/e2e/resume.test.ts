import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { E2eSuite, inspectContainer, json, show, sleep, uniqueAgent, waitFor } from '../support/e2e.js';

/**
 * The CLI dies (SIGKILL) while its agent runs: the agent carries on, `bottle status` says
 * the owner is gone, `bottle resume` re-attaches the same container, and `bottle stop` from
 * another process tears everything down and ends the resumed session.
 */

const AGENT = uniqueAgent('resume');

const suite = new E2eSuite(
  'resume',
  `version: 1
bottles:
  box:
    egress: { allow: [] }
agents:
  ${AGENT}:
    bottle: box
    prompt: tick
    command: [bash, -c, 'trap "echo stopping; exit 0" TERM; i=0; while :; do i=$((i+1)); echo tick-$i; sleep 0.2; done']
`,
);

beforeAll(() => suite.setup());
afterEach(() => suite.cleanup());
afterAll(() => suite.finish());

interface Status {
  run: string;
  state: string;
  owner_alive: boolean;
  containers: { name: string; role: string | null }[];
}

/** The highest tick-N in `text`, 0 when there is none. */
function lastTick(text: string): number {
  return Math.max(0, ...[...text.matchAll(/tick-(\d+)/g)].map((m) => Number(m[1])));
}

describe('SIGKILL of the CLI while the agent runs', () => {
  it('leaves the agent running; resume re-attaches the same container; stop ends it all', async () => {
    const identity = suite.track(AGENT);

    const first = suite.start(['run', AGENT]);
    const running = await waitFor('status running', async () => {
      const r = await suite.cli(['status', identity, '--json']);
      if (r.code !== 0) return undefined;
      const s = json<Status>(r);
      return s.state === 'running' && s.owner_alive ? s : undefined;
    });
    const agentName = running.containers.find((c) => c.role === 'agent')?.name;
    expect(agentName, JSON.stringify(running.containers)).toBeDefined();
    await waitFor('the agent output through the first CLI', () => lastTick(first.stdout) >= 2);
    const before = await inspectContainer(agentName!);
    expect(before?.running).toBe(true);

    first.child.kill('SIGKILL');
    const killed = await first.done;
    expect(killed.signal).toBe('SIGKILL');
    const seenBeforeKill = lastTick(killed.stdout);

    const orphaned = json<Status>(await suite.cli(['status', identity, '--json']));
    expect(orphaned).toMatchObject({ run: running.run, state: 'running', owner_alive: false });
    expect(await inspectContainer(agentName!)).toMatchObject({ id: before!.id, running: true });

    const resumed = suite.start(['resume', identity]);
    // The agent's later lines keep appearing through the resumed session.
    await waitFor('later ticks through resume', () => lastTick(resumed.stdout) > seenBeforeKill + 3, 30_000);
    const after = await inspectContainer(agentName!);
    expect(after, 'the same agent container, still running').toEqual(before);
    const owned = json<Status>(await suite.cli(['status', identity, '--json']));
    expect(owned).toMatchObject({ run: running.run, state: 'running', owner_alive: true });
    const ticks = lastTick(resumed.stdout);
    await waitFor('ticks still coming', () => lastTick(resumed.stdout) > ticks);

    const stop = await suite.cli(['stop', identity]);
    expect(stop.code, show(stop)).toBe(0);
    const ended = await Promise.race([resumed.done, new Promise<null>((r) => setTimeout(() => r(null), 20_000))]);
    expect(ended, 'resume exits once the bottle is stopped').not.toBeNull();
    // The agent left on SIGTERM with 0; attached, resume returns the agent's code.
    expect(ended!.code, show(ended!)).toBe(0);

    expect(await suite.leftovers()).toEqual([]);
    expect(await inspectContainer(agentName!)).toBeNull();
    const final = json<Status>(await suite.cli(['status', identity, '--json']));
    expect(final).toMatchObject({ run: running.run, state: 'done', owner_alive: false });
    const replay = await suite.cli(['replay', identity]);
    expect(replay.code, show(replay)).toBe(0);
  });

  it('keeps in `bottle logs` what the agent wrote while no CLI was attached', async () => {
    const identity = suite.track(AGENT);
    const first = suite.start(['run', AGENT]);
    await waitFor('ticks through the first CLI', () => lastTick(first.stdout) >= 3, 60_000);
    first.child.kill('SIGKILL');
    await first.done;
    // The agent keeps ticking with nobody attached...
    await sleep(1500);
    const resumed = suite.start(['resume', identity]);
    await waitFor('ticks through resume', () => lastTick(resumed.stdout) > 0, 30_000);
    const stop = await suite.cli(['stop', identity]);
    expect(stop.code, show(stop)).toBe(0);
    await resumed.done;

    // ...and its output is the agent's whole output: every tick once, in order.
    const logs = await suite.cli(['logs', identity]);
    const ticks = [...logs.stdout.matchAll(/tick-(\d+)/g)].map((m) => Number(m[1]));
    const expected = Array.from({ length: lastTick(logs.stdout) }, (_, i) => i + 1);
    const missing = expected.filter((n) => !ticks.includes(n));
    expect(missing, `ticks missing from bottle logs (killed after tick-${lastTick(first.stdout)})`).toEqual([]);
    expect(ticks).toEqual(expected);
    expect(await suite.leftovers()).toEqual([]);
  });
});
