import { describe, expect, it } from 'vitest';
import { GIT_GATE_CONFIG_PATH, gateRemoteUrl, gitGateFiles, workspaceGitConfig } from '../../../../machines/git-gate.js';
import { parseRemotes } from '../../../../sidecars/git-gate/config.js';

describe("the engine's files for the git gate", () => {
  const plan = {
    git: [
      { name: 'origin', upstream: 'ssh://git@git.test/srv/app.git', push: ['agent/*'], key: { file: '/h/key' }, known_hosts: { file: '/h/kh' } },
      { name: 'docs', upstream: 'https://git.test/docs.git', push: [], token: { env: 'TOK' }, ca: { file: '/h/ca.pem' } },
    ],
  };
  const values: Record<string, string> = { '/h/key': 'KEY-BODY', '/h/kh': 'git.test ssh-ed25519 AAAA', TOK: 'tok-123', '/h/ca.pem': 'CA' };
  const read = (ref: { file: string } | { env: string }) => values['file' in ref ? ref.file : ref.env]!;

  it('gives the gate a remotes file without secrets and one 0600 file per secret', () => {
    const files = gitGateFiles(plan, read);
    const config = files.find((f) => f.containerPath === GIT_GATE_CONFIG_PATH)!;
    const text = String(config.content);
    for (const v of Object.values(values)) expect(text).not.toContain(v);
    const parsed = parseRemotes(text);
    expect(parsed.ok).toBe(true);
    if (!parsed.ok) return;
    expect(parsed.remotes.map((r) => [r.name, r.push, Boolean(r.keyFile), Boolean(r.tokenFile), Boolean(r.caFile)])).toEqual([
      ['origin', ['agent/*'], true, false, false],
      ['docs', [], false, true, true],
    ]);
    const byPath = new Map(files.map((f) => [f.containerPath, f]));
    expect(byPath.get(parsed.remotes[0]!.keyFile!)!.content).toBe('KEY-BODY\n');
    expect(byPath.get(parsed.remotes[0]!.knownHostsFile!)!.content).toBe('git.test ssh-ed25519 AAAA\n');
    expect(byPath.get(parsed.remotes[1]!.tokenFile!)!.content).toBe('tok-123');
    for (const f of files) expect(f).toMatchObject({ mode: 0o600, uid: 1001, gid: 1001 });
  });
});

describe("the workspace's .git/config", () => {
  const original = [
    '[core]',
    '\trepositoryformatversion = 0',
    '\tbare = false',
    '\tsshCommand = ssh -i /home/me/.ssh/id_work',
    '[remote "origin"]',
    '\turl = https://me:hunter2@github.com/me/app.git',
    '\tfetch = +refs/heads/*:refs/remotes/origin/*',
    '[remote "upstream"]',
    '\turl = git@github.com:them/app.git',
    '[branch "main"]',
    '\tremote = origin',
    '\tmerge = refs/heads/main',
    '[credential]',
    '\thelper = store',
    '[http "https://github.com/"]',
    '\textraheader = AUTHORIZATION: basic c2VjcmV0',
    '[url "https://me:tok@github.com/"]',
    '\tinsteadOf = gh:',
    '[includeIf "gitdir:~/work/"]',
    '\tpath = ~/.gitconfig-work',
    '[user]',
    '\tname = Me',
    '',
  ].join('\n');

  it('keeps core, branch and user settings, drops every remote and credential, and points declared remotes at the gate', () => {
    const text = workspaceGitConfig(original, ['origin']);
    for (const gone of ['hunter2', 'github.com', 'store', 'extraheader', 'insteadOf', 'gitconfig-work', 'id_work', '"upstream"']) expect(text).not.toContain(gone);
    expect(text).toContain('[core]\n\trepositoryformatversion = 0\n\tbare = false\n');
    expect(text).toContain('[branch "main"]\n\tremote = origin\n\tmerge = refs/heads/main\n');
    expect(text).toContain('[user]\n\tname = Me\n');
    expect(text).toContain(`[remote "origin"]\n\turl = ${gateRemoteUrl('origin')}\n\tfetch = +refs/heads/*:refs/remotes/origin/*\n`);
    expect(gateRemoteUrl('origin')).toBe('http://git-gate:8418/origin.git');
  });

  it('with no declared remote, no remote at all', () => {
    expect(workspaceGitConfig(original, [])).not.toMatch(/\[remote/);
  });
});
