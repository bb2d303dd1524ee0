import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import type Docker from 'dockerode';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { names } from '../../machines/names.js';
import { placeholderToken } from '../../machines/plan.js';
import { auditDir, eventsFile } from '../../store/paths.js';
import { type CliResult, ensureBuilt } from '../support/cli.js';
import {
  type AgentReply,
  type AgentRequest,
  agentContainer,
  agentProbe,
  attachApi,
  controlGet,
  apiSubnet,
  createApiNetwork,
  ENV_PROBE,
  fingerprint,
  headerValues,
  makePki,
  type ModelApi,
  newCredBottle,
  REQUESTS_PROBE,
  rotateToken,
  SCAN_PROBE,
  type ScanResult,
  type SeenRequest,
  STREAM_PROBE,
  type StreamResult,
  startModelApi,
  writeToken,
} from '../support/cred-proxy.js';
import { removeAllLabelled } from '../support/docker.js';
import { json, show, waitFor } from '../support/e2e.js';
import { type ContainerState, containerState, containerStderr, execAs } from '../support/egress.js';
import { ensureTestImages } from '../support/images.js';
import {
  assertNothingLabelled,
  bottleContainers,
  cli,
  filesContaining,
  hostArgvContaining,
  identityLabels,
  leftovers,
  listFiles,
  needle,
  newSecret,
  removeBottleObjects,
  removeTempDirs,
  results,
  runDetached,
  type SecBottle,
  suiteLabels,
  track,
  waitForLog,
} from '../support/security.js';

/**
 * The cred-proxy sidecar in real bottles (issue 5, "How we will know"). Bottles are launched
 * with the built CLI (`run --detach`); once up, the suite's fake model APIs (TLS, certificate
 * from a CA made with openssl at test time and given to the routes as `ca: {file}`) are
 * answer under their `.test` names on the suite's own network, which the bottle's cred-proxy
 * joins (the bottle opts that network's subnet in with private_networks, as a user would an
 * internal API). The agent's probes run in the agent's container as its user (`docker exec`),
 * and the verdicts come from what the agent got, what each fake API recorded, the host's view
 * (`docker inspect`, argv, BOTTLE_HOME) and the audit kept after teardown.
 *
 * The egress canary (the placeholder sent to an allowed egress host) is tested elsewhere.
 *
 * Network rule: the agent addresses only cred-proxy:9099; the cred-proxy only the suite's
 * fake APIs; nothing here ever sends traffic to a public address.
 */

const identities = new Set<string>();
/** Bottles launched and not yet stopped, so a failed test still ends their owner process. */
const running = new Map<string, SecBottle>();
let sidecarImage = '';
let model: ModelApi;
let decoy: ModelApi;
const pki = makePki(['api.model.test', 'keys.model.test', 'decoy.model.test']);
track(pki.dir);

beforeAll(async () => {
  ensureBuilt();
  sidecarImage = (await ensureTestImages()).sidecar;
  await createApiNetwork();
  [model, decoy] = await Promise.all([startModelApi(sidecarImage, 'model', pki), startModelApi(sidecarImage, 'decoy', pki)]);
});

afterAll(async () => {
  for (const [identity, b] of running) await cli(b, ['stop', identity]).catch(() => undefined);
  // What the bottles left is a product failure: note it before sweeping, fail after.
  const left: string[] = [];
  for (const identity of identities) left.push(...(await leftovers(identity)));
  for (const identity of identities) await removeBottleObjects(identity);
  await removeAllLabelled(suiteLabels);
  removeTempDirs();
  expect(left, 'objects the bottles of this file left behind').toEqual([]);
  for (const identity of identities) await assertNothingLabelled(identityLabels(identity));
  await assertNothingLabelled(suiteLabels);
});

/** Launches a bottle detached and waits until its agent says it is up. */
async function launch(b: SecBottle): Promise<{
  identity: string;
  run: string;
  agent: string;
  log: Record<string, string>;
}> {
  track(b.dir);
  identities.add(b.agent);
  const { identity, run } = await runDetached(b);
  identities.add(identity);
  running.set(identity, b);
  const log = results(await waitForLog(b, identity, /^RESULT ready=yes$/m, 90_000));
  return { identity, run, agent: await agentContainer(identity), log };
}

