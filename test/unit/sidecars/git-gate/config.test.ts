import { describe, expect, it } from 'vitest';
import { parseRemotes, upstreamEnv, upstreamHostPort, upstreamProblem } from '../../../../sidecars/git-gate/config.js';

describe("the gate's remotes file and upstream environment", () => {
  it('refuses a file it cannot use, saying where', () => {
    expect(parseRemotes('nope')).toMatchObject({ ok: false });
    const bad = parseRemotes(
      JSON.stringify({
        remotes: [
          { name: '..', upstream: 'ssh://h/r', push: [] },
          { name: 'a', upstream: 'file:///r', push: ['x'] },
          { name: 'a', upstream: 'https://h/r', push: 'x', token_file: 'relative' },
        ],
      }),
    );
    expect(bad.ok).toBe(false);
    if (bad.ok) return;
    expect(bad.errors).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^remotes\[0\]\.name/),
        expect.stringMatching(/^remotes\[0\]\.key_file: required/),
        expect.stringMatching(/^remotes\[1\]\.upstream: scheme file:/),
        expect.stringMatching(/^remotes\[2\]\.name: duplicate/),
        expect.stringMatching(/^remotes\[2\]\.push/),
        expect.stringMatching(/^remotes\[2\]\.token_file/),
      ]),
    );
  });

  it('ssh: only the given key, host keys checked against the given known_hosts, never prompting', () => {
    const env = upstreamEnv({ name: 'o', upstream: 'ssh://git@h/r.git', push: [], keyFile: '/s/0/key', knownHostsFile: '/s/0/known_hosts' });
    expect(env.GIT_SSH_COMMAND).toContain("-i '/s/0/key'");
    expect(env.GIT_SSH_COMMAND).toContain('StrictHostKeyChecking=yes');
    expect(env.GIT_SSH_COMMAND).toContain("UserKnownHostsFile='/s/0/known_hosts'");
    expect(env.GIT_SSH_COMMAND).toContain('IdentitiesOnly=yes');
    expect(env.GIT_SSH_COMMAND).toContain('BatchMode=yes');
    expect(env.GIT_TERMINAL_PROMPT).toBe('0');
    expect(upstreamProblem({ name: 'o', upstream: 'ssh://git@h/r.git', push: [], keyFile: '/k' })).toMatch(/no known_hosts/);
  });

  it('https: the token file is read by a helper when asked, never put in the environment', () => {
    const env = upstreamEnv({ name: 'w', upstream: 'https://bot@h/r.git', push: [], tokenFile: "/s/1/to'ken" }, '/state/ca/w.pem');
    const config = Object.fromEntries(
      Array.from({ length: Number(env.GIT_CONFIG_COUNT) }, (_, i) => [`${env[`GIT_CONFIG_KEY_${i}`]}#${i}`, env[`GIT_CONFIG_VALUE_${i}`]]),
    );
    const helpers = Object.entries(config).filter(([k]) => k.startsWith('credential.helper#'));
    // An empty helper clears inherited ones, then ours cats the file (user from the URL).
    expect(helpers.map(([, v]) => v)[0]).toBe('');
    expect(helpers[1]![1]).toContain(`cat '/s/1/to'\\''ken'`);
    expect(helpers[1]![1]).toContain("'username=bot'");
    expect(Object.values(config)).toContain('/state/ca/w.pem');
    expect(upstreamProblem({ name: 'w', upstream: 'https://h/r.git', push: [] })).toBeUndefined();
  });

  it('pins git to the vetted addresses: curl resolve list for http(s), ssh HostName with the name as host key alias; no redirects', () => {
    const configOf = (env: Record<string, string>) => Array.from({ length: Number(env.GIT_CONFIG_COUNT) }, (_, i) => [env[`GIT_CONFIG_KEY_${i}`], env[`GIT_CONFIG_VALUE_${i}`]]);
    const https = upstreamEnv({ name: 'w', upstream: 'https://git.internal:8443/r.git', push: [] }, undefined, { host: 'git.internal', port: 8443, addresses: ['10.20.0.5', 'fd00::5'] });
    expect(configOf(https)).toEqual(expect.arrayContaining([['http.curloptResolve', 'git.internal:8443:10.20.0.5,[fd00::5]'], ['http.followRedirects', 'false']]));
    const ssh = upstreamEnv({ name: 'o', upstream: 'ssh://git@git.internal:2222/r.git', push: [], keyFile: '/k', knownHostsFile: '/kh' }, undefined, { host: 'git.internal', port: 2222, addresses: ['10.20.0.5'] });
    expect(ssh.GIT_SSH_COMMAND).toContain("HostName='10.20.0.5'");
    expect(ssh.GIT_SSH_COMMAND).toContain("HostKeyAlias='[git.internal]:2222'");
    expect(upstreamHostPort('ssh://git@h/r.git')).toEqual({ host: 'h', port: 22 });
    expect(upstreamHostPort('https://[fd00::1]/r.git')).toEqual({ host: 'fd00::1', port: 443 });
    expect(upstreamHostPort('http://h:8080/r.git')).toEqual({ host: 'h', port: 8080 });
  });
});
