import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { E2eSuite, inspectContainer, json, show, uniqueAgent } from '../support/e2e.js';

/**
 * `bottle run` attached and detached against real Docker, and the commands that read a run
 * afterwards (logs, audit, replay, ls, status, stop).
 */

const ATTACHED = uniqueAgent('attached');
const DETACHED = uniqueAgent('detached');

const suite = new E2eSuite(
  'lifecycle',
  `version: 1
bottles:
  box:
    runtime: auto
    egress: { allow: [allowed.test] }
agents:
  ${ATTACHED}:
    bottle: box
    prompt: say hello
    command: [bash, -c, 'echo hello-out; echo hello-err >&2; exit 3']
  ${DETACHED}:
    bottle: box
    prompt: wait
    command: [bash, -c, 'echo detached-up; trap "exit 0" TERM; sleep 1000 & wait $!']
`,
);

beforeAll(() => suite.setup());
afterEach(() => suite.cleanup());
afterAll(() => suite.finish());

describe('bottle run, attached', () => {
  it("streams the agent's output, exits with its code, leaves nothing, and its history reads back", async () => {
    const identity = suite.track(ATTACHED);

    const r = await suite.cli(['run', ATTACHED]);
    expect(r.code, show(r)).toBe(3);
    expect(r.stdout).toContain('hello-out');
    expect(r.stderr).toContain('hello-err');
    expect(r.stdout).not.toContain('hello-err');

    expect(await suite.leftovers([identity])).toEqual([]);

    const logs = await suite.cli(['logs', identity]);
    expect(logs.code, show(logs)).toBe(0);
    expect(logs.stdout).toContain('hello-out');
    expect(logs.stdout).toContain('hello-err');

    const audit = await suite.cli(['audit', identity, '--json']);
    expect(audit.code, show(audit)).toBe(0);
    const entries = json<{ at: number; source: string; type: string }[]>(audit);
    expect(Array.isArray(entries)).toBe(true);
    const engine = entries.filter((e) => e.source === 'engine');
    expect(engine.length).toBeGreaterThan(0);
    for (const e of entries) {
      expect(typeof e.at).toBe('number');
      expect(typeof e.type).toBe('string');
      expect(['engine', 'egress', 'cred-proxy', 'git-gate', 'supervise']).toContain(e.source);
    }
    // The timeline covers the whole run: it started, ran and ended done.
    expect(engine.some((e) => e.type === 'run.started')).toBe(true);
    expect(engine.filter((e) => e.type === 'state').map((e) => (e as unknown as { state: string }).state)).toEqual(
      expect.arrayContaining(['running', 'teardown', 'done']),
    );

    const replay = await suite.cli(['replay', identity]);
    expect(replay.code, show(replay)).toBe(0);

    const status = json<{ state: string; owner_alive: boolean; exit_code: number | null }>(await suite.cli(['status', identity, '--json']));
    expect(status).toMatchObject({ state: 'done', owner_alive: false, exit_code: 3 });
  });

  it('with --json prints one JSON document on stdout, the agent exit code in it', async () => {
    const identity = suite.track(ATTACHED);
    const r = await suite.cli(['run', ATTACHED, '--json']);
    expect(r.code, show(r)).toBe(3);
    // CONTRACT: --json prints one JSON document on stdout; the agent's own output must not
    // be mixed into it (it stays readable with `bottle logs`).
    expect(json(r)).toMatchObject({ identity, state: 'done', exit_code: 3 });
    const logs = await suite.cli(['logs', identity]);
    expect(logs.stdout).toContain('hello-out');
    expect(await suite.leftovers([identity])).toEqual([]);
  });
});

describe('bottle run --detach', () => {
  it('returns once the agent runs, prints {identity, run}; ls shows it; stop tears it down', async () => {
    const identity = suite.track(DETACHED);

    const r = await suite.cli(['run', DETACHED, '--detach', '--json']);
    expect(r.code, show(r)).toBe(0);
    const out = json<{ identity: string; run: string }>(r);
    expect(out.identity).toBe(identity);
    expect(typeof out.run).toBe('string');
    expect(out.run.length).toBeGreaterThan(0);

    // It returned once the agent runs: the agent container is up now, not later.
    const agent = await inspectContainer(`bottle-${identity}`);
    expect(agent?.running, `agent container bottle-${identity}`).toBe(true);

    const ls = await suite.cli(['ls', '--json']);
    expect(ls.code, show(ls)).toBe(0);
    expect(json<unknown[]>(ls)).toContainEqual(expect.objectContaining({ identity, run: out.run, state: 'running', owner_alive: true }));

    const status = json<{ run: string; state: string; containers: { name: string; role: string | null }[] }>(await suite.cli(['status', identity, '--json']));
    expect(status.run).toBe(out.run);
    expect(status.containers).toContainEqual(expect.objectContaining({ name: `bottle-${identity}`, role: 'agent' }));

    const stop = await suite.cli(['stop', identity]);
    expect(stop.code, show(stop)).toBe(0);
    expect(await suite.leftovers([identity])).toEqual([]);
    expect(await inspectContainer(`bottle-${identity}`)).toBeNull();

    const after = json<{ identity: string; state: string; owner_alive: boolean }[]>(await suite.cli(['ls', '--json']));
    expect(after.find((b) => b.identity === identity)).toMatchObject({ state: 'done', owner_alive: false });

    const logs = await suite.cli(['logs', identity]);
    expect(logs.stdout).toContain('detached-up');
  });
});