async function stop(b: SecBottle, identity: string): Promise<CliResult> {
  const r = await cli(b, ['stop', identity]);
  running.delete(identity);
  return r;
}

const probeOf = (r: SeenRequest) => headerValues(r.headers, 'x-probe')[0] ?? '';

interface CredAuditLine {
  at: number;
  type: string;
  route: string | null;
  method: string;
  path: string;
  status: number;
  token_fp: string | null;
  redacted?: number;
  alarm?: string;
  error?: string;
  run?: string;
}

function auditLines(home: string, identity: string): { text: string; lines: CredAuditLine[] } {
  const file = join(auditDir(home, identity), 'cred-proxy.jsonl');
  const text = existsSync(file) ? readFileSync(file, 'utf8') : '';
  return {
    text,
    lines: text
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as CredAuditLine),
  };
}

// ---------------------------------------------------------------------------------------

const TOKEN_ENV = 'BOTTLE_TEST_MODEL_TOKEN';

/** What the agent sends (test 1, 2 and 6); `x-probe` names each request in the APIs' records. */
const REQUESTS: AgentRequest[] = [
  // 1. credentials of the agent's own making, on both routes
  {
    key: 'a_forged',
    method: 'POST',
    path: '{base}/v1/messages',
    headers: {
      'x-probe': 'a_forged',
      authorization: 'Bearer agent-made-up',
      'x-api-key': 'nope',
      'content-type': 'application/json',
    },
    body: '{"model":"test","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}',
  },
  {
    key: 'b_forged',
    method: 'GET',
    path: '/keys/v1/models?limit=2',
    headers: {
      'x-probe': 'b_forged',
      authorization: 'Bearer agent-made-up',
      'x-api-key': 'nope',
    },
  },
  // 6. the placeholder, as Claude Code sends it and in other headers
  {
    key: 'a_placeholder',
    method: 'POST',
    path: '{base}/v1/messages',
    headers: {
      'x-probe': 'a_placeholder',
      authorization: 'Bearer {placeholder}',
      'x-custom-token': '{placeholder}',
      cookie: 'session={placeholder}',
      'proxy-authorization': 'Bearer {placeholder}',
      'content-type': 'application/json',
    },
    body: '{"model":"test","max_tokens":8,"messages":[]}',
  },
  {
    key: 'b_placeholder',
    method: 'GET',
    path: '/keys/v1/models',
    headers: {
      'x-probe': 'b_placeholder',
      'x-api-key': '{placeholder}',
      authorization: 'Bearer {placeholder}',
    },
  },
  {
    key: 'a_query_placeholder',
    method: 'GET',
    path: '{base}/v1/models?key={placeholder}',
    headers: { 'x-probe': 'a_query_placeholder' },
  },
  // 2. another host named by the agent: the route's upstream all the same, or a refusal
  {
    key: 'host_decoy',
    method: 'POST',
    path: '{base}/v1/messages',
    headers: {
      'x-probe': 'host_decoy',
      host: 'decoy.model.test',
      authorization: 'Bearer {placeholder}',
    },
    body: '{}',
  },
  {
    key: 'host_decoy_port',
    method: 'GET',
    path: '/keys/v1/models',
    headers: { 'x-probe': 'host_decoy_port', host: 'decoy.model.test:443' },
  },
  {
    key: 'forwarded_decoy',
    method: 'GET',
    path: '{base}/v1/models',
    headers: {
      'x-probe': 'forwarded_decoy',
      'x-forwarded-host': 'decoy.model.test',
      forwarded: 'host=decoy.model.test;proto=https',
      'x-real-ip': '10.0.0.1',
    },
  },
  {
    key: 'absolute_decoy',
    raw: 'GET https://decoy.model.test/anthropic/v1/models HTTP/1.1\r\nHost: decoy.model.test\r\nX-Probe: absolute_decoy\r\nConnection: close\r\n\r\n',
  },
  {
    key: 'connect_decoy',
    raw: 'CONNECT decoy.model.test:443 HTTP/1.1\r\nHost: decoy.model.test:443\r\nX-Probe: connect_decoy\r\n\r\n',
  },
  // an upstream that echoes the credential it got: redacted before the agent sees it
  {
    key: 'a_echo',
    method: 'GET',
    path: '{base}/v1/echo',
    headers: { 'x-probe': 'a_echo', authorization: 'Bearer {placeholder}' },
  },
  {
    key: 'b_echo',
    method: 'GET',
    path: '/keys/echo',
    headers: { 'x-probe': 'b_echo' },
  },
  // a path outside every route
  {
    key: 'no_route',
    method: 'GET',
    path: '/nowhere/v1/models',
    headers: { 'x-probe': 'no_route' },
  },
];
/** The requests the cred-proxy must forward (the others it refuses), with the stream's. */
const FORWARDED = ['a_forged', 'b_forged', 'a_placeholder', 'b_placeholder', 'host_decoy', 'host_decoy_port', 'forwarded_decoy', 'a_echo', 'b_echo', 'stream'];

