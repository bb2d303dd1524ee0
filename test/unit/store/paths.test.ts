import { describe, expect, it } from 'vitest';
import {
  bottleHome,
  commandsDir,
  eventsFile,
  lockFile,
  logsFile,
  perBottleDockerfile,
  queueDir,
  runDir,
  stateFile,
  transcriptDir,
} from '../../../store/paths.js';

describe('bottleHome', () => {
  it('prefers BOTTLE_HOME, then XDG_STATE_HOME, then ~/.local/state', () => {
    expect(bottleHome({ BOTTLE_HOME: '/srv/b', XDG_STATE_HOME: '/x' }, '/home/u')).toBe('/srv/b');
    expect(bottleHome({ XDG_STATE_HOME: '/x' }, '/home/u')).toBe('/x/bot-bottle');
    expect(bottleHome({}, '/home/u')).toBe('/home/u/.local/state/bot-bottle');
  });

  it('ignores empty values and a relative XDG_STATE_HOME', () => {
    expect(bottleHome({ BOTTLE_HOME: '', XDG_STATE_HOME: 'rel' }, '/home/u')).toBe('/home/u/.local/state/bot-bottle');
  });
});

describe('store layout', () => {
  const home = '/h';
  it('places every file of a bottle and a run under its identity', () => {
    expect(stateFile(home, 'coder-abc')).toBe('/h/bottles/coder-abc/state.json');
    expect(perBottleDockerfile(home, 'coder-abc')).toBe('/h/bottles/coder-abc/Dockerfile');
    expect(transcriptDir(home, 'coder-abc')).toBe('/h/bottles/coder-abc/transcript');
    expect(queueDir(home, 'coder-abc')).toBe('/h/bottles/coder-abc/queue');
    expect(runDir(home, 'coder-abc', 'r1')).toBe('/h/bottles/coder-abc/runs/r1');
    expect(eventsFile(home, 'coder-abc', 'r1')).toBe('/h/bottles/coder-abc/runs/r1/events.jsonl');
    expect(lockFile(home, 'coder-abc', 'r1')).toBe('/h/bottles/coder-abc/runs/r1/owner.lock');
    expect(commandsDir(home, 'coder-abc', 'r1')).toBe('/h/bottles/coder-abc/runs/r1/commands');
    expect(logsFile(home, 'coder-abc', 'r1')).toBe('/h/bottles/coder-abc/runs/r1/agent.log');
  });

  it('refuses identities and run ids that would leave the home', () => {
    for (const bad of ['..', '../x', 'a/b', '.hidden', '', 'a..b']) {
      expect(() => stateFile(home, bad)).toThrow(expect.objectContaining({ code: 'BOTTLE_NOT_FOUND' }));
      expect(() => eventsFile(home, 'ok', bad)).toThrow(expect.objectContaining({ code: 'BOTTLE_NOT_FOUND' }));
    }
  });
});
