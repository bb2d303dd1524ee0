import { execFile } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { E2eSuite, MAIN, sleep, uniqueAgent, waitFor } from '../support/e2e.js';

/**
 * An interactive agent on a real terminal: tmux gives `bottle run` a TTY, keys typed into the
 * pane reach the agent's bash, its output comes back to the pane, and `exit` ends the session.
 * The tmux server runs on a socket of its own (-L), so no other tmux user is disturbed.
 */

const exec = promisify(execFile);
const AGENT = uniqueAgent('tty');
const SOCKET = `bottle-${AGENT}`;
const SESSION = 'e2e';

const suite = new E2eSuite(
  'tty',
  `version: 1
bottles:
  box:
    egress: { allow: [] }
agents:
  ${AGENT}:
    bottle: box
    prompt: be interactive
    command: [bash]
`,
);

async function tmux(...args: string[]): Promise<string> {
  const { stdout } = await exec('tmux', ['-L', SOCKET, ...args]);
  return stdout;
}

async function sessionAlive(): Promise<boolean> {
  try {
    await tmux('has-session', '-t', SESSION);
    return true;
  } catch {
    return false;
  }
}

const pane = () => tmux('capture-pane', '-p', '-t', SESSION);

beforeAll(() => suite.setup());
afterEach(async () => {
  if (await sessionAlive()) await tmux('kill-server').catch(() => undefined);
  await suite.cleanup();
});
afterAll(() => suite.finish());

/** Shell-quotes one word. */
const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

describe('an interactive agent on a TTY (tmux)', () => {
  it('takes keys, shows output, and ends when the agent exits', async () => {
    const identity = suite.track(AGENT);
    const rcFile = join(suite.dir, 'rc');
    const wrapper = join(suite.dir, 'run.sh');
    const env = { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '/root', TERM: 'xterm-256color', ...suite.env() };
    writeFileSync(
      wrapper,
      [
        '#!/bin/sh',
        ...Object.entries(env).map(([k, v]) => `export ${k}=${q(v)}`),
        `cd ${q(suite.dir)}`,
        `${q(process.execPath)} ${q(MAIN)} run ${q(AGENT)}`,
        `echo $? > ${q(rcFile)}`,
        '',
      ].join('\n'),
      { mode: 0o755 },
    );

    await tmux('new-session', '-d', '-s', SESSION, '-x', '120', '-y', '30', wrapper);
    await waitFor('the agent running in the pane', async () => (await pane()).includes('bottle: running'), 60_000);
    // Give the attach a moment to switch the terminal to raw mode before typing.
    await sleep(500);

    await tmux('send-keys', '-t', SESSION, 'echo tty-$((6*7))', 'Enter');
    const screen = await waitFor('tty-42 on the pane', async () => {
      const text = await pane();
      return /^tty-42\s*$/m.test(text) ? text : undefined;
    }, 15_000);
    // The typed line came back through the terminal too (echoed by the agent's TTY).
    expect(screen).toContain('echo tty-$((6*7))');
    // The agent's shell really is on a terminal (not a pipe that a local echo disguises).
    await tmux('send-keys', '-t', SESSION, 'test -t 0 && test -t 1 && case $- in *i*) echo on-a-tty-$((1+1));; esac', 'Enter');
    await waitFor('on-a-tty-2 on the pane', async () => /^on-a-tty-2\s*$/m.test(await pane()), 15_000);

    await tmux('send-keys', '-t', SESSION, 'exit', 'Enter');
    await waitFor('the tmux session to end', async () => !(await sessionAlive()), 30_000);
    expect(readFileSync(rcFile, 'utf8').trim()).toBe('0');

    expect(await suite.leftovers([identity])).toEqual([]);
    const status = await suite.cli(['status', identity, '--json']);
    expect(JSON.parse(status.stdout)).toMatchObject({ state: 'done', exit_code: 0, owner_alive: false });
  });
});