for (const runtime of ['runc', 'runsc'] as const)
  describe(`an agent using the cred-proxy (${runtime}; routes with an env token and a file token, TLS upstream with its own CA)`, () => {
    const tokenA = newSecret('anthropic');
    const tokenB = newSecret('keys');
    const control = newSecret('control');
    const secrets = { anthropic: tokenA, keys: tokenB };
    let b: SecBottle;
    let identity = '';
    let runId = '';
    let agentLog: Record<string, string> = {};
    let env: Record<string, unknown> = {};
    let replies: Record<string, AgentReply> = {};
    let stream: StreamResult;
    let scan: ScanResult;
    let decoyControl = '';
    let decoyBefore = { requests: 0, connections: 0 };
    let decoyAfter = { requests: 0, connections: 0 };
    let modelBefore = 0;
    let seen: SeenRequest[] = [];
    let inspects: Docker.ContainerInspectInfo[] = [];
    let proxyStderr = '';
    let argvHits: string[] = [];
    let homeHitsLive: string[] = [];
    let homeFilesLive: string[] = [];
    let stopped: CliResult;
    let homeHitsAfter: string[] = [];
    let audit: { text: string; lines: CredAuditLine[] } = {
      text: '',
      lines: [],
    };
    let cliAudit: Record<string, unknown>[] = [];

    beforeAll(async () => {
      const tokenDir = track(mkdtempSync(join(tmpdir(), 'bottle-cred-token-')));
      const tokenFile = join(tokenDir, 'keys.token');
      writeToken(tokenFile, tokenB);
      b = newCredBottle({
        tag: `probe-${runtime}`,
        runtime,
        hostEnv: { [TOKEN_ENV]: tokenA },
        privateNetworks: [await apiSubnet()],
        routes: [
          {
            path: '/anthropic',
            upstream: 'https://api.model.test',
            token: { env: TOKEN_ENV },
            inject: { header: 'authorization', format: 'Bearer {token}' },
            roles: ['anthropic-base-url'],
            ca: { file: pki.caFile },
          },
          {
            path: '/keys',
            upstream: 'https://keys.model.test/v2',
            token: { file: tokenFile },
            inject: { header: 'x-api-key', format: '{token}' },
            ca: { file: pki.caFile },
          },
        ],
      });
      const up = await launch(b);
      ({ identity, run: runId, log: agentLog } = up);
      const n = names(identity);
      const proxy = n.sidecar('cred-proxy');
      await attachApi(model, proxy, ['api.model.test', 'keys.model.test']);
      await attachApi(decoy, proxy, ['decoy.model.test']);
      // Positive control: the cred-proxy's container can reach the decoy by its name, so a decoy
      // that sees nothing later was kept out by the proxy's routing, not by the network.
      decoyControl = await controlGet(proxy, 'decoy.model.test', '/control');
      decoyBefore = {
        requests: (await decoy.requests()).length,
        connections: await decoy.connections(),
      };
      modelBefore = (await model.requests()).length;

      env = await agentProbe(up.agent, ENV_PROBE);
      const list = await agentProbe<AgentReply[]>(up.agent, REQUESTS_PROBE, [JSON.stringify(REQUESTS)]);
      replies = Object.fromEntries(list.map((r) => [r.key, r]));
      stream = await agentProbe(up.agent, STREAM_PROBE, ['/v1/stream']);

      // The scan's control: a value of the same shape that the agent does hold, in a file, in the
      // scanner's own environment and on its own command line, must be found in all three.
      const put = await execAs(up.agent, '', ['sh', '-c', 'printf %s "$1" > /tmp/control-secret', 'sh', control]);
      expect(put.code, put.stderr).toBe(0);
      scan = await agentProbe(up.agent, SCAN_PROBE, [JSON.stringify({ ...secretsNeedles(secrets), control: needle(control) }), control], { BBSEC_CONTROL: control });

      // The host's view while the bottle runs.
      inspects = await bottleContainers(identity);
      proxyStderr = await containerStderr(proxy);
      argvHits = hostArgvContaining(secrets);
      homeHitsLive = filesContaining(b.home, secrets);
      homeFilesLive = listFiles(b.home);
      seen = (await model.requests()).slice(modelBefore);
      decoyAfter = {
        requests: (await decoy.requests()).length,
        connections: await decoy.connections(),
      };

      const at = stream.reads.map((r) => Math.round(r.ms));
      console.log(
        `[cred-proxy ${runtime}] stream reads at ${at.join(' ')} ms (head ${Math.round(stream.headMs)} ms); scan read ${scan.files_read} files (${(scan.bytes_read / 2 ** 20).toFixed(0)} MiB, ${scan.files_unreadable} unreadable), ${scan.environ_read}/${scan.pids} environ, ${scan.cmdline_read}/${scan.pids} cmdline`,
      );

      stopped = await stop(b, identity);
      homeHitsAfter = filesContaining(b.home, secrets);
      audit = auditLines(b.home, identity);
      const a = await cli(b, ['audit', identity, '--json']);
      expect(a.code, show(a)).toBe(0);
      cliAudit = json<Record<string, unknown>[]>(a).filter((e) => e.source === 'cred-proxy');
    }, 300_000);

    const seenBy = (key: string) => seen.filter((r) => probeOf(r) === key);
    const one = (key: string) => {
      const list = seenBy(key);
      expect(list, `requests with x-probe ${key}`).toHaveLength(1);
      return list[0]!;
    };

    it('the fake API received every forwarded request once, and none of the refused ones', () => {
      expect(seen.map(probeOf).sort()).toEqual([...FORWARDED].sort());
      for (const key of FORWARDED.filter((k) => k !== 'stream')) expect(replies[key]?.status, `${key}: ${JSON.stringify(replies[key])}`).toBe(200);
    });

    it('route with authorization "Bearer {token}": the upstream got the real token in that header and format, not what the agent sent', () => {
      for (const key of ['a_forged', 'a_placeholder', 'host_decoy', 'forwarded_decoy', 'a_echo', 'stream']) {
        const r = one(key);
        expect(headerValues(r.headers, 'authorization'), key).toEqual([`Bearer ${tokenA}`]);
        expect(headerValues(r.headers, 'x-api-key'), key).toEqual([]);
        expect(headerValues(r.headers, 'host'), key).toEqual(['api.model.test']);
      }
      const forged = one('a_forged');
      expect(forged.method).toBe('POST');
      expect(forged.url).toBe('/v1/messages');
      expect(forged.body).toBe(REQUESTS[0]!.body);
    });

    it('route with x-api-key "{token}": the upstream got the real token there and no Authorization at all', () => {
      for (const key of ['b_forged', 'b_placeholder', 'host_decoy_port', 'b_echo']) {
        const r = one(key);
        expect(headerValues(r.headers, 'x-api-key'), key).toEqual([tokenB]);
        expect(headerValues(r.headers, 'authorization'), key).toEqual([]);
        expect(headerValues(r.headers, 'host'), key).toEqual(['keys.model.test']);
      }
      // The route's base path and the query are kept.
      expect(one('b_forged').url).toBe('/v2/v1/models?limit=2');
    });

    it('no inbound credential of the agent reached the upstream: not its Authorization, x-api-key, Cookie, Proxy-Authorization, nor any header with the placeholder', () => {
      for (const r of seen) {
        const raw = r.headers;
        for (let i = 0; i + 1 < raw.length; i += 2) {
          const [name, value] = [raw[i]!.toLowerCase(), raw[i + 1]!];
          expect(value, `${probeOf(r)} ${name}`).not.toContain('agent-made-up');
          expect(value, `${probeOf(r)} ${name}`).not.toBe('nope');
          expect(['cookie', 'proxy-authorization', 'x-custom-token', 'forwarded', 'x-forwarded-host', 'x-real-ip'], `${probeOf(r)} ${name}`).not.toContain(name);
        }
      }
    });

    it('the agent holds the placeholder and the base URL of the anthropic-base-url route, no real credential', () => {
      const placeholder = placeholderToken(runId);
      expect(env).toEqual({
        uid: 1000,
        base_url: 'http://cred-proxy:9099/anthropic',
        oauth_token: placeholder,
        api_key: null,
        nonessential: '1',
      });
      // The agent's main process (PID 1's child) says the same.
      expect(agentLog).toMatchObject({
        uid: '1000',
        base_url: 'http://cred-proxy:9099/anthropic',
        oauth_token: placeholder,
      });
      const agent = inspects.find((c) => c.Config.Labels?.['bot-bottle.role'] === 'agent')!;
      expect(agent.Config.Env).toContain(`CLAUDE_CODE_OAUTH_TOKEN=${placeholder}`);
    expect(agent.HostConfig.Runtime).toBe(runtime);
    });

    it('the upstream never received the placeholder, in any header, URL or body; a request target carrying it is refused', () => {
      const placeholder = placeholderToken(runId);
      for (const r of seen) expect(JSON.stringify(r), probeOf(r)).not.toContain(placeholder);
      // Nor the bits of it: the run id is what makes it this bottle's.
      for (const r of seen) expect(JSON.stringify(r), probeOf(r)).not.toContain(runId);
      expect(replies.a_query_placeholder?.status).toBe(400);
      expect(replies.a_query_placeholder?.body).toMatch(/placeholder/);
      expect(replies.a_query_placeholder?.body).not.toContain(placeholder);
    });

    it('a Host header (or X-Forwarded-Host, Forwarded) naming another host goes to the route’s upstream; absolute-form and CONNECT are refused; the decoy saw nothing', () => {
      expect(decoyControl).toMatch(/^200 \{"type":"message"/);
      expect(replies.host_decoy?.status).toBe(200);
      expect(JSON.parse(replies.host_decoy!.body)).toMatchObject({
        model: 'model',
      });
      expect(replies.host_decoy_port?.status).toBe(200);
      expect(JSON.parse(replies.host_decoy_port!.body)).toMatchObject({
        model: 'model',
      });
      expect(one('host_decoy').url).toBe('/v1/messages');
      expect(one('host_decoy_port').url).toBe('/v2/v1/models');
      expect(replies.absolute_decoy?.status, JSON.stringify(replies.absolute_decoy)).toBe(400);
      expect(replies.connect_decoy?.status, JSON.stringify(replies.connect_decoy)).toBe(405);
      expect(decoyAfter).toEqual(decoyBefore);
    });

    it('a path outside every route gets 404 naming the routes', () => {
      expect(replies.no_route?.status).toBe(404);
      expect(JSON.parse(replies.no_route!.body)).toMatchObject({
        type: 'error',
        routes: ['/anthropic', '/keys'],
      });
    });

    it('ten events spaced 200 ms apart reach the agent as ten separate reads over about two seconds', () => {
      expect(stream.status, JSON.stringify(stream)).toBe(200);
      expect(stream.contentType).toMatch(/^text\/event-stream/);
      expect(stream.reads.map((r) => r.text)).toEqual(Array.from({ length: 10 }, (_, i) => expect.stringMatching(new RegExp(`^event: tick\\ndata: \\{"i":${i},"at":\\d+\\}\\n\\n$`))));
      const at = stream.reads.map((r) => r.ms);
      const gaps = at.slice(1).map((t, i) => t - at[i]!);
      // Spread, not speed: the reads arrive as the events are produced, not at once at the end.
      expect(at.at(-1)! - at[0]!, `read times ${at.map((t) => t.toFixed(0)).join(' ')}`).toBeGreaterThan(1500);
      expect(Math.min(...gaps), `gaps ${gaps.map((g) => g.toFixed(0)).join(' ')}`).toBeGreaterThan(100);
      // The head came before the first event (flushed at once).
      expect(stream.headMs).toBeLessThan(at[0]!);
    });

    it('a token an upstream echoes back is redacted before the agent sees it', () => {
      const a = JSON.parse(replies.a_echo!.body) as { headers: string[] };
      expect(headerValues(a.headers, 'authorization')).toEqual(['Bearer [redacted]']);
      const k = JSON.parse(replies.b_echo!.body) as { headers: string[] };
      expect(headerValues(k.headers, 'x-api-key')).toEqual(['[redacted]']);
    });

    it('the real tokens are nowhere in the agent’s container: environment, /proc/*/environ and cmdline, every readable file', () => {
      expect(scan.found.anthropic, 'token from {env}').toEqual([]);
      expect(scan.found.keys, 'token from {file}').toEqual([]);
      // Not a blind scan: it read the whole file system and every process, and found the control.
      expect(scan.files_read).toBeGreaterThan(5000);
      expect(scan.environ_read).toBeGreaterThanOrEqual(3);
      expect(scan.environ_read).toBe(scan.pids);
      expect(scan.cmdline_read).toBe(scan.pids);
      const where = (scan.found.control ?? []).map((w) => w.replace(/:\d+$/, ':PID')).sort();
      expect(where).toEqual(['cmdline:PID', 'env:BBSEC_CONTROL', 'environ:PID', 'file:/tmp/control-secret']);
    });

    it('the real tokens are in no `docker inspect` of the bottle’s containers, no host argv, no file under BOTTLE_HOME (event log included), while running and after', () => {
      expect(inspects.map((c) => c.Config.Labels?.['bot-bottle.role']).sort()).toEqual(['agent', 'cred-proxy', 'egress', 'network']);
      for (const c of inspects) {
        const text = JSON.stringify(c);
        expect(text, c.Name).not.toContain(tokenA);
        expect(text, c.Name).not.toContain(tokenB);
      }
      expect(argvHits).toEqual([]);
      expect(homeHitsLive).toEqual([]);
      expect(homeFilesLive).toContain(join('bottles', identity, 'runs', runId, 'events.jsonl'));
      expect(existsSync(eventsFile(b.home, identity, runId))).toBe(true);
      expect(homeHitsAfter).toEqual([]);
      // The sidecar's diagnostics show fingerprints only.
      expect(proxyStderr).not.toContain(tokenA);
      expect(proxyStderr).not.toContain(tokenB);
      expect(proxyStderr).toContain(`token ${fingerprint(tokenA)}`);
      expect(proxyStderr).toContain(`token ${fingerprint(tokenB)}`);
    });

    it('the audit kept after teardown has one line per request with the token’s fingerprint only', () => {
      expect(stopped.code, show(stopped)).toBe(0);
      expect(audit.text).not.toContain(tokenA);
      expect(audit.text).not.toContain(tokenB);
      expect(audit.lines).toHaveLength(REQUESTS.length + 1);
      for (const l of audit.lines) {
        expect(l.run).toBe(runId);
        if (l.route === '/anthropic') expect(l.token_fp, l.path).toBe(fingerprint(tokenA));
        else if (l.route === '/keys') expect(l.token_fp, l.path).toBe(fingerprint(tokenB));
        else expect(l.token_fp, l.path).toBeNull();
      }
      const byRoute = (route: string | null) => audit.lines.filter((l) => l.route === route).length;
      expect(byRoute('/anthropic')).toBe(6); // a_forged, a_placeholder, host_decoy, forwarded_decoy, a_echo, stream
      expect(byRoute('/keys')).toBe(4);
      // Refused before routing: the placeholder in the target, absolute-form, CONNECT; and no route.
      expect(
        audit.lines
          .filter((l) => l.route === null)
          .map((l) => l.status)
          .sort(),
      ).toEqual([400, 400, 404, 405]);
      expect(
        audit.lines
          .filter((l) => l.redacted)
          .map((l) => l.path)
          .sort(),
      ).toEqual(['/anthropic/v1/echo', '/keys/echo']);
      expect(audit.lines.filter((l) => l.alarm)).toEqual([]);
      expect(cliAudit).toHaveLength(audit.lines.length);
    });

    it('`bottle stop` left nothing of the bottle', async () => {
      expect(await leftovers(identity)).toEqual([]);
    });
  });

function secretsNeedles(values: Record<string, string>) {
  return Object.fromEntries(Object.entries(values).map(([k, v]) => [k, needle(v)]));
}

// ---------------------------------------------------------------------------------------

describe('rotating a token file on the host while the bottle runs', () => {
  const versions = [newSecret('rot1'), newSecret('rot2'), newSecret('rot3'), newSecret('rot4')];
  let b: SecBottle;
  let identity = '';
  let agent = '';
  let tokenFile = '';
  let before: ContainerState;
  let after: ContainerState;
  /** The token each request carried, in the order the upstream received them. */
  let received: { probe: string; token: string }[] = [];
  const switchMs: number[] = [];
  let proxyStderr = '';
  let stopped: CliResult;
  let homeHits: string[] = [];
  let audit: CredAuditLine[] = [];
  let statusWhileRemoved: number | undefined;
  let ownerWhileRemoved: boolean | undefined;

  beforeAll(async () => {
    const tokenDir = track(mkdtempSync(join(tmpdir(), 'bottle-cred-token-')));
    tokenFile = join(tokenDir, 'model.token');
    writeToken(tokenFile, versions[0]!);
    b = newCredBottle({
      tag: 'rotate',
      privateNetworks: [await apiSubnet()],
      routes: [
        {
          path: '/anthropic',
          upstream: 'https://api.model.test',
          token: { file: tokenFile },
          inject: { header: 'authorization', format: 'Bearer {token}' },
          roles: ['anthropic-base-url'],
          ca: { file: pki.caFile },
        },
      ],
    });
    const up = await launch(b);
    identity = up.identity;
    agent = up.agent;
    const n = names(identity);
    const proxy = n.sidecar('cred-proxy');
    await attachApi(model, proxy, ['api.model.test']);
    const modelBefore = (await model.requests()).length;

    let count = 0;
    const ask = async (): Promise<string> => {
      count += 1;
      const key = `rot_${count}`;
      const [reply] = await agentProbe<AgentReply[]>(agent, REQUESTS_PROBE, [
        JSON.stringify([
          {
            key,
            method: 'POST',
            path: '{base}/v1/messages',
            headers: { 'x-probe': key, authorization: 'Bearer {placeholder}' },
            body: '{}',
          },
        ]),
      ]);
      expect(reply?.status, JSON.stringify(reply)).toBe(200);
      const r = (await model.requests()).find((x) => probeOf(x) === key);
      return (headerValues(r?.headers ?? [], 'authorization')[0] ?? '').replace(/^Bearer /, '');
    };

    expect(await ask()).toBe(versions[0]);
    before = await containerState(proxy);
    const rotate = async (next: string) => {
      const t0 = Date.now();
      rotateToken(tokenFile, next);
      await waitFor(`the upstream to receive the rotated token (${fingerprint(next)})`, async () => (await ask()) === next, 30_000, 250);
      switchMs.push(Date.now() - t0);
      expect(await ask()).toBe(next);
    };
    await rotate(versions[1]!);
    await rotate(versions[2]!);
    // The file gone for a while (a rotation by remove and write): the run goes on, and the
    // token put back later is used.
    rmSync(tokenFile);
    await delay(2000);
    ownerWhileRemoved = json<{ owner_alive: boolean }>(await cli(b, ['status', identity, '--json'])).owner_alive;
    const [revoked] = await agentProbe<AgentReply[]>(agent, REQUESTS_PROBE, [
      JSON.stringify([{ key: 'revoked', method: 'POST', path: '{base}/v1/messages', headers: { 'x-probe': 'revoked' }, body: '{}' }]),
    ]);
    statusWhileRemoved = revoked?.status;
    await rotate(versions[3]!);
    after = await containerState(proxy);
    proxyStderr = await containerStderr(proxy);

    received = (await model.requests())
      .slice(modelBefore)
      .filter((r) => probeOf(r).startsWith('rot_'))
      .map((r) => ({
        probe: probeOf(r),
        token: (headerValues(r.headers, 'authorization')[0] ?? '').replace(/^Bearer /, ''),
      }));

    console.log(
      `[cred-proxy rotation] the upstream got each rotated token ${switchMs.join(' ms and ')} ms after the rename; tokens in the order received: ${received.map((r) => versions.indexOf(r.token) + 1).join(' ')}`,
    );

    stopped = await stop(b, identity);
    homeHits = filesContaining(b.home, Object.fromEntries(versions.map((v, i) => [`rot${i + 1}`, v])));
    audit = auditLines(b.home, identity).lines;
  }, 300_000);

  it('each rotation changed what the upstream receives, in order, with nothing else in between', () => {
    const seq = received.map((r) => versions.indexOf(r.token));
    expect(seq).not.toContain(-1);
    // Never back to an older token once a newer one was used.
    expect(seq).toEqual([...seq].sort((x, y) => x - y));
    expect(new Set(seq)).toEqual(new Set([0, 1, 2, 3]));
    // The host pushes it within its poll (500 ms) plus a Docker call; generous for a busy machine.
    for (const ms of switchMs) expect(ms).toBeLessThan(20_000);
  });

  it('removing the token file on the host does not end the run’s owner process', () => {
    expect(ownerWhileRemoved).toBe(true);
  });

  it('a token file removed on the host revokes the route (503) until a token returns', () => {
    expect(statusWhileRemoved).toBe(503);
  });

  it('the cred-proxy container was not restarted (same id and StartedAt) and logged each reload by fingerprint', () => {
    expect(after.running).toBe(true);
    expect(after.id).toBe(before.id);
    expect(after.startedAt).toBe(before.startedAt);
    expect(after.restartCount).toBe(0);
    for (const v of versions.slice(1)) expect(proxyStderr).toContain(`reloaded (fingerprint ${fingerprint(v)})`);
    for (const v of versions) expect(proxyStderr).not.toContain(v);
  });

  it('the audit names each token by its fingerprint, and no token is under BOTTLE_HOME', async () => {
    expect(stopped.code, show(stopped)).toBe(0);
    // Forwarded requests carry their token's fingerprint; the refused ones (the route revoked
    // while its file was gone) are audited too, with no token.
    const forwarded = audit.filter((l) => l.status === 200);
    expect(forwarded).toHaveLength(received.length);
    expect(forwarded.map((l) => l.token_fp)).toEqual(received.map((r) => fingerprint(r.token)));
    expect(audit.filter((l) => l.status !== 200).every((l) => l.status === 503)).toBe(true);
    expect(homeHits).toEqual([]);
    expect(await leftovers(identity)).toEqual([]);
  });
});
