import { describe, expect, it } from 'vitest';
import { dockerfileProblem, parseProposalBody, proposalBody, validateProposal } from '../../../../sidecars/supervise/proposal.js';

const ROUTE = { path: '/github', upstream: 'https://api.github.com', inject: { header: 'Authorization', format: 'Bearer {token}' } };

const issuesOf = (doc: unknown) => {
  const r = validateProposal(doc);
  if (r.ok) throw new Error(`expected a refusal, got ${JSON.stringify(r.proposal)}`);
  return r.issues;
};

describe('proposal checks', () => {
  it('accepts each kind and normalises what the host will apply (hosts lowercased, roles defaulted)', () => {
    expect(validateProposal({ kind: 'allowlist', reason: 'npm', hosts: ['Registry.NPMJS.org', '*.example.com', 'git.example.com:8443'] })).toEqual({
      ok: true,
      proposal: { kind: 'allowlist', reason: 'npm', change: { hosts: ['registry.npmjs.org', '*.example.com', 'git.example.com:8443'] } },
    });
    expect(validateProposal({ kind: 'dockerfile', reason: 'jq', dockerfile: `# syntax=docker/dockerfile:1\nARG BASE=debian\nfrom $\{BASE}\nRUN apt-get install -y jq\n` })).toMatchObject({
      ok: true,
      proposal: { kind: 'dockerfile', change: { dockerfile: expect.stringContaining('jq') } },
    });
    expect(validateProposal({ kind: 'route', reason: 'gh', route: ROUTE })).toEqual({
      ok: true,
      proposal: { kind: 'route', reason: 'gh', change: { route: { ...ROUTE, roles: [] } } },
    });
    expect(validateProposal({ kind: 'route', reason: 'model', route: { ...ROUTE, roles: ['anthropic-base-url'] } })).toMatchObject({ ok: true });
  });

  it('names each bad host entry by its index, with the manifest rule', () => {
    const issues = issuesOf({ kind: 'allowlist', reason: 'r', hosts: ['ok.example.com', 'https://x.example.com', '*.com', 'a b', 'x.example.com:0', 7] });
    expect(issues.map((i) => i.path)).toEqual(['hosts[1]', 'hosts[2]', 'hosts[3]', 'hosts[4]', 'hosts[5]']);
    expect(issues[0]!.message).toContain('not a URL');
    expect(issues[4]!.message).toBe('expected a string, got a number');
    expect(issuesOf({ kind: 'allowlist', reason: 'r', hosts: [] })).toEqual([{ path: 'hosts', message: 'must not be empty' }]);
    expect(issuesOf({ kind: 'allowlist', reason: 'r', hosts: Array.from({ length: 51 }, (_, i) => `h${i}.example.com`) })[0]).toEqual({ path: 'hosts', message: 'has more than 50 entries' });
    expect(issuesOf({ kind: 'allowlist', reason: 'r', hosts: ['a.example.com', 'A.example.com'] })).toEqual([{ path: 'hosts[1]', message: 'duplicate entry (same as hosts[0])' }]);
  });

  it('checks the reason: present, 1..2000 characters, no terminal control or bidi characters', () => {
    expect(issuesOf({ kind: 'allowlist', hosts: ['a.example.com'] })).toEqual([{ path: 'reason', message: 'required (a string)' }]);
    expect(issuesOf({ kind: 'allowlist', reason: '', hosts: ['a.example.com'] })).toEqual([{ path: 'reason', message: 'must not be empty' }]);
    expect(issuesOf({ kind: 'allowlist', reason: '   ', hosts: ['a.example.com'] })[0]!.message).toContain('blank');
    expect(issuesOf({ kind: 'allowlist', reason: 'x'.repeat(2001), hosts: ['a.example.com'] })).toEqual([{ path: 'reason', message: 'is longer than 2000 characters' }]);
    expect(validateProposal({ kind: 'allowlist', reason: 'x'.repeat(2000), hosts: ['a.example.com'] }).ok).toBe(true);
    expect(validateProposal({ kind: 'allowlist', reason: 'line one\n\tline two', hosts: ['a.example.com'] }).ok).toBe(true);
    expect(issuesOf({ kind: 'allowlist', reason: 'ok\u001b[2Jfake', hosts: ['a.example.com'] })[0]!.message).toContain('control characters');
    expect(issuesOf({ kind: 'allowlist', reason: 'ok\u202efake', hosts: ['a.example.com'] })[0]!.message).toContain('bidirectional');
  });

  it('checks the Dockerfile: a FROM instruction, at most 256 KiB, nothing that hides text', () => {
    expect(dockerfileProblem('FROM debian')).toBeUndefined();
    expect(dockerfileProblem('  from\tdebian:bookworm AS build\n')).toBeUndefined();
    expect(dockerfileProblem('RUN echo hi\n')).toContain('no FROM instruction');
    expect(dockerfileProblem('# FROM debian\nRUN x')).toContain('no FROM instruction');
    expect(dockerfileProblem('FROM\n')).toContain('no FROM instruction');
    expect(dockerfileProblem(`FROM debian\n#${'x'.repeat(256 * 1024)}`)).toContain('at most 262144');
    expect(dockerfileProblem(`FROM debian\n#${'x'.repeat(256 * 1024 - 13)}`)).toBeUndefined();
    expect(dockerfileProblem('FROM debian\nRUN x\u0000')).toContain('NUL');
    expect(dockerfileProblem('FROM debian\nRUN echo \u2066hidden\u2069')).toContain('bidirectional');
    expect(issuesOf({ kind: 'dockerfile', reason: 'r', dockerfile: '' })).toEqual([{ path: 'dockerfile', message: 'must not be empty' }]);
    expect(issuesOf({ kind: 'dockerfile', reason: 'r' })).toEqual([{ path: 'dockerfile', message: 'required (a string)' }]);
  });

  it('checks a route with the manifest rules, every problem with its path', () => {
    const issues = issuesOf({
      kind: 'route',
      reason: 'r',
      route: { path: 'github', upstream: 'ftp://x.example.com', inject: { header: 'bad header', format: 'Bearer' }, roles: ['admin'] },
    });
    expect(Object.fromEntries(issues.map((i) => [i.path, i.message]))).toEqual({
      'route.path': 'must start with /',
      'route.upstream': 'scheme ftp:// is not allowed; use https:// or http://',
      'route.inject.header': 'not a valid HTTP header name',
      'route.inject.format': 'must contain {token}, as in "Bearer {token}"',
      'route.roles[0]': 'unknown role "admin" (known: anthropic-base-url)',
    });
    expect(issuesOf({ kind: 'route', reason: 'r', route: { ...ROUTE, path: '/healthz' } })[0]!.message).toContain('reserved');
    expect(issuesOf({ kind: 'route', reason: 'r', route: { ...ROUTE, upstream: 'https://a.example.com/v1?key=1' } })[0]!.message).toContain('query');
    expect(issuesOf({ kind: 'route', reason: 'r', route: { ...ROUTE, upstream: 'https://a.exa\tmple.com' } })[0]!.message).toContain('control characters');
    expect(issuesOf({ kind: 'route', reason: 'r', route: { path: '/x' } }).map((i) => i.path)).toEqual(['route.upstream', 'route.inject']);
  });

  it('refuses a secret in a route, saying that the human names it on approval', () => {
    for (const key of ['token', 'token_file', 'secret', 'api_key', 'password', 'authorization']) {
      const issues = issuesOf({ kind: 'route', reason: 'r', route: { ...ROUTE, [key]: 'sk-live-0123456789' } });
      expect(issues).toHaveLength(1);
      expect(issues[0]!.path).toBe(`route.${key}`);
      expect(issues[0]!.message).toContain('the human names the secret when approving');
    }
    expect(issuesOf({ kind: 'route', reason: 'r', route: { ...ROUTE, inject: { ...ROUTE.inject, token: 'x' } } })[0]).toMatchObject({ path: 'route.inject.token' });
    expect(issuesOf({ kind: 'route', reason: 'r', route: { ...ROUTE, upstream: 'https://user:pw@api.example.com' } })[0]!.message).toBe(
      'must not contain credentials; the human names the secret when approving',
    );
  });

  it('refuses unknown keys, listing what is allowed, and a wrong or missing kind', () => {
    expect(issuesOf({ kind: 'allowlist', reason: 'r', hosts: ['a.example.com'], dockerfile: 'FROM x' })).toEqual([
      { path: 'dockerfile', message: 'unknown key (allowed here: kind, reason, hosts)' },
    ]);
    expect(issuesOf({ kind: 'route', reason: 'r', route: { ...ROUTE, ca: 'x' } })).toEqual([{ path: 'route.ca', message: 'unknown key (allowed here: path, upstream, inject, roles)' }]);
    expect(validateProposal({ kind: 'secrets', reason: 'r' })).toEqual({
      ok: false,
      error: 'unknown proposal kind',
      issues: [{ path: 'kind', message: 'unknown kind "secrets" (expected one of allowlist, dockerfile, route)' }],
    });
    expect(validateProposal({ reason: 'r' })).toMatchObject({ ok: false, issues: [{ path: 'kind', message: 'required (one of allowlist, dockerfile, route)' }] });
    expect(validateProposal({ kind: 3 })).toMatchObject({ ok: false, issues: [{ path: 'kind', message: expect.stringContaining('unknown kind a number') }] });
    for (const doc of [null, [], 'allowlist', 4]) expect(validateProposal(doc)).toMatchObject({ ok: false, issues: [{ path: '(root)' }] });
  });

  it('refuses a body that is not JSON, saying so', () => {
    expect(parseProposalBody('{"kind": "allowlist",')).toMatchObject({ ok: false, error: 'the body is not valid JSON', issues: [{ path: '(root)', message: expect.stringContaining('not valid JSON') }] });
    expect(parseProposalBody('')).toMatchObject({ ok: false, error: 'the body is not valid JSON' });
  });

  it('proposalBody gives back a body that checks to the same proposal', () => {
    const r = validateProposal({ kind: 'route', reason: 'gh', route: ROUTE });
    if (!r.ok) throw new Error('expected ok');
    expect(validateProposal(proposalBody(r.proposal))).toEqual(r);
  });
});
